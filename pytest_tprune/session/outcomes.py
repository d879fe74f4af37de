"""What became of each case: test reports folded into rows, unused goldens, the summary and the JSON report.

Runs on the controller (or the single process without xdist): the only
process that prints or writes for the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_tprune.session.state import CASE_KEY, CHECK_KEY, FIGURES_KEY, WRITTEN_KEY, RunState

if TYPE_CHECKING:
    import pytest

    from pytest_tprune.reports.schema import CaseRow
    from pytest_tprune.session.settings import Settings


def _props(report: pytest.TestReport) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for key, value in report.user_properties:
        found.setdefault(key, []).append(value)
    return found


def _skip_reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None


def _phase_outcome(report: pytest.TestReport) -> str:
    xfail = hasattr(report, "wasxfail")
    if report.when == "call" and "XPASS(strict)" in str(report.longrepr or ""):
        return "xpassed"
    if report.skipped:
        return "xfailed" if xfail else "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "xpassed" if xfail else "passed"


def _crash_message(report: pytest.TestReport) -> str | None:
    """The first line of a failure's message: what a report reader needs, without the traceback."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or "").strip()
    return message.splitlines()[0][:400] if message else None


def observe_report(state: RunState, report: pytest.TestReport) -> None:
    """Fold one phase's report into the case's row (controller and single process)."""
    from pytest_tprune.reports.schema import CaseRow

    props = _props(report)
    if CASE_KEY not in props:
        return
    ident = props[CASE_KEY][0]
    row = state.rows.get(report.nodeid)
    if row is None:
        row = state.rows[report.nodeid] = CaseRow(report.nodeid, ident["model"], ident["config_id"], ident["config"])
    row.duration += report.duration
    outcome = _phase_outcome(report)
    later_phase_matters = report.when == "call" or outcome != "passed"
    if later_phase_matters and not (report.when == "teardown" and row.outcome != "passed"):
        row.outcome = outcome
    if outcome in ("skipped", "xfailed"):
        row.reason = _skip_reason(report) or getattr(report, "wasxfail", None) or row.reason
    elif outcome in ("failed", "error"):
        row.reason = _crash_message(report) or row.reason
    if props.get(CHECK_KEY) and outcome in ("failed", "error", "xfailed"):
        row.failed_check = props[CHECK_KEY][-1]
    if props.get(FIGURES_KEY):
        row.figures = props[FIGURES_KEY][-1]
    for path in props.get(WRITTEN_KEY, []):
        if path not in state.written:
            state.written.append(path)


def unused_goldens(state: RunState) -> list[str]:
    """Golden files of fully selected, run models that no generated case uses.

    A model counts only if none of its cases were deselected (``-k``, shards),
    so narrowing a run never reports another run's goldens as unused; with
    ratios or modes given on the command line, only goldens of those ratios
    and modes are judged (``--tprune-ratios=0.5`` leaves the 0.3 goldens alone).
    """
    golden_dir = state.settings.golden_dir
    ran = {row.model for row in state.rows.values()}
    deselected = {model for model, _ in state.generated - state.selected}
    unused = []
    for model in sorted(ran - deselected):
        folder = golden_dir / model
        known = {cid for m, cid in state.generated if m == model}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem not in known and _in_scope(path.stem, state.settings):
                unused.append(str(path))
    return unused


def _in_scope(config_id: str, settings: Settings) -> bool:
    """Whether a golden's config id lies within the run's ratios and modes (always, unless narrowed)."""
    if not settings.configs_narrowed:
        return True
    ratio, _, rest = config_id.partition("-")
    return ratio in {f"r{r:.2f}" for r in settings.ratios} and rest.split("-")[0] in settings.modes


def finish_run(state: RunState) -> bool:
    """Unused goldens and the JSON report; True when the run must fail."""
    from pytest_tprune.engine.identity import environment
    from pytest_tprune.reports.atomic import write_json_atomic
    from pytest_tprune.reports.schema import report_document

    if state.settings.shard is None:
        state.unused = unused_goldens(state)
    if state.settings.report is not None:
        extra = {
            "settings": {
                "ratios": list(state.settings.ratios),
                "modes": list(state.settings.modes),
                "shard": state.settings.shard,
            },
            "unused_goldens": state.unused,
            "golden_written": sorted(state.written),
        }
        write_json_atomic(
            state.settings.report,
            report_document(list(state.rows.values()), environment(state.settings.device), extra),
        )
    return bool(state.unused) and not state.settings.warn_unused


def summary_lines(state: RunState) -> list[str]:
    from pytest_tprune.reports.summary import summary_table

    rows: list[CaseRow] = list(state.rows.values())
    lines = summary_table(rows) if rows else []
    if state.written:
        lines.append(f"tprune: wrote {len(state.written)} golden file(s) under {state.settings.golden_dir}")
    if state.unused:
        verdict = "warning" if state.settings.warn_unused else "error (use --tprune-warn-unused to only warn)"
        lines.append(f"tprune: {len(state.unused)} unused golden file(s), {verdict}:")
        lines += [f"  {path}" for path in state.unused[:50]]
    if state.settings.report is not None:
        lines.append(f"tprune: JSON report written to {state.settings.report}")
    return lines

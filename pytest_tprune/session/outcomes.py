"""What became of each case: test reports folded into rows, unused goldens, the summary and the JSON report.

Runs on the controller (or the single process without xdist): the only
process that prints or writes for the run.

Two things make a run's record less than it seems, and both are said here
rather than hidden. A case whose xdist worker died is ``crashed`` (pytest
counts it as failed; its row would otherwise read ``passed``, from its setup
report). A run that stopped before every collected test finished (Ctrl-C,
``-x``, exhausted worker restarts) is incomplete: its report says
``"complete": false`` and why, a case cut off while running is
``interrupted`` (never ``passed``), tests that never started are left out,
unused goldens are not judged, and a complete report already at the report's
path is kept unless ``--tprune-report-replace-complete`` is given (the
incomplete one then goes next to it as ``NAME.incomplete.json``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tprune.session.state import (
    CASE_KEY,
    CHECK_KEY,
    CRASH_ATTR,
    FIGURES_KEY,
    RUNTIME_KEY,
    WRITTEN_KEY,
    RunState,
    one_minute_load,
)
from pytest_tprune.session.transport import CPU_KEY, entries

if TYPE_CHECKING:
    import pytest

    from pytest_tprune.reports.schema import CaseRow
    from pytest_tprune.session.settings import Settings


def _props(report: pytest.TestReport) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for key, value in entries(report):
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


def _failure_message(report: pytest.TestReport, rootdir: str | None) -> str | None:
    """A failure's whole message, without the traceback, its paths relative to the rootdir (machine-independent)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or "").strip()
    if rootdir:
        message = message.replace(rootdir.rstrip("/\\") + os.sep, "")
    return message or None


def first_line(message: str) -> str:
    """What a summary row shows of a failure: its first line."""
    return message.splitlines()[0][:400]


def failure_detail(message: str) -> str | None:
    """The whole message when it says more than its first line (a golden diff: versions, modules), capped."""
    from pytest_tprune.reports.schema import DETAIL_MAX_CHARS, DETAIL_MAX_LINES

    lines = message.splitlines()
    if len(lines) < 2:
        return None
    kept = lines[:DETAIL_MAX_LINES]
    if len(lines) > DETAIL_MAX_LINES:
        kept.append(f"... {len(lines) - DETAIL_MAX_LINES} more line(s)")
    text = "\n".join(kept)
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 4] + "\n..."


def observe_report(state: RunState, report: pytest.TestReport) -> None:
    """Fold one phase's report into the case's row (controller and single process)."""
    from pytest_tprune.reports.schema import CaseRow

    crash = getattr(report, CRASH_ATTR, None)
    if crash is None and report.when == "???" and hasattr(report, "node"):
        crash = crash_info(state, report.node)  # another plugin's pytest_handlecrashitem answered first
    if crash is not None:
        note_crash(state, report.nodeid, crash)
        return
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
        message = _failure_message(report, state.rootdir)
        if message is not None:
            row.reason, row.detail = first_line(message), failure_detail(message)
    if props.get(CHECK_KEY) and outcome in ("failed", "error", "xfailed"):
        row.failed_check = props[CHECK_KEY][-1]
    if props.get(FIGURES_KEY):
        row.figures = props[FIGURES_KEY][-1]
    if props.get(CPU_KEY):
        row.cpu_time = float(props[CPU_KEY][-1])
    if state.runtime is None and props.get(RUNTIME_KEY):
        state.runtime = props[RUNTIME_KEY][-1]
    for path in props.get(WRITTEN_KEY, []):
        if path not in state.written:
            state.written.append(path)


# --- crashed workers ------------------------------------------------------------------------------------------------


def worker_returncode(node: Any, wait_s: float = 1.0) -> int | None:
    """A dead xdist worker's exit status, from execnet's private Popen handle; None when unknown.

    The pipe's end can arrive before the child is reaped (poll() gives None,
    a short wait then gives -11), so poll, then wait briefly. Every step is
    guarded: the handle is private and absent for ssh/socket gateways.
    """
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    try:
        code = popen.poll() if popen is not None else None
        if code is None and popen is not None:
            code = popen.wait(timeout=wait_s)
    except Exception:  # subprocess.TimeoutExpired, OSError, or execnet internals changed
        return None
    return code if isinstance(code, int) else None


def describe_returncode(code: int | None) -> dict[str, Any]:
    """A return code as exit code or signal (negative: killed by that signal)."""
    if code is None or code >= 0:
        return {"returncode": code, "exit_code": code, "signal": None, "signal_name": None}
    try:
        name: str | None = signal.Signals(-code).name
    except ValueError:
        name = None
    return {"returncode": code, "exit_code": None, "signal": -code, "signal_name": name}


def worker_down(node: Any, error: Any) -> dict[str, Any]:
    """How an xdist worker went down: ``crashed`` with its exit code or signal, or ``interrupted``.

    A worker stopped by a KeyboardInterrupt (error ``keyboard-interrupt``, or a
    ``workeroutput`` with exit status 2) is still alive here: it is not waited for.
    """
    worker_id = str(getattr(getattr(node, "gateway", None), "id", None) or "gw?")
    output = getattr(node, "workeroutput", None)
    stopped = error == "keyboard-interrupt" or (isinstance(output, dict) and output.get("exitstatus") == 2)
    code = None if stopped else worker_returncode(node)
    kind = "interrupted" if stopped else "crashed"
    return {
        "worker_id": worker_id,
        "kind": kind,
        "error": None if error is None else str(error),
        **describe_returncode(code),
    }


def crash_info(state: RunState, node: Any) -> dict[str, Any]:
    """What is known of the worker a crash report names (noted at ``pytest_testnodedown``, which comes first)."""
    worker_id = str(getattr(getattr(node, "gateway", None), "id", None) or "gw?")
    known = state.workers_down.get(worker_id)
    return dict(known) if known is not None else worker_down(node, None)


def note_crash(state: RunState, nodeid: str, crash: dict[str, Any]) -> None:
    """The test's worker died under it: its row (if a case) is ``crashed`` or ``interrupted``, never ``passed``."""
    from pytest_tprune.reports.summary import crash_detail

    state.finished.add(nodeid)  # no logfinish will come for it
    crashed = crash.get("kind") != "interrupted"
    if crashed:
        state.crashes.append({"nodeid": nodeid, **{k: v for k, v in crash.items() if k != "kind"}})
    row = state.rows.get(nodeid)
    if row is None:
        return
    row.outcome, row.failed_check = ("crashed" if crashed else "interrupted"), None
    if crashed:
        row.crash = {k: v for k, v in crash.items() if k != "kind"}
        row.reason = f"its xdist worker crashed while running it ({crash_detail(row.crash)})"
    else:
        row.reason = f"its xdist worker {crash.get('worker_id')} was interrupted (KeyboardInterrupt) while running it"


# --- unused goldens -------------------------------------------------------------------------------------------------


def unused_goldens(state: RunState) -> list[str]:
    """Golden files of fully selected, run models that no generated case uses.

    A model counts only if none of its cases were deselected (``-k``, shards),
    so narrowing a run never reports another run's goldens as unused; with
    ratios or modes given on the command line, only goldens of those ratios
    and modes are judged (``--tprune-ratios=0.5`` leaves the 0.3 goldens alone).
    A model with a crashed case is not judged: its worker's collection was
    lost with it, and its goldens' fate is the crash's to explain.
    """
    golden_dir = state.settings.golden_dir
    ran = {row.model for row in state.rows.values()}
    deselected = {model for model, _ in state.generated - state.selected}
    crashed = {row.model for row in state.rows.values() if row.outcome in ("crashed", "interrupted")}
    unused = []
    for model in sorted(ran - deselected - crashed):
        folder = golden_dir / model
        known = {cid for m, cid in state.generated if m == model}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem not in known and _in_scope(path.stem, state.settings):
                unused.append(str(path))
    return unused


def _in_scope(config_id: str, settings: Settings) -> bool:
    """Whether a golden's config id lies within the run's ratios and modes (always, unless narrowed).

    Head-pruning goldens (``-heads0.50``) are opt-in like their cases: only a
    run with that ``--tprune-head-ratios`` value judges them.
    """
    import re

    from pytest_tprune.engine.config import ratio_text

    head = re.search(r"-heads([0-9.]+)(?:-|$)", config_id)
    if head and head.group(1) not in {ratio_text(h) for h in settings.head_ratios}:
        return False
    if not settings.configs_narrowed:
        return True
    ratio, _, rest = config_id.partition("-")
    return ratio in {f"r{r:.2f}" for r in settings.ratios} and rest.split("-")[0] in settings.modes


@dataclass(frozen=True)
class RunEnd:
    """How pytest ended the session, as far as completeness goes."""

    exitstatus: int
    stopped: str | None = None
    """``session.shouldfail`` or ``shouldstop`` (``-x``, ``--maxfail`` without xdist)."""
    collect_only: bool = False


INTERRUPTED_EXIT = 2  # pytest.ExitCode.INTERRUPTED, without importing pytest here


def incomplete_reason(state: RunState, end: RunEnd) -> str | None:
    """Why the run does not cover every collected test, in one line; None for a complete run.

    The exit status alone cannot say: ``-x`` exits 1 without xdist and 2 with
    it, exhausted worker restarts exit 1 with tests never run. So the tests
    collected, started and finished are compared, and an interrupt always counts.
    """
    cut_off = state.started - state.finished
    never = 0 if end.collect_only else len((state.collected or set()) - state.started)
    parts = []
    if state.interrupt is not None:
        parts.append(f"interrupted ({state.interrupt})")
    elif end.exitstatus == INTERRUPTED_EXIT:
        parts.append("interrupted")
    elif end.stopped and (cut_off or never):
        parts.append(f"stopped ({end.stopped})")
    if cut_off:
        parts.append(f"{len(cut_off)} test(s) cut off while running")
    if never:
        parts.append(f"{never} collected test(s) never started")
    return "; ".join(parts) or None


def mark_cut_off(state: RunState) -> None:
    """A case that was running when the run stopped has only its setup report: ``interrupted``, not ``passed``."""
    for nodeid in sorted(state.started - state.finished):
        row = state.rows.get(nodeid)
        if row is not None:
            row.outcome, row.failed_check = "interrupted", None
            row.reason = "the run was interrupted while this case ran: it did not finish"


def incomplete_path(path: Path) -> Path:
    """Where an incomplete report goes when a complete one is kept: ``report.json`` -> ``report.incomplete.json``."""
    return path.with_name(f"{path.stem}.incomplete{path.suffix or '.json'}")


def finish_run(state: RunState, end: RunEnd) -> bool:
    """Completeness, unused goldens and the JSON report; True when the run must fail.

    Unused goldens are judged only for a complete run whose collection is
    known: an interrupted xdist run receives no worker's collection, and
    judging against nothing would call every golden unused.
    """
    state.incomplete_reason = incomplete_reason(state, end)
    mark_cut_off(state)
    if state.settings.shard is None and state.incomplete_reason is None and state.collection_known:
        state.unused = unused_goldens(state)
    written = write_report(state) if state.settings.report is not None else True
    summarized = write_summary_md(state) if state.settings.summary_md is not None else True
    return (bool(state.unused) and not state.settings.warn_unused) or not written or not summarized


def run_environment(state: RunState) -> dict[str, Any]:
    """The report's environment, plus the machine's load at the run's start and end: are its durations comparable?"""
    from pytest_tprune.engine.identity import environment
    from pytest_tprune.reports.schema import MACHINE_LOAD_KEY

    env = environment(state.settings.device, state.runtime)
    load = {"start": state.load_start, "end": one_minute_load()}
    if any(value is not None for value in load.values()):
        env[MACHINE_LOAD_KEY] = load
    return env


def summary_notes(state: RunState) -> list[str]:
    """What the markdown summary says besides the cases: an incomplete run, unused and written goldens."""
    notes = []
    if state.incomplete_reason is not None:
        notes.append(f"**Incomplete run:** {state.incomplete_reason}; {len(state.rows)} case(s) recorded")
    if state.unused:
        verdict = "a warning" if state.settings.warn_unused else "an error"
        notes.append(f"{len(state.unused)} unused golden file(s), {verdict}: {', '.join(state.unused[:10])}")
    if state.written:
        notes.append(f"wrote {len(state.written)} golden file(s)")
    return notes


def write_summary_md(state: RunState) -> bool:
    """Write the run's summary as markdown (controller only, atomically); False, with a summary line, on failure."""
    from pytest_tprune.reports.atomic import write_text_atomic
    from pytest_tprune.reports.summary import summary_markdown
    from pytest_tprune.session.header import guards_line, versions_line

    target = state.settings.summary_md
    assert target is not None
    guards = guards_line(state)
    header = [versions_line(state.settings.device), *([guards] if guards else [])]
    text = summary_markdown(list(state.rows.values()), header, summary_notes(state))
    try:
        write_text_atomic(target, text)
    except OSError as err:
        state.report_lines.append(f"tprune: could not write the markdown summary to {target}: {err.strerror or err}")
        return False
    state.report_lines.append(f"tprune: markdown summary written to {target}")
    return True


def write_report(state: RunState) -> bool:
    """Write the JSON report (never replacing a complete one with an incomplete one unless asked); False on failure."""
    from pytest_tprune.reports.atomic import write_json_atomic
    from pytest_tprune.reports.schema import existing_complete_report, report_document

    settings, reason = state.settings, state.incomplete_reason
    assert settings.report is not None
    target = settings.report
    keep = reason is not None and not settings.report_replace_complete and existing_complete_report(target)
    if keep:
        target = incomplete_path(settings.report)
    extra = {
        "settings": {"ratios": list(settings.ratios), "modes": list(settings.modes), "shard": settings.shard},
        "unused_goldens": state.unused,
        "golden_written": sorted(state.written),
        "crashes": state.crashes,
    }
    document = report_document(list(state.rows.values()), run_environment(state), extra, reason)
    try:
        write_json_atomic(target, document)
    except OSError as err:
        state.report_lines.append(f"tprune: could not write the JSON report to {target}: {err.strerror or err}")
        return False
    if reason is None:
        state.report_lines.append(f"tprune: JSON report written to {target}")
    elif keep:
        state.report_lines.append(
            f"tprune: kept the complete report at {settings.report}; this run's incomplete report "
            f"went to {target} (--tprune-report-replace-complete lets it replace the complete one)"
        )
    else:
        state.report_lines.append(f'tprune: incomplete JSON report ("complete": false) written to {target}')
    return True


def summary_lines(state: RunState) -> list[str]:
    from pytest_tprune.reports.summary import crash_detail, summary_table

    rows: list[CaseRow] = list(state.rows.values())
    lines = summary_table(rows) if rows else []
    for crash in [c for c in state.crashes if c["nodeid"] not in state.rows][:20]:  # cases: in the table
        lines.append(f"tprune: worker crashed ({crash_detail(crash)}) while running {crash['nodeid']}")
    if state.written:
        lines.append(f"tprune: wrote {len(state.written)} golden file(s) under {state.settings.golden_dir}")
    if state.unused:
        verdict = "warning" if state.settings.warn_unused else "error (use --tprune-warn-unused to only warn)"
        lines.append(f"tprune: {len(state.unused)} unused golden file(s), {verdict}:")
        lines += [f"  {path}" for path in state.unused[:50]]
    if state.incomplete_reason is not None and (rows or state.settings.report is not None):
        lines.append(
            f"tprune: INCOMPLETE run: {state.incomplete_reason}; {len(rows)} case(s) recorded, "
            "unused goldens not judged"
        )
    from pytest_tprune.session.header import guards_line

    guards = guards_line(state)
    return lines + ([guards] if guards else []) + state.report_lines

"""Which cases a run has, and what became of them.

Kept apart from ``plugin.py`` so the hooks stay thin: this module resolves the
model selection (timm patterns, registered and hook-provided downstream specs),
builds the per-case marks, turns test reports into rows, and finishes the run
(unused goldens, the written-goldens count, the JSON report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.errors import UsageError
from pytest_tprune.models import ModelSpec, match_patterns, registered_models

if TYPE_CHECKING:
    from pytest_tprune.plugin import RunState
    from pytest_tprune.report import CaseRow
    from pytest_tprune.settings import Settings

DEFAULT_TIMM_MODELS = ("test_*",)
FAMILIES_TOKEN = "@families"
"""Stands, in a models list, for the smallest model of every timm family (see ``zoo.py``)."""


def expand_tokens(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Replace ``@families`` by the family representatives' names."""
    if FAMILIES_TOKEN not in patterns:
        return patterns
    from pytest_tprune.zoo import load_representatives

    families = sorted(set(load_representatives().values()))
    return tuple(p for p in patterns if p != FAMILIES_TOKEN) + tuple(families)


def downstream_specs(config: pytest.Config) -> dict[str, ModelSpec]:
    """Specs from ``register_model`` and from every ``pytest_tprune_models`` hook."""
    specs = registered_models()
    for result in config.hook.pytest_tprune_models(config=config):
        for spec in result or []:
            if not isinstance(spec, ModelSpec):
                raise UsageError(f"pytest_tprune_models returned {type(spec).__name__}, expected ModelSpec objects")
            if spec.name in specs and specs[spec.name] is not spec:
                raise UsageError(
                    f"model '{spec.name}' is provided twice (by register_model or pytest_tprune_models hooks): "
                    "give each model a unique name"
                )
            specs[spec.name] = spec
    return specs


def select_models(config: pytest.Config, settings: Settings) -> dict[str, ModelSpec]:
    """The run's models by name: patterns over timm and downstream names, minus exclusions.

    Without a models setting, a project that registered its own models tests
    those; otherwise timm's tiny ``test_*`` models.
    """
    from pytest_tprune.models import timm_model_names, timm_spec

    extra = downstream_specs(config)
    patterns = expand_tokens(settings.models or (tuple(sorted(extra)) if extra else DEFAULT_TIMM_MODELS))
    timm_names = set(timm_model_names())
    clash = sorted(timm_names & set(extra))
    if clash:
        raise UsageError(f"downstream model name(s) {', '.join(clash)} clash with timm models: rename them")
    names = match_patterns(timm_names | set(extra), patterns)
    if settings.exclude:
        excluded = set(match_patterns(names, settings.exclude)) if names else set()
        names = [n for n in names if n not in excluded]
    return {name: extra[name] if name in extra else timm_spec(name, settings.input_size) for name in names}


def narrow_models(names: list[str], patterns: Any, exclude: Any = None) -> list[str]:
    """Apply a ``tprune(models=..., exclude=...)`` marker: keep the selected names it matches.

    The marker only ever narrows the run's selection (``--tprune-models`` stays
    the outer bound), so one project can give two tests different slices of one
    selection, e.g. a full grid for tiny models and one config per family.
    """
    import fnmatch

    def as_patterns(value: Any) -> tuple[str, ...]:
        return expand_tokens((value,) if isinstance(value, str) else tuple(value))

    def matches(name: str, value: Any) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in as_patterns(value))

    kept = names if patterns is None else [n for n in names if matches(n, patterns)]
    return kept if exclude is None else [n for n in kept if not matches(n, exclude)]


def case_marks(spec: ModelSpec, settings: Settings, config_id: str) -> list[Any]:
    marks: list[Any] = []
    if settings.max_params is not None:
        from pytest_tprune.models import meta_param_count

        count = meta_param_count(spec)
        if count is not None and count > settings.max_params:
            too_big = (
                f"{spec.name} has {count / 1e6:.1f} M parameters, over --tprune-max-params={settings.max_params:g}"
            )
            marks.append(pytest.mark.skip(reason=too_big))
    reason = spec.failure_reason(config_id)
    if reason:
        from pytest_tprune.errors import CaseTimeout
        from pytest_tprune.known import is_hang

        raises = CaseTimeout if is_hang(reason) else None
        marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=f"known failure: {reason}"))
    return marks


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
    from pytest_tprune.report import CaseRow

    props = _props(report)
    if "tprune_case" not in props:
        return
    ident = props["tprune_case"][0]
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
    if props.get("tprune_check") and outcome in ("failed", "error", "xfailed"):
        row.failed_check = props["tprune_check"][-1]
    if props.get("tprune_figures"):
        row.figures = props["tprune_figures"][-1]
    for path in props.get("tprune_golden_written", []):
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
    from pytest_tprune.report import report_document, write_json_atomic

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
            state.settings.report, report_document(list(state.rows.values()), state.settings.device, extra)
        )
    return bool(state.unused) and not state.settings.warn_unused


def summary_lines(state: RunState) -> list[str]:
    from pytest_tprune.report import summary_table

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

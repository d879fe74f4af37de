"""Render a :class:`~pytest_tprune.reports.compare.Comparison` as a machine-readable JSON document.

Apart from the text and markdown renderers (:mod:`pytest_tprune.reports.render`) because it shares none of
their formatting: every value is written as it is, infinities as null.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pytest_tprune.reports.compare import (
    COMPARE_SCHEMA,
    GROUPS,
    MIN_DURATION_DELTA,
    CaseChange,
    Comparison,
    DurationChange,
    FallbackChange,
    FiguresChange,
)
from pytest_tprune.reports.schema import Case


def _finite(value: float) -> float | None:
    """JSON has no infinity: an infinite ratio (from zero) is null."""
    return None if math.isinf(value) else round(value, 6)


def json_side(case: Case | None) -> dict[str, Any] | None:
    if case is None:
        return None
    keys = ("outcome", "failed_check", "reason", "detail", "duration", "cpu_time")
    return {"nodeid": case["nodeid"], **{k: case.get(k) for k in keys}}


def json_case(case: CaseChange) -> dict[str, Any]:
    return {
        "model": case.key[0],
        "config_id": case.key[1],
        "label": case.label,
        "hint": case.hint,
        "old": json_side(case.old),
        "new": json_side(case.new),
    }


def json_figures(change: FiguresChange) -> dict[str, Any]:
    figures = {c.name: {"old": c.old, "new": c.new, "relative": _finite(c.relative)} for c in change.changes}
    return {**json_case(change.case), "largest_relative": _finite(change.largest), "figures": figures}


def json_fallback(change: FallbackChange) -> dict[str, Any]:
    findings = [{"kind": f.kind, "what": f.what, "old": f.old, "new": f.new, "note": f.note} for f in change.findings]
    return {**json_case(change.case), "findings": findings}


def json_duration(change: DurationChange) -> dict[str, Any]:
    return {
        **json_case(change.case),
        "old_seconds": change.old,
        "new_seconds": change.new,
        "old_cpu_seconds": change.old_cpu,
        "new_cpu_seconds": change.new_cpu,
        "factor": _finite(change.factor),
        "step": change.step,
        "step_delta": round(change.step_delta, 4),
    }


def render_json(comparison: Comparison) -> str:
    """The same groups as a machine-readable document."""
    document: dict[str, Any] = {
        "schema": COMPARE_SCHEMA,
        "tool": "pytest-tprune compare",
        "old": comparison.old_path,
        "new": comparison.new_path,
        "verdict": comparison.verdict,
        "exit_status": comparison.exit_status,
        "incomplete": [{"report": path, "reason": why} for path, why in comparison.incomplete],
        "compared": comparison.compared,
        "counts": comparison.counts(),
        "environment": {
            "changed": {n: {"old": o, "new": v} for n, o, v in comparison.environment},
            "unchanged": dict(comparison.unchanged_environment),
        },
        "settings": {n: {"old": o, "new": v} for n, o, v in comparison.settings},
        "duration_factor": comparison.duration_factor,
        "min_duration_delta": MIN_DURATION_DELTA,
        "kept_tolerance": comparison.kept_tolerance,
        "speedup_drop": comparison.speedup_drop,
        "load": {"old": comparison.load[0], "new": comparison.load[1]},
    }
    for name, _ in GROUPS:
        items: list[Any] = getattr(comparison, name)
        if name == "figures":
            document[name] = [json_figures(i) for i in items]
        elif name == "durations":
            document[name] = [json_duration(i) for i in items]
        elif name in ("absorbed", "stock_better"):
            document[name] = [json_fallback(i) for i in items]
        else:
            document[name] = [json_case(i) for i in items]
    document["speedups"] = [
        {**json_case(c.case), "old": c.old, "new": c.new, "drop": round(c.drop, 6)} for c in comparison.speedups
    ]
    return json.dumps(document, indent=1) + "\n"

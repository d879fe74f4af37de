"""Merge the reports of the shards of one run (``--tprune-shard K/N``) into one report.

The merged report is complete only when every input is: one interrupted shard
makes the whole incomplete, and its reason names the shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_tprune.reports.compare import dict_changes
from pytest_tprune.reports.render import fmt_value
from pytest_tprune.reports.schema import MACHINE_LOAD_KEY, Case, Report, ReportError

MERGE_FREE_ENV = ("platform",)  # may differ between the machines of one run's shards (kernel patch level)


def merge_environment(reports: list[Report]) -> dict[str, Any]:
    """The common environment; library versions, python, device, CUDA must agree, platforms are joined."""
    first = reports[0]
    for report in reports[1:]:
        for name, old, new in dict_changes(first.environment, report.environment):
            if name not in MERGE_FREE_ENV and name != MACHINE_LOAD_KEY:
                raise ReportError(
                    f"{report.path} ran with {name} {fmt_value(new)}, {first.path} with {fmt_value(old)}: "
                    "merge only the shards of one run"
                )
    merged = dict(first.environment)
    for name in MERGE_FREE_ENV:
        values = sorted({str(r.environment[name]) for r in reports if name in r.environment})
        if values:
            merged[name] = " | ".join(values)
    load = merge_load([r.environment.get(MACHINE_LOAD_KEY) for r in reports])
    if load is not None:
        merged[MACHINE_LOAD_KEY] = load
    return merged


def merge_load(loads: list[Any]) -> dict[str, Any] | None:
    """The shards' machine loads as one: the highest start and end (the busiest machine bounds every duration)."""
    known = [load for load in loads if isinstance(load, dict)]
    if not known:
        return None
    merged: dict[str, Any] = {}
    for when in ("start", "end"):
        values = [v for load in known if isinstance(v := load.get(when), int | float) and not isinstance(v, bool)]
        merged[when] = max(values) if values else None
    shards = sum(load.get("shards", 1) if isinstance(load.get("shards"), int) else 1 for load in known)
    return {**merged, "shards": shards} if shards > 1 else merged


def _shard(settings: dict[str, Any]) -> tuple[int, int] | None:
    shard = settings.get("shard")
    if isinstance(shard, list | tuple) and len(shard) == 2 and all(isinstance(n, int) for n in shard):
        return int(shard[0]), int(shard[1])
    return None


def merge_settings(reports: list[Report]) -> tuple[dict[str, Any], str | None]:
    """The common settings (all but the shard must agree) and a warning when shards are missing."""
    first = reports[0]
    for report in reports[1:]:
        for name, old, new in dict_changes(first.settings, report.settings):
            if name not in ("shard", "merged_shards"):
                raise ReportError(
                    f"{report.path} ran with {name} {fmt_value(new)}, {first.path} with {fmt_value(old)}: "
                    "merge only the shards of one run"
                )
    shards = [s for s in (_shard(r.settings) for r in reports) if s is not None]
    merged = {k: v for k, v in first.settings.items() if k not in ("shard", "merged_shards")}
    merged["shard"] = None
    if not shards:
        return merged, None
    totals = {total for _, total in shards}
    if len(totals) > 1:
        raise ReportError(f"the reports are shards of different splits ({', '.join(f'{k}/{n}' for k, n in shards)})")
    total = totals.pop()
    merged["merged_shards"] = [list(s) for s in sorted(set(shards))]
    missing = [k for k in range(1, total + 1) if (k, total) not in shards]
    if not missing:
        return merged, None
    return merged, f"shard(s) {shard_ranges(missing, total)} missing: the merged report covers part of the run"


def shard_ranges(numbers: list[int], total: int) -> str:
    """``2/32, 5-32/32``: sorted shard numbers with consecutive runs folded, so 28 missing shards read as one."""
    runs: list[list[int]] = []
    for k in numbers:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{run[0]}/{total}" if len(run) == 1 else f"{run[0]}-{run[-1]}/{total}" for run in runs)


def merge_cases(reports: list[Report]) -> list[Case]:
    """All cases, sorted as a report sorts them; the same nodeid in two reports is an error."""
    seen: dict[str, str] = {}
    cases: list[Case] = []
    for report in reports:
        for case in report.cases:
            if case["nodeid"] in seen:
                raise ReportError(f"case {case['nodeid']} is in both {seen[case['nodeid']]} and {report.path}")
            seen[case["nodeid"]] = report.path
            cases.append(case)
    return sorted(cases, key=lambda c: (c["model"], c["config_id"], c["nodeid"]))


def _union(reports: Iterable[Report], name: str) -> list[Any]:
    values: set[str] = set()
    for report in reports:
        found = report.document.get(name)
        values |= {str(v) for v in found} if isinstance(found, list) else set()
    return sorted(values)


def merge_completeness(reports: list[Report]) -> dict[str, Any]:
    """``complete`` and ``incomplete_reason`` of the merge: incomplete when any input is, naming which (of several)."""
    named = len(reports) > 1
    incomplete = [
        f"{r.path}: {r.incomplete_reason}" if named else r.incomplete_reason for r in reports if not r.complete
    ]
    return {"complete": not incomplete, "incomplete_reason": "; ".join(incomplete) or None}


def merge_crashes(reports: list[Report]) -> list[Any]:
    """Every input's record of crashed workers, in input order."""
    crashes: list[Any] = []
    for report in reports:
        found = report.document.get("crashes")
        crashes += found if isinstance(found, list) else []
    return crashes


def merge_reports(reports: list[Report]) -> tuple[dict[str, Any], str | None]:
    """One report document from the shards of one run, and a warning (missing shards) or None."""
    settings, warning = merge_settings(reports)
    finished = sorted(str(r.document["finished"]) for r in reports if r.document.get("finished"))
    document = {
        **reports[0].document,
        **({"finished": finished[-1]} if finished else {}),
        **merge_completeness(reports),
        "environment": merge_environment(reports),
        "settings": settings,
        "unused_goldens": _union(reports, "unused_goldens"),
        "golden_written": _union(reports, "golden_written"),
        "crashes": merge_crashes(reports),
        "cases": merge_cases(reports),
    }
    return document, warning

"""The run's summary: the terminal table (one line per case) and the markdown page for a CI job's summary."""

from __future__ import annotations

from typing import Any

from pytest_tprune.reports.schema import FAILING, OUTCOMES, CaseRow

MD_FAILING_ROWS = 100
"""Failing cases listed in the markdown summary; the rest are counted (a job summary has a size limit)."""


def _millions(value: Any, unit: float) -> str:
    return f"{value / unit:.2f}" if isinstance(value, int) else "-"


def crash_detail(crash: dict[str, Any]) -> str:
    """``gw1, signal 11 SIGSEGV`` or ``gw0, exit code 1``: which worker died and how, as far as known."""
    parts = [str(crash.get("worker_id") or "worker ?")]
    if crash.get("signal") is not None:
        parts.append(f"signal {crash['signal']} {crash.get('signal_name') or ''}".rstrip())
    elif crash.get("exit_code") is not None:
        parts.append(f"exit code {crash['exit_code']}")
    else:
        parts.append("exit status unknown")
    return ", ".join(parts)


def outcome_text(row: CaseRow) -> str:
    """The outcome column: the check that failed, or for a crash the worker and how it died."""
    if row.crash is not None:
        return f"{row.outcome} ({crash_detail(row.crash)})"
    return row.outcome + (f" ({row.failed_check})" if row.failed_check else "")


def speedup_text(figures: dict[str, Any]) -> str:
    """The speed-up column: unpruned / pruned eager latency at batch 1 (``2.09x``), ``-`` where not measured."""
    latency = figures.get("latency")
    value = latency.get("speedup") if isinstance(latency, dict) else None
    return f"{value:.2f}x" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def summary_table(rows: list[CaseRow]) -> list[str]:
    """One line per case: model, config, params and MACs before -> after, kept %, speed-up, outcome."""
    header = f"{'model':<28} {'config':<16} {'params M':>19} {'MACs G':>19} {'kept':>7} {'speedup':>7}  outcome"
    lines = [header, "-" * len(header)]
    for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid)):
        f = row.figures
        params = f"{_millions(f.get('params_before'), 1e6)} -> {_millions(f.get('params_after'), 1e6)}"
        macs = f"{_millions(f.get('macs_before'), 1e9)} -> {_millions(f.get('macs_after'), 1e9)}"
        kept = f"{f['kept_params']:.1%}" if "kept_params" in f else "-"
        outcome = outcome_text(row)
        speedup = speedup_text(f)
        lines.append(
            f"{row.model:<28.28} {row.config_id:<16} {params:>19} {macs:>19} {kept:>7} {speedup:>7}  {outcome}"
        )
    lines.append(outcome_counts(rows))
    return lines


def outcome_counts(rows: list[CaseRow]) -> str:
    """``3 passed, 1 failed``: the cases per outcome, in the order of :data:`OUTCOMES`; ``no cases`` for none."""
    counts = {o: sum(r.outcome == o for r in rows) for o in OUTCOMES}
    return ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no cases"


def _md_cell(text: Any) -> str:
    """Table-safe cell text: one line, pipes escaped."""
    return " ".join(str(text if text is not None else "").split()).replace("|", "\\|")


def failing_rows(rows: list[CaseRow]) -> list[str]:
    """The markdown table of the failing cases: case, outcome, the check that failed, the message's first line."""
    failing = sorted((r for r in rows if r.outcome in FAILING), key=lambda r: (r.model, r.config_id, r.nodeid))
    if not failing:
        return []
    lines = [f"### Failing cases ({len(failing)})", "", "| case | outcome | check | first line |", "|---|---|---|---|"]
    for row in failing[:MD_FAILING_ROWS]:
        check = crash_detail(row.crash) if row.crash is not None else row.failed_check or ""
        case = f"`{row.model}` {row.config_id}"
        lines.append(f"| {case} | {row.outcome} | {_md_cell(check)} | {_md_cell((row.reason or '')[:300])} |")
    if len(failing) > MD_FAILING_ROWS:
        lines += ["", f"... and {len(failing) - MD_FAILING_ROWS} more failing case(s): see the run's report"]
    return ["", *lines]


def summary_markdown(rows: list[CaseRow], header: list[str], notes: list[str]) -> str:
    """The run as markdown: the counts as heading and table, the versions and guards lines, notes, failing cases."""
    lines = [f"## tprune: {outcome_counts(rows)}", ""]
    for line in [*header, *notes]:
        lines += [line, ""]
    counts = [(o, sum(r.outcome == o for r in rows)) for o in OUTCOMES]
    lines += ["| outcome | cases |", "|---|---:|", *(f"| {o} | {n} |" for o, n in counts if n)]
    lines.append(f"| **all** | {len(rows)} |")
    return "\n".join(lines + failing_rows(rows)) + "\n"

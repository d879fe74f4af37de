"""The terminal summary table: one line per case."""

from __future__ import annotations

from typing import Any

from pytest_tprune.reports.schema import OUTCOMES, CaseRow


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


def summary_table(rows: list[CaseRow]) -> list[str]:
    """One line per case: model, config, params and MACs before -> after, kept %, outcome."""
    header = f"{'model':<28} {'config':<16} {'params M':>19} {'MACs G':>19} {'kept':>7}  outcome"
    lines = [header, "-" * len(header)]
    for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid)):
        f = row.figures
        params = f"{_millions(f.get('params_before'), 1e6)} -> {_millions(f.get('params_after'), 1e6)}"
        macs = f"{_millions(f.get('macs_before'), 1e9)} -> {_millions(f.get('macs_after'), 1e9)}"
        kept = f"{f['kept_params']:.1%}" if "kept_params" in f else "-"
        outcome = outcome_text(row)
        lines.append(f"{row.model:<28.28} {row.config_id:<16} {params:>19} {macs:>19} {kept:>7}  {outcome}")
    counts = {o: sum(r.outcome == o for r in rows) for o in OUTCOMES}
    lines.append(", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no cases")
    return lines

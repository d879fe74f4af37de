"""The terminal summary table: one line per case."""

from __future__ import annotations

from typing import Any

from pytest_tprune.reports.schema import OUTCOMES, CaseRow


def _millions(value: Any, unit: float) -> str:
    return f"{value / unit:.2f}" if isinstance(value, int) else "-"


def summary_table(rows: list[CaseRow]) -> list[str]:
    """One line per case: model, config, params and MACs before -> after, kept %, outcome."""
    header = f"{'model':<28} {'config':<16} {'params M':>19} {'MACs G':>19} {'kept':>7}  outcome"
    lines = [header, "-" * len(header)]
    for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid)):
        f = row.figures
        params = f"{_millions(f.get('params_before'), 1e6)} -> {_millions(f.get('params_after'), 1e6)}"
        macs = f"{_millions(f.get('macs_before'), 1e9)} -> {_millions(f.get('macs_after'), 1e9)}"
        kept = f"{f['kept_params']:.1%}" if "kept_params" in f else "-"
        outcome = row.outcome + (f" ({row.failed_check})" if row.failed_check else "")
        lines.append(f"{row.model:<28.28} {row.config_id:<16} {params:>19} {macs:>19} {kept:>7}  {outcome}")
    counts = {o: sum(r.outcome == o for r in rows) for o in OUTCOMES}
    lines.append(", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no cases")
    return lines

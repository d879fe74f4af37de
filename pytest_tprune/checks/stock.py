"""The stock verdict of a case: what plain torch-pruning does with it, in one word and one line.

The stock run is :func:`pytest_tprune.engine.stock.run_stock`; this module
judges it with the same group accounting as the engine's prune, so "skips
groups" means what the ``groups`` check means. The verdict never fails a
case (the engine's result is what the checks judge); goldens and reports
record it, and ``tprune compare`` reads a worse verdict after an upgrade as a
regression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_tprune.checks.accounting import skipped_among
from pytest_tprune.engine.stock import OK, SKIPS_GROUPS

NOT_JUDGED = "not judged"
"""The stock run failed in pytest-tprune's own code (``StockRunFault``): no verdict, and the golden check fails
saying whose fault it is, rather than recording ``crashes`` against torch-pruning."""

if TYPE_CHECKING:
    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.stock import StockRun


def stock_verdict(run: StockRun, config: PruneConfig) -> dict[str, Any]:
    """``{"verdict": ..., "detail": ...}``: the run's own ending, else whether it skipped groups."""
    if run.verdict:
        return {"verdict": run.verdict, "detail": run.detail}
    skipped = skipped_among(run.offered, config, set())
    if not skipped:
        return {"verdict": OK, "detail": f"{len(run.offered)} group(s) offered, none skipped"}
    first = skipped[0]
    return {
        "verdict": SKIPS_GROUPS,
        "detail": f"{len(skipped)} of {len(run.offered)} offered group(s) stay at full width, first "
        f"{first.root} ({first.direction}, {first.channels} channels)",
    }

"""What the engine's fallbacks absorb: a case that still passes but prunes less, or stock torch-pruning got worse.

The engine leaves whole a group torch-pruning cannot prune, and torch-pruning
itself skips some; either way the case passes, with more of the model kept. An
upgrade that breaks attention pruning can keep twice the parameters and still
read "passed", so ``tprune compare`` compares what a pass hides, for each case
in both reports:

* the groups left whole or skipped by torch-pruning (``group_accounting``'s
  ``left_whole`` and ``skipped``; ``groups_left_whole`` in older reports);
* the kept fractions (``kept_params``, ``kept_macs``), against an absolute
  tolerance: a kept fraction that shrank is never a regression;
* the stock verdict (``stock.verdict``, ranked by
  :data:`~pytest_tprune.reports.schema.STOCK_VERDICTS`): worse is a
  regression, better is good news;
* each exporter's status (``export``, from the opt-in ``export`` check): one
  that was ``ok`` and is now anything else but ``not available`` is a
  regression, even where the case passes because the unpruned model stopped
  exporting too (the pruned model no longer deploys either way).

Anything absent on either side is not compared. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_tprune.reports.schema import STOCK_VERDICTS, Case

DEFAULT_KEPT_TOLERANCE = 0.01
"""How much a kept fraction may grow before it is a regression: absolute, one percentage point."""
KEPT_FIGURES: tuple[tuple[str, str], ...] = (
    ("kept_params", "kept params"),
    ("kept_macs", "kept MACs (torch-pruning)"),
)
UNPRUNED_PARTS: tuple[tuple[str, str], ...] = (("left_whole", "left whole"), ("skipped", "skipped"))
"""The ``group_accounting`` counts of groups that stay unpruned, with their labels."""


@dataclass(frozen=True)
class Finding:
    """One thing that got worse (or, for a stock verdict, better) in one case: what, before, after, and why."""

    kind: str
    """``groups``, ``kept``, ``stock`` or ``export``."""
    what: str
    old: Any
    new: Any
    note: str = ""

    def text(self) -> str:
        """``kept params 33.58% -> 67.20% (+33.62 points; --kept-tolerance 0.01)``: kept fractions in percent."""
        if self.kind == "kept":
            change = f"{self.what} {self.old:.2%} -> {self.new:.2%}"
        else:
            change = f"{self.what} {self.old} -> {self.new}"
        return f"{change} ({self.note})" if self.note else change


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fraction(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def unpruned_groups(case: Case) -> dict[str, int]:
    """The case's counts of groups left whole and skipped by torch-pruning, as far as its report has them."""
    found: dict[str, int] = {}
    accounting = case.get("group_accounting")
    if isinstance(accounting, dict):
        for key, _ in UNPRUNED_PARTS:
            count = _count(accounting.get(key))
            if count is not None:
                found[key] = count
    if "left_whole" not in found:
        count = _count(case.get("groups_left_whole"))  # reports written before group_accounting
        if count is not None:
            found["left_whole"] = count
    return found


def group_findings(old: Case, new: Case) -> list[Finding]:
    """More groups left whole or skipped in NEW, over the counts both reports have; none when they share none.

    The sum is compared, so a group that moved from left whole to skipped is no
    regression (the same groups stay unpruned); the parts that changed are named in the note.
    """
    before, after = unpruned_groups(old), unpruned_groups(new)
    parts = [(key, label) for key, label in UNPRUNED_PARTS if key in before and key in after]
    if not parts:
        return []
    total_before, total_after = sum(before[k] for k, _ in parts), sum(after[k] for k, _ in parts)
    if total_after <= total_before:
        return []
    if len(parts) == 1:
        return [Finding("groups", f"groups {parts[0][1]}", total_before, total_after)]
    note = ", ".join(f"{label} {before[key]} -> {after[key]}" for key, label in parts if before[key] != after[key])
    return [Finding("groups", "groups left whole or skipped", total_before, total_after, note)]


def kept_findings(old: Case, new: Case, tolerance: float) -> list[Finding]:
    """Kept fractions that grew by more than ``tolerance`` (absolute): the case prunes less than it did."""
    found = []
    for name, label in KEPT_FIGURES:
        before, after = _fraction(old.get(name)), _fraction(new.get(name))
        if before is None or after is None or after - before <= tolerance + 1e-12:
            continue
        note = f"+{(after - before) * 100:.2f} points; --kept-tolerance {tolerance:g}"
        found.append(Finding("kept", label, before, after, note))
    return found


def stock_verdict(case: Case) -> tuple[int, str, str] | None:
    """(rank, verdict, detail) of the case's stock verdict; None when it has none (the report checked the rest)."""
    stock = case.get("stock")
    if not isinstance(stock, dict) or stock.get("verdict") not in STOCK_VERDICTS:
        return None
    verdict = str(stock["verdict"])
    return STOCK_VERDICTS.index(verdict), verdict, str(stock.get("detail") or "")


def stock_finding(old: Case, new: Case) -> Finding | None:
    """The stock verdict's change, worse or better (the caller tells them apart with :func:`stock_got_worse`)."""
    before, after = stock_verdict(old), stock_verdict(new)
    if before is None or after is None or before[0] == after[0]:
        return None
    detail = after[2] or before[2]
    return Finding("stock", "stock torch-pruning", before[1], after[1], detail)


def stock_got_worse(finding: Finding) -> bool:
    return STOCK_VERDICTS.index(finding.new) > STOCK_VERDICTS.index(finding.old)


def export_statuses(case: Case) -> dict[str, tuple[str, str]]:
    """Exporter -> (status, message) of the case's ``export`` row; empty when the export check did not run."""
    export = case.get("export")
    if not isinstance(export, dict):
        return {}
    found = {}
    for name, entry in export.items():
        if isinstance(entry, dict) and isinstance(entry.get("status"), str):
            found[str(name)] = (entry["status"], str(entry.get("message") or ""))
    return found


def export_findings(old: Case, new: Case) -> list[Finding]:
    """Exporters that were ``ok`` in OLD and fail in NEW (an exporter not available on either side is not compared)."""
    before, after = export_statuses(old), export_statuses(new)
    found = []
    for name in sorted(before.keys() & after.keys()):
        status, message = after[name]
        if before[name][0] == "ok" and status not in ("ok", "not available"):
            found.append(Finding("export", f"export {name}", "ok", status, message))
    return found


def fallback_findings(old: Case, new: Case, tolerance: float) -> tuple[list[Finding], Finding | None]:
    """(what got worse, a stock verdict that got better) for one case present in both reports."""
    worse = group_findings(old, new) + kept_findings(old, new, tolerance) + export_findings(old, new)
    stock = stock_finding(old, new)
    if stock is not None and stock_got_worse(stock):
        return [*worse, stock], None
    return worse, stock

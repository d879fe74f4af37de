"""Group accounting: every group torch-pruning offered is pruned, explained, or a failure.

The engine's ledger (:mod:`pytest_tprune.engine.tp_internals.ledger`) gives
each offered group a fate; this module says which fates are sound for the
case's config. A group that torch-pruning ranked but never yielded is sound
only where the rule removes nothing from it at that step (ratio 0, a group too
narrow for the ratio, a global step that removed nothing at all); anywhere
else torch-pruning silently left it at full width, and the case fails naming
the group. Groups coupled to an ignored layer are never offered; they are
counted beside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_tprune.checks.expectations import predicted_kept
from pytest_tprune.engine.tp_internals import ledger

if TYPE_CHECKING:
    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.outcome import PruneOutcome
    from pytest_tprune.engine.tp_internals.ledger import OfferedGroup

ACCOUNT_KEYS = ("offered", "pruned", "left_whole", "refused", "minimum_width", "skipped", "ignored")
"""The counts goldens and reports carry; all but ``ignored`` add up to ``offered``."""


def skipped_groups(outcome: PruneOutcome) -> list[OfferedGroup]:
    """Offered groups torch-pruning dropped although the config removes channels from them."""
    left_whole = {(lw.root, lw.direction) for lw in outcome.left_whole}
    return skipped_among(outcome.offered, outcome.prune_config, left_whole)


def skipped_among(
    offered: list[OfferedGroup], config: PruneConfig, left_whole: set[tuple[str, str]]
) -> list[OfferedGroup]:
    """The groups of ``offered`` torch-pruning dropped silently; ``left_whole`` (root, direction) were explained."""
    yielding_steps = {g.step for g in offered if g.fate in (ledger.PRUNED, ledger.NOTHING_REMOVED)}
    initial = _initial_widths(offered)
    skipped = []
    for group in offered:
        if (group.root, group.direction) in left_whole:
            continue  # the engine left it whole, with its reason: not silent
        if group.fate in (ledger.NO_DOWNSTREAM_ROOT, ledger.NOT_PRUNED) or (
            group.fate == ledger.NOT_YIELDED and _rule_removes(group, config, initial, yielding_steps)
        ):
            skipped.append(group)
    return skipped


def _initial_widths(offered: list[OfferedGroup]) -> dict[tuple[str, str], int]:
    """Each group's root width when first offered: torch-pruning's targets at later steps are fractions of it."""
    widths: dict[tuple[str, str], int] = {}
    for group in offered:
        widths.setdefault((group.root, group.direction), group.channels)
    return widths


def _rule_removes(
    group: OfferedGroup, config: PruneConfig, initial: dict[tuple[str, str], int], yielding_steps: set[int]
) -> bool:
    """Whether the config takes at least one channel from ``group`` at its step."""
    if config.ratio == 0:
        return False
    if config.global_pruning:  # one threshold for all: a step that yields nothing removed nothing anywhere
        return group.step in yielding_steps
    step_ratio = config.ratio * group.step / config.iterative_steps
    width = initial.get((group.root, group.direction), group.channels)
    return group.channels > predicted_kept(width, group.channel_groups, step_ratio, config.round_to)


def group_accounting(outcome: PruneOutcome) -> dict[str, int]:
    """The counts a golden and a report carry (``ACCOUNT_KEYS``)."""
    skipped = {id(group) for group in skipped_groups(outcome)}
    counts = dict.fromkeys(ACCOUNT_KEYS, 0)
    for group in outcome.offered:
        counts["offered"] += 1
        counts[_bucket(group, id(group) in skipped)] += 1
    counts["ignored"] = outcome.ignored_groups
    return counts


def _bucket(group: OfferedGroup, skipped: bool) -> str:
    if skipped:
        return "skipped"
    return {
        ledger.NO_DOWNSTREAM_ROOT: "left_whole",  # recorded in left_whole by the engine, or skipped above
        ledger.LEFT_WHOLE: "left_whole",
        ledger.REFUSED: "refused",
        ledger.MINIMUM_WIDTH: "minimum_width",
    }.get(group.fate, "pruned")


def skipped_message(outcome: PruneOutcome, skipped: list[OfferedGroup], limit: int = 10) -> str:
    """The failure: how many groups torch-pruning skipped, each by root, direction, width and members."""
    config = outcome.prune_config
    lines = [
        f"torch-pruning offered {len(outcome.offered)} group(s) and silently skipped {len(skipped)}, which stay "
        f"at full width although r={config.ratio:g} {config.mode} removes channels from them:"
    ]
    lines += [f"  {group.describe()}" for group in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)

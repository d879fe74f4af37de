"""Account for every group torch-pruning offers: what became of each, step by step.

``MetaPruner.step()`` can drop a group it offered without a word: a local
ranking scope keyed by the root's *name* lets a re-rooted attention group
overwrite the residual group rooted at the same layer (seen with ``num_heads``
on separate q/k/v projections: the residual stream stays at full width), a
member one channel wide stops the group, an importance that knows no member
returns None, a group with nothing to remove is dropped. "No error" is
therefore no evidence that a group was pruned. The ledger watches the points
where ``_prune`` decides (``DG.get_all_groups``, ``_check_pruning_ratio``,
``_downstream_node_as_root_if_attention``, ``estimate_importance``,
``DG.check_pruning_group``, and the yield) and gives every offered group a
fate; the checks then decide which fates are sound
(:func:`pytest_tprune.checks.expectations.skipped_groups`).

Part of :mod:`pytest_tprune.engine.tp_internals`: every name wrapped here is
private to torch-pruning, and each wrap is skipped, not fatal, when the name
is missing (the fates it would have told apart then read "ranked, not yielded").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_tprune.engine.tp_internals.graph import channel_groups, current_step, dotted_name, group_root, name_of

PRUNED = "pruned"
"""Yielded and pruned, with at least one channel removed."""
NOTHING_REMOVED = "nothing removed"
"""Yielded with no channel to remove (global ranking kept all of it, or rounding left nothing to take)."""
LEFT_WHOLE = "left whole"
"""Not ranked: the engine left it whole, with its reason in ``PruneOutcome.left_whole``."""
REFUSED = "refused"
"""Ranked, then refused by ``check_pruning_group``: the pruning would have emptied a member."""
MINIMUM_WIDTH = "minimum width"
"""Not ranked: a member is one channel wide (or at ``max_pruning_ratio``), so nothing can be removed."""
NO_DOWNSTREAM_ROOT = "no downstream root"
"""An attention group torch-pruning could not re-root on a downstream layer, so it dropped it."""
NOT_YIELDED = "ranked, not yielded"
"""Ranked, never refused, never yielded: the rule removes nothing, or torch-pruning lost the group."""

NOT_PRUNED = "yielded, not pruned"
"""Yielded to a project's own prune function (``step(interactive=True)``), which never pruned it."""

FATES = (PRUNED, NOTHING_REMOVED, LEFT_WHOLE, REFUSED, MINIMUM_WIDTH, NO_DOWNSTREAM_ROOT, NOT_YIELDED, NOT_PRUNED)

Key = tuple[int, bool]


@dataclass
class OfferedGroup:
    """A group ``get_all_groups`` offered at one step, and what became of it."""

    step: int
    root: str
    direction: str  # "out" or "in"
    channels: int  # the root's width when offered
    channel_groups: int
    members: list[str]
    fate: str = NOT_YIELDED
    removed: int = 0

    def describe(self) -> str:
        shown = ", ".join(self.members[:8]) + (f" and {len(self.members) - 8} more" if len(self.members) > 8 else "")
        where = f"{self.direction}-channels {self.channels}, step {self.step}"
        return f"{self.root} ({where}; members: {shown}): {self.fate}"


@dataclass
class GroupLedger:
    """Every group offered while the pruner steps, by step, with its fate."""

    offered: list[OfferedGroup] = field(default_factory=list)
    ignored: int = 0
    """Groups never offered because an ignored layer (the classifier) is among their outputs."""
    _open: dict[Key, OfferedGroup] = field(default_factory=dict)

    def offer(self, pruner: Any, group: Any) -> None:
        root, direction, channels = group_root(pruner.DG, group)
        entry = OfferedGroup(
            step=current_step(pruner),
            root=root,
            direction=direction,
            channels=channels,
            channel_groups=channel_groups(pruner, group),
            members=_member_labels(pruner.DG, group),
        )
        self.offered.append(entry)
        self._open[_key(pruner.DG, group)] = entry

    def alias(self, pruner: Any, group: Any, rerooted: Any) -> None:
        """An attention group re-rooted on a downstream layer is the same offered group."""
        entry = self._open.get(_key(pruner.DG, group))
        if entry is not None:
            self._open[_key(pruner.DG, rerooted)] = entry

    def settle(self, pruner: Any, group: Any, fate: str, removed: int = 0) -> None:
        entry = self._open.pop(_key(pruner.DG, group), None)
        if entry is not None:
            entry.fate, entry.removed = fate, removed

    def entry(self, pruner: Any, group: Any) -> OfferedGroup | None:
        """The open entry of an offered group (before it is settled), if the ledger saw it offered."""
        return self._open.get(_key(pruner.DG, group))

    def close_step(self) -> None:
        """What a step neither settled nor yielded keeps its fate: ranked, not yielded."""
        self._open.clear()

    def counts(self) -> dict[str, int]:
        """Offered groups by fate (over all steps), and the ignored ones beside."""
        found = {fate: sum(entry.fate == fate for entry in self.offered) for fate in FATES}
        return {"offered": len(self.offered), **found, "ignored": self.ignored}


def _member_labels(graph: Any, group: Any) -> list[str]:
    """The named members (modules and unwrapped parameters; not the graph's reshape or concat nodes), sorted."""
    return sorted({name_of(graph, dep.target.module) for dep, _ in group if dotted_name(graph, dep.target.module)})


def _key(graph: Any, group: Any) -> Key:
    dep = group[0].dep
    return (id(dep.target.module), bool(graph.is_out_channel_pruning_fn(dep.handler)))


def install_ledger(pruner: Any) -> GroupLedger:
    """Watch ``pruner``'s decisions from now on (after its constructor's own enumeration)."""
    ledger = GroupLedger(ignored=count_ignored_groups(pruner))
    graph = pruner.DG
    _wrap(graph, "get_all_groups", lambda original: _offering(original, pruner, ledger))
    _wrap(pruner, "_check_pruning_ratio", lambda fn: _settling(fn, pruner, ledger, MINIMUM_WIDTH, _is_false))
    _wrap(pruner, "_downstream_node_as_root_if_attention", lambda original: _rerooting(original, pruner, ledger))
    _wrap(pruner, "estimate_importance", lambda fn: _settling(fn, pruner, ledger, LEFT_WHOLE, _is_none))
    _wrap(graph, "check_pruning_group", lambda fn: _settling(fn, pruner, ledger, REFUSED, _is_false))
    return ledger


def note_yielded(pruner: Any, group: Any) -> None:
    """A group the pruner yielded, about to be pruned (called by the engine's prune loop)."""
    ledger = getattr(pruner, "tprune_ledger", None)
    if ledger is not None:
        removed = len(group[0].idxs)
        ledger.settle(pruner, group, PRUNED if removed else NOTHING_REMOVED, removed)


def close_step(pruner: Any) -> None:
    ledger = getattr(pruner, "tprune_ledger", None)
    if ledger is not None:
        ledger.close_step()


def count_ignored_groups(pruner: Any) -> int:
    """Distinct groups whose outputs include an ignored layer: torch-pruning never offers those."""
    graph = pruner.DG
    seen: set[frozenset[Key]] = set()
    for module in dict.fromkeys(getattr(pruner, "ignored_layers", [])):
        if module not in graph.module2node or not any(True for _ in module.parameters(recurse=False)):
            continue
        node_pruner = graph.get_pruner_of_module(module)
        width = node_pruner.get_out_channels(module) if node_pruner is not None else None
        if not width:
            continue
        try:
            group = graph.get_pruning_group(module, node_pruner.prune_out_channels, list(range(width)))
        except Exception:  # a walk that raises is the guards' business; the count stays a count
            continue
        seen.add(frozenset(_key(graph, [item]) for item in group))
    return len(seen)


def _is_false(result: Any) -> bool:
    return not result


def _is_none(result: Any) -> bool:
    return result is None


def _wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name, None)
    if callable(original):
        setattr(owner, name, make(original))


def _offering(original: Any, pruner: Any, ledger: GroupLedger) -> Callable[..., Iterator[Any]]:
    def offering(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for group in original(*args, **kwargs):
            ledger.offer(pruner, group)
            yield group

    return offering


def _settling(
    original: Any, pruner: Any, ledger: GroupLedger, fate: str, declined: Callable[[Any], bool]
) -> Callable[[Any], Any]:
    """``original`` unchanged, except that a group it declines (``declined(result)``) is settled with ``fate``."""

    def settling(group: Any) -> Any:
        result = original(group)
        if declined(result):
            ledger.settle(pruner, group, fate)
        return result

    return settling


def _rerooting(original: Any, pruner: Any, ledger: GroupLedger) -> Callable[[Any], Any]:
    def rerooting(group: Any) -> Any:
        rerooted = original(group)
        if rerooted is None:
            ledger.settle(pruner, group, NO_DOWNSTREAM_ROOT)
        else:
            ledger.alias(pruner, group, rerooted)
        return rerooted

    return rerooting

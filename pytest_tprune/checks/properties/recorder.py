"""The recording prune: the engine run with an observer that traces every group it prunes.

What the criterion, ``round_to`` and functional-equivalence checks are computed
from. Every read of torch-pruning's internals goes through
:mod:`pytest_tprune.engine.tp_internals`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_tprune.checks.properties.rules import blockers, is_depthwise, member_rule, owner_of
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec
from pytest_tprune.engine.tp_internals import (
    channel_groups,
    current_step,
    group_root,
    is_out_channels,
    item_width,
    member_name,
    observe_ranking,
    observe_refusals,
    pruning_dim,
    removed_count,
    removed_indices,
    root_key,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.left_whole import LeftWhole
    from pytest_tprune.engine.outcome import Baseline
    from pytest_tprune.engine.pruning import GroupHook

DETERMINISTIC_IMPORTANCES = ("l2", "l1", "lamp", "fpgm", "taylor")
"""Criteria the check can replay at ranking time: Taylor too, reading the gradients the engine left for the
ranking. Not ``random`` (a draw) nor ``hessian`` (its scores live in the importance's accumulator)."""
"""Criteria that give the same scores when recomputed: the criterion check can replay them."""


@dataclass
class MemberTrace:
    """One member of a pruned group: which tensor slices the group removed from it."""

    name: str  # dotted name of the module or unwrapped parameter in the model
    type_name: str
    direction: str  # "out" or "in": the torch-pruning handler applied to it
    rule: str  # soft-pruning rule (see _member_rule), "" when none applies
    axis: str  # "out" or "in": the dimension of the original tensors the indices number
    dim: int  # tensor dim the rule zeroes, for rules that need one
    idxs: list[int]  # removed, in the member's numbering when the group was pruned
    original_idxs: list[int]  # the same channels, numbered as in the unpruned model


@dataclass
class GroupTrace:
    """A dependency group as the pruner yielded it, with what it removed and why."""

    step: int
    root: str
    direction: str
    channels: int  # channels of the root's pruned dimension before this group was pruned
    channel_groups: int  # torch-pruning's channel grouping (attention heads, GroupNorm groups)
    removed: list[int]  # root indices removed (current numbering)
    importance: list[float] | None  # reference criterion per channel (averaged over channel groups)
    members: list[MemberTrace] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why soft pruning is not equivalent here
    pruned: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.root, self.direction)

    @property
    def label(self) -> str:
        return f"group {self.root} ({self.direction}-channels, step {self.step})"


@dataclass
class RecordedPrune:
    """A pruned model and the trace of every group the pruner yielded."""

    model: nn.Module
    config: PruneConfig
    groups: list[GroupTrace]  # pruned, in order
    skipped: list[GroupTrace]  # yielded but left unpruned by ``select``
    adapted: list[str]
    warnings: list[str] = field(default_factory=list)  # what torch-pruning warned about, once each
    refused: list[RefusedGroup] = field(default_factory=list)  # groups torch-pruning would have emptied
    left_whole: list[LeftWhole] = field(default_factory=list)  # groups the engine left whole, and why
    baseline: Baseline | None = None  # the unpruned model's measurement: pass it on to prune the same model again

    def newly_whole(self, other: RecordedPrune) -> list[str]:
        """Groups this prune left whole that ``other`` (say, at a smaller ratio) pruned."""
        theirs = {(lw.root, lw.direction) for lw in other.left_whole}
        return [lw.describe() for lw in self.left_whole if (lw.root, lw.direction) not in theirs]


@dataclass
class RefusedGroup:
    """A group torch-pruning ranked and then left alone, because the pruning would empty a member.

    Happens when rounding down to ``round_to`` reaches 0 channels, or the global
    threshold lies above every channel of a group. The group keeps what the
    previous step left (all of it in a single step), silently: the ratio asked
    for is not reached and a larger ratio can keep more.
    """

    step: int
    root: str
    direction: str
    removing: int  # channels the refused pruning would have removed
    members: list[str]


def reference_importance(name: str) -> Any | None:
    """A fresh torch-pruning criterion for ``name``; ``None`` for ``random`` and ``hessian`` (not replayable).

    Built here, not through :func:`pytest_tprune.engine.pruning.make_importance`, so
    that the criterion check keeps meaning what the name says when the engine's
    importance is swapped or wrapped (that is how the check is tested).
    """
    import torch_pruning as tp

    factories: dict[str, Callable[[], Any]] = {
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }
    factory = factories.get(name)
    return factory() if factory else None


def _reduce(importance: torch.Tensor, channel_groups: int) -> torch.Tensor:
    """Average over channel groups, as torch-pruning does before ranking."""
    if channel_groups > 1 and importance.numel() % channel_groups == 0:
        return importance.view(channel_groups, -1).mean(dim=0)
    return importance


def record_prune(
    spec: ModelSpec,
    model: nn.Module | Callable[[], nn.Module],
    config: PruneConfig,
    seed: int,
    select: Callable[[GroupTrace], bool] | None = None,
    baseline: Baseline | None = None,
    device: str = "cpu",
    compared_unfused: bool = False,
) -> RecordedPrune:
    """Prune ``model`` with the engine (:func:`pytest_tprune.engine.pruning.prune`), recording every group.

    The engine's ``observe`` hook records, for every group the pruner yields,
    the root, the indices removed from every member (in the member's current
    numbering and in the unpruned model's) and the importance of each channel
    under an independently built criterion, taken at the moment torch-pruning
    ranks the group: later groups are ranked on the model before earlier ones
    were pruned, and ranking them again at yield time would see a different
    model. Being the engine itself, the recorder retries, adapts and seeds as
    it does, so with ``select`` left out the result is bit-identical to a plain
    prune (the determinism property checks it). ``select`` prunes only the
    groups it accepts (the others are recorded in ``skipped``), which is how
    single groups are checked in isolation. ``model`` is pruned in place first,
    then copies of it (taken now), or it is a function returning fresh copies;
    ``baseline`` skips re-measuring the unpruned model when pruning it again;
    the prune runs on ``device``; ``compared_unfused`` says the pruned model
    will be compared with attention unfused, so fused attention is no blocker.
    """
    from pytest_tprune.engine.pruning import prune

    recorder = _Recorder(config, select, compared_unfused)
    pruned = prune(spec, config, device, seed, model=model, baseline=baseline, observe=recorder.attach)
    attempt = recorder.last
    return RecordedPrune(
        pruned.model,
        config,
        attempt.pruned,
        attempt.skipped,
        pruned.outcome.adapted,
        warnings=pruned.outcome.warnings,
        refused=attempt.refused,
        left_whole=pruned.outcome.left_whole,
        baseline=pruned.baseline,
    )


class _Recorder:
    """The engine's observer: a fresh :class:`_AttemptTrace` for every attempt; the last one stood."""

    def __init__(
        self, config: PruneConfig, select: Callable[[GroupTrace], bool] | None, compared_unfused: bool
    ) -> None:
        self.config = config
        self.select = select
        self.compared_unfused = compared_unfused
        self._last: _AttemptTrace | None = None

    def attach(self, model: nn.Module, pruner: Any) -> GroupHook:
        criterion = reference_importance(self.config.importance)
        self._last = _AttemptTrace(model, pruner, criterion, self.select, self.compared_unfused)
        return self._last.on_group

    @property
    def last(self) -> _AttemptTrace:
        if self._last is None:
            raise RuntimeError("the engine never built a pruner: nothing was recorded")
        return self._last


class _AttemptTrace:
    """What one attempt of the engine ranked, refused and yielded."""

    def __init__(
        self,
        model: nn.Module,
        pruner: Any,
        criterion: Any | None,
        select: Callable[[GroupTrace], bool] | None,
        compared_unfused: bool = False,
    ) -> None:
        self.model = model
        self.compared_unfused = compared_unfused
        self.graph = pruner.DG
        self.criterion = criterion
        self.select = select
        self.heads = set(pruner.num_heads)
        self.depthwise = _depthwise_convs(model)  # before any group is pruned: the rules number unpruned tensors
        self.ranked: dict[tuple[int, bool], tuple[torch.Tensor, int]] = {}
        self.alive: dict[tuple[str, str], list[int]] = {}
        self.pruned: list[GroupTrace] = []
        self.skipped: list[GroupTrace] = []
        self.refused: list[RefusedGroup] = []
        observe_ranking(pruner, self.on_ranked)
        observe_refusals(pruner, self.on_refused)

    def on_ranked(self, pruner: Any, group: Any, scores: Any) -> None:
        if self.criterion is None or scores is None:
            return
        reference = self.criterion(group)
        if reference is not None:
            self.ranked[root_key(self.graph, group)] = (
                reference.detach().float().cpu(),
                channel_groups(pruner, group),
            )

    def on_refused(self, pruner: Any, group: Any) -> None:
        root, direction, _ = group_root(self.graph, group)
        self.refused.append(
            RefusedGroup(
                step=current_step(pruner),
                root=root,
                direction=direction,
                removing=removed_count(group),
                members=sorted({member_name(self.graph, item.dep.target.module) for item in group} - {"?"}),
            )
        )

    def on_group(self, pruner: Any, group: Any, step: int) -> bool:
        ranked = self.ranked.pop(root_key(self.graph, group), None)  # a ranking is used by the yield it led to
        trace = _trace_group(
            self.model, self.graph, pruner, group, step, ranked, self.heads, self.depthwise, self.compared_unfused
        )
        if self.select is not None and not self.select(trace):
            trace.pruned = False
            for member in trace.members:
                member.original_idxs = []
            self.skipped.append(trace)
            return False
        _map_to_original(trace, self.graph, group, self.alive)
        self.pruned.append(trace)
        return True


def _depthwise_convs(model: nn.Module) -> set[int]:
    """The ids of the convolutions that are depthwise in ``model`` as it is now."""
    from torch.nn.modules.conv import _ConvNd

    return {id(m) for m in model.modules() if isinstance(m, _ConvNd) and is_depthwise(m)}


def _trace_group(
    model: nn.Module,
    graph: Any,
    pruner: Any,
    group: Any,
    step: int,
    ranked: tuple[torch.Tensor, int] | None,
    heads: set[Any],
    depthwise: set[int],
    compared_unfused: bool = False,
) -> GroupTrace:
    from torch import nn

    root, direction, channels = group_root(graph, group)
    grouping = channel_groups(pruner, group)
    importance = None  # not ranked by a replayable criterion (random), or not seen being ranked
    if ranked is not None:
        scores, grouping = ranked
        importance = [float(v) for v in _reduce(scores, grouping)]
    trace = GroupTrace(
        step=step,
        root=root,
        direction=direction,
        channels=channels,
        channel_groups=grouping,
        removed=removed_indices(group),
        importance=importance,
    )
    members: dict[tuple[str, str], MemberTrace] = {}
    for item in group:
        target = item.dep.target.module
        name = member_name(graph, target)
        has_params = isinstance(target, nn.Parameter) or (
            isinstance(target, nn.Module) and any(True for _ in target.parameters())
        )
        if name == "?":
            if has_params:
                trace.blockers.append(f"member {type(target).__name__} is not a named part of the model")
            continue
        direction = "out" if is_out_channels(graph, item.dep) else "in"
        rule = member_rule(target, direction, pruning_dim(item.dep), depthwise=id(target) in depthwise)
        owner = owner_of(model, name)
        if isinstance(rule, str):
            trace.blockers.append(f"{name}: {rule}")
            rule_name, axis, dim = "", direction, 0
        else:
            rule_name, axis, dim = rule
        found = blockers(target, owner, direction, axis, target in heads, compared_unfused)
        trace.blockers += [f"{name}: {b}" for b in found if b not in trace.blockers]
        idxs = sorted({int(i) for i in item.idxs})
        key = (name, axis)
        if key in members:  # the same tensor dimension reached twice (e.g. depthwise in and out)
            members[key].idxs = sorted(set(members[key].idxs) | set(idxs))
            continue
        members[key] = MemberTrace(name, type(target).__name__, direction, rule_name, axis, dim, idxs, [])
    trace.members = list(members.values())
    trace.blockers = list(dict.fromkeys(trace.blockers))
    return trace


def _map_to_original(trace: GroupTrace, graph: Any, group: Any, alive: dict[tuple[str, str], list[int]]) -> None:
    """Number each member's removed indices as in the unpruned model (iterative steps renumber)."""
    sizes: dict[tuple[str, str], int] = {}
    for item in group:
        target = item.dep.target.module
        is_out = is_out_channels(graph, item.dep)
        size = item_width(graph, item.dep)
        if size is not None:
            sizes.setdefault((member_name(graph, target), "out" if is_out else "in"), size)
    for member in trace.members:
        key = (member.name, member.axis)
        if key not in alive:
            size = sizes.get((member.name, member.direction))
            if size is None:
                member.original_idxs = list(member.idxs)
                continue
            alive[key] = list(range(size))
        numbering = alive[key]
        member.original_idxs = [numbering[i] for i in member.idxs if i < len(numbering)]
        gone = set(member.idxs)
        alive[key] = [c for i, c in enumerate(numbering) if i not in gone]

"""Properties every correct prune satisfies, as checks that return the problems they find.

The golden and shape checks of :mod:`pytest_tprune.case` pin what one config
does to one model. The checks here state what *any* config must do, so that
Hypothesis can search the config space for a counterexample
(``tests/test_properties.py``; the catalogue and its limits are in
``docs/properties.md``). Each check returns a list of problems, each naming the
dependency group (by its root layer) or the layer at fault, and an empty list
when the property holds.

Two tools make the checks sharp:

* :func:`perturb` makes every channel of a freshly initialised model
  distinguishable. Fresh timm inits leave many tensors constant across
  channels (BatchNorm statistics 0/1, norm weights 1, biases 0, layer-scale
  constants), and then keeping the wrong channel of such a tensor changes
  nothing observable, so a checker comparing outputs cannot see the error.
* :func:`record_prune` prunes exactly as the engine does (``make_pruner``,
  ``pruner.step(interactive=True)``, the seeded RNG, the adapters) while
  recording, for every pruned group, the root layer, the indices removed from
  every member (in the member's current numbering and in the unpruned model's)
  and the importance of each channel under an independently built criterion,
  taken at the moment torch-pruning ranks the group. That is what the
  criterion, ``round_to`` and functional-equivalence checks are computed from.

Functional equivalence (:func:`equivalence_report`) compares the pruned model
with *soft pruning*: the unpruned model with the removed slices of every
parameter of each group set to zero. Removing a channel and zeroing every weight
that produces or consumes it compute the same function wherever a channel only
ever meets per-channel operations, so the two must agree up to float rounding.
It does not hold, and is not checked, for groups that touch

* a norm whose statistics span the pruned channels (LayerNorm, LayerNorm2d,
  GroupNorm, RmsNorm, ...): removing a channel changes the mean and variance
  of the others, zeroing it does not remove it from the statistics;
* a weight-standardised convolution (timm's ``ScaledStdConv2d``) pruned along
  its input channels: the standardisation statistics span them;
* attention head dims while timm's fused attention is on:
  ``F.scaled_dot_product_attention`` scales by ``1/sqrt(head_dim)`` of the
  pruned tensor and ignores the module's ``scale`` that the engine keeps, so
  pruning changes the softmax temperature. The check therefore turns fused
  attention off on both models (timm's manual path multiplies by ``scale``),
  which makes head-dim groups checkable;
* a layer type with no soft-pruning rule here (it is reported, not guessed).

Heavy imports (torch, torch-pruning, timm) happen inside the functions so that
importing this module, e.g. from a conftest, stays cheap.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_tprune.config import PruneConfig
from pytest_tprune.expectations import predicted_kept
from pytest_tprune.models import ModelSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.left_whole import Culprit, LeftWhole
    from pytest_tprune.pruning import PruneOutcome

DETERMINISTIC_IMPORTANCES = ("l2", "l1", "lamp", "fpgm")
"""Criteria that give the same scores when recomputed: the criterion check can replay them."""

EQUIVALENCE_TOLERANCE = 1e-9
"""Functional equivalence is checked in float64: ``max|pruned - soft| <= tol * (1 + max|soft|)``.

The pruned and the soft-pruned model compute the same sums except for the
zero terms, so they differ only by summation order: about 1e-15 relative per
operation in float64. 1e-9 leaves six orders of margin for that and is still
far below any real error (a wrong channel moves the output by 1e-3 or more).
"""

TIE_TOLERANCE = 1e-6
"""Relative slack of the criterion check: equal scores may be ranked either way."""

WIDTH_COUPLED_ATTENTION = ("AttentionPoolLatent",)
"""timm attention modules whose forward reshapes the attention output with the *input* width ``C``."""

PERTURB_SCALE = 0.1
PERTURB_FLOOR = 0.02


# -- perturbation --------------------------------------------------------------------------------------------------


def perturb(model: nn.Module, seed: int, scale: float = PERTURB_SCALE, floor: float = PERTURB_FLOOR) -> nn.Module:
    """Make every channel distinguishable, in place and reproducibly; returns ``model``.

    Every parameter and floating buffer ``t`` becomes ``t * (1 + scale * N1) +
    sigma * N2`` with ``N1, N2`` standard normal draws from a generator seeded
    with ``seed`` and ``sigma = max(scale * rms(t), floor)``. The multiplicative
    term keeps a tensor's magnitude and breaks ties between equal entries; the
    additive term gives tensors that are constant at init (biases 0, norm
    weights 1, BatchNorm means 0, layer-scale gammas of 1e-5) distinct values
    of an observable size. BatchNorm ``running_var`` is multiplied by
    ``exp(scale * N1)`` and gets ``floor * |N2|`` added instead, so it stays
    positive. Non-finite entries (masks of ``-inf``) and integer buffers are
    left alone.

    Why: a fresh timm init leaves many tensors constant across channels, and
    then keeping the wrong channel of such a tensor changes nothing observable;
    the correctness checks (criterion, functional equivalence) perturb first so
    that a wrong channel shows up in the output.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: list[tuple[str, torch.Tensor]] = list(model.named_parameters())
    tensors += [(name, b) for name, b in model.named_buffers() if b.is_floating_point()]
    with torch.no_grad():
        for name, tensor in tensors:
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            n1 = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float64)
            n2 = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float64)
            old = tensor.detach().to(device="cpu", dtype=torch.float64)
            finite = torch.isfinite(old)
            if name.endswith("running_var"):
                new = old.clamp(min=0) * torch.exp(scale * n1) + floor * n2.abs()
            else:
                rms = float(old[finite].pow(2).mean().sqrt()) if bool(finite.any()) else 0.0
                new = old * (1 + scale * n1) + max(scale * rms, floor) * n2
            tensor.copy_(torch.where(finite, new, old).to(device=tensor.device, dtype=tensor.dtype))
    return model


def unfuse_attention(model: nn.Module) -> list[str]:
    """Switch timm attention modules to their manual path; returns the modules switched.

    The manual path scales queries by the module's ``scale``, which the engine
    keeps when it prunes head dims; the fused path (``F.scaled_dot_product_attention``)
    ignores it and uses ``1/sqrt`` of the pruned head dim instead.
    """
    switched = []
    for name, module in model.named_modules():
        if getattr(module, "fused_attn", None) is True:
            setattr(module, "fused_attn", False)  # noqa: B010 - a plain attribute that timm annotates Final
            switched.append(name)
    return switched


# -- recording prune -----------------------------------------------------------------------------------------------


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
    """A fresh torch-pruning criterion for ``name``; ``None`` for ``random`` (it cannot be replayed).

    Built here, not through :func:`pytest_tprune.pruning.make_importance`, so
    that the criterion check keeps meaning what the name says when the engine's
    importance is swapped or wrapped (that is how the check is tested).
    """
    import torch_pruning as tp

    factories: dict[str, Callable[[], Any]] = {
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    }
    factory = factories.get(name)
    return factory() if factory else None


def _mixes_channels(module: Any) -> bool:
    """A norm whose statistics span channels: true of every norm but Batch- and InstanceNorm."""
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm

    if not isinstance(module, nn.Module) or isinstance(module, (_BatchNorm, _InstanceNorm)):
        return False
    rms = getattr(nn, "RMSNorm", nn.LayerNorm)
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, rms)) or "Norm" in type(module).__name__


def _is_depthwise(conv: Any) -> bool:
    """torch-pruning's test: groups == out_channels > 1 (it prunes in and out channels together)."""
    return bool(conv.groups == conv.out_channels and conv.out_channels > 1)


def _member_rule(target: Any, direction: str, pruning_dim: int) -> tuple[str, str, int] | str:
    """``(rule, axis, dim)`` saying which slices the removal of channels zeroes, or why none applies.

    ``axis`` names the tensor dimension of the original model the indices live
    in (``out`` or ``in``), so that indices of later iterative steps can be
    mapped back to it; BatchNorm, depthwise convolutions and parameters prune
    one dimension whatever the handler, so they always use ``out``.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.instancenorm import _InstanceNorm

    if isinstance(target, nn.Parameter):
        return ("param", "out", pruning_dim)
    if isinstance(target, _ConvNd):
        if target.transposed:
            return f"no soft-pruning rule for transposed convolution {type(target).__name__}"
        if _is_depthwise(target) or direction == "out":
            return ("rows", "out", 0)
        return ("cols", "in", 1) if target.groups == 1 else ("grouped-cols", "in", 1)
    if isinstance(target, nn.Linear):
        return ("rows", "out", 0) if direction == "out" else ("cols", "in", 1)
    if isinstance(target, nn.Embedding):
        return ("cols", "out", 1)
    norm_like = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)
    if isinstance(target, norm_like) or _mixes_channels(target):
        own = [p for p in target.parameters(recurse=False) if p.ndim >= 1]
        if any(p.ndim > 1 for p in own):
            return f"no soft-pruning rule for {type(target).__name__} with multi-dimensional parameters"
        return ("vector", "out", -1)
    if isinstance(target, nn.Module) and not any(True for _ in target.parameters()):
        return ("none", "out", 0)
    return f"no soft-pruning rule for {type(target).__name__}"


def _blockers(target: Any, owner: Any, direction: str, axis: str, is_head_projection: bool) -> list[str]:
    """Why soft pruning of this member would not be equivalent to removing its channels."""
    from torch import nn

    found = []
    norm = target if not isinstance(target, nn.Parameter) else owner  # an unwrapped norm weight: its module
    if _mixes_channels(norm):
        found.append(f"{type(norm).__name__} normalises over the pruned channels")
    if "StdConv" in type(target).__name__ and axis == "in":
        found.append(f"{type(target).__name__} standardises its weight over the pruned input channels")
    if is_head_projection and direction == "out" and type(owner).__name__ in WIDTH_COUPLED_ATTENTION:
        found.append(
            f"{type(owner).__name__} reshapes its attention output to its input width: "
            "its head dims are only valid pruned together with the embedding dim"
        )
    if is_head_projection and direction == "out" and getattr(owner, "fused_attn", False) is True:
        found.append(
            f"fused attention in {type(owner).__name__}: scaled_dot_product_attention scales by "
            "1/sqrt(pruned head_dim) and ignores the kept `scale`"
        )
    return found


def _owner(model: nn.Module, name: str) -> Any:
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    try:
        return model.get_submodule(parent)
    except AttributeError:
        return None


def _reduce(importance: torch.Tensor, channel_groups: int) -> torch.Tensor:
    """Average over channel groups, as torch-pruning does before ranking."""
    if channel_groups > 1 and importance.numel() % channel_groups == 0:
        return importance.view(channel_groups, -1).mean(dim=0)
    return importance


def record_prune(
    spec: ModelSpec,
    model: nn.Module | Callable[[], nn.Module],
    inputs: torch.Tensor,
    config: PruneConfig,
    seed: int,
    select: Callable[[GroupTrace], bool] | None = None,
) -> RecordedPrune:
    """Prune ``model`` exactly as the engine does, recording every group.

    Built with :func:`pytest_tprune.pruning.make_pruner` and driven by
    ``pruner.step(interactive=True)`` under the engine's seeded RNG, then the
    engine's adapters, and pruned again from a fresh copy when that breaks the
    model, as the engine does (:func:`pytest_tprune.pruning.until_sound`):
    ``model`` is pruned in place first, then copies of it (taken now), or it is
    a function returning fresh copies. With ``select`` left out the result is
    bit-identical to :func:`pytest_tprune.pruning.prune` (the determinism
    property checks it).
    ``select`` prunes only the groups it accepts (the others are recorded in
    ``skipped``), which is how single groups are checked in isolation.

    The importance of a group is recorded with :func:`reference_importance` at
    the moment torch-pruning ranks it (``estimate_importance`` is wrapped):
    later groups are ranked on the model before earlier ones were pruned, and
    ranking them again at yield time would see a different model.
    """
    from torch import nn

    from pytest_tprune.pruning import first_then_fresh, fresh_copies, until_sound

    fresh = fresh_copies(spec, seed, model)
    models = first_then_fresh(model, fresh) if isinstance(model, nn.Module) else fresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorded = until_sound(
            models, lambda pristine, culprits: _record_prune(spec, pristine, inputs, config, seed, select, culprits)
        )
    recorded.warnings = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught if str(w.message)))
    return recorded


def _record_prune(
    spec: ModelSpec,
    model: nn.Module,
    inputs: torch.Tensor,
    config: PruneConfig,
    seed: int,
    select: Callable[[GroupTrace], bool] | None,
    culprits: Sequence[Culprit],
) -> RecordedPrune:
    """One recorded prune, run forward as the engine's counting pass does: a break is a retry for
    :func:`pytest_tprune.pruning.until_sound`, as it is in the engine."""
    import torch

    from pytest_tprune import pruning
    from pytest_tprune.adapters import apply_adapters, type_key

    pruner = pruning.make_pruner(model, inputs, spec, config, seed, culprits)
    graph = pruner.DG
    criterion = reference_importance(config.importance)
    ranked: dict[tuple[int, bool], tuple[torch.Tensor, int]] = {}
    estimate = pruner.estimate_importance

    def root_key(group: Any) -> tuple[int, bool]:
        dep = group[0].dep
        return (id(dep.target.module), bool(graph.is_out_channel_pruning_fn(dep.handler)))

    def recording_estimate(group: Any) -> Any:
        scores = estimate(group)
        if criterion is not None and scores is not None:
            reference = criterion(group)
            if reference is not None:
                ranked[root_key(group)] = (reference.detach().float().cpu(), int(pruner._get_channel_groups(group)))
        return scores

    pruner.estimate_importance = recording_estimate
    refused: list[RefusedGroup] = []
    current_step = [0]
    check = graph.check_pruning_group

    def recording_check(group: Any) -> bool:
        accepted = bool(check(group))
        if not accepted:
            dep = group[0].dep
            refused.append(
                RefusedGroup(
                    step=current_step[0],
                    root=_name_of(graph, dep.target.module),
                    direction="out" if graph.is_out_channel_pruning_fn(dep.handler) else "in",
                    removing=len(group[0].idxs),
                    members=sorted({_name_of(graph, item.dep.target.module) for item in group} - {"?"}),
                )
            )
        return accepted

    graph.check_pruning_group = recording_check
    alive: dict[tuple[str, str], list[int]] = {}
    heads = set(pruner.num_heads)
    pruned: list[GroupTrace] = []
    skipped: list[GroupTrace] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(1, config.iterative_steps + 1):
            ranked.clear()
            current_step[0] = step
            for group in pruner.step(interactive=True):
                trace = _trace_group(model, graph, pruner, group, step, ranked.get(root_key(group)), heads)
                if select is not None and not select(trace):
                    trace.pruned = False
                    for member in trace.members:
                        member.original_idxs = []
                    skipped.append(trace)
                    continue
                _map_to_original(trace, graph, group, alive)
                pruning.prune_group(pruner, group)
                pruned.append(trace)
    pruner.estimate_importance = estimate  # break the cycles through the wrappers
    graph.check_pruning_group = check
    extra = {type_key(cls): fn for cls, fn in spec.adapters.items()}
    adapted = apply_adapters(model, extra)
    try:
        with torch.no_grad():
            model(inputs)
    except Exception as exc:
        raise pruning.forward_broke(model, inputs, exc, culprits) from exc
    return RecordedPrune(model, config, pruned, skipped, adapted, refused=refused, left_whole=list(pruner.left_whole))


def _trace_group(
    model: nn.Module,
    graph: Any,
    pruner: Any,
    group: Any,
    step: int,
    ranked: tuple[torch.Tensor, int] | None,
    heads: set[Any],
) -> GroupTrace:
    from torch import nn

    dep = group[0].dep
    root_module = dep.target.module
    is_out = bool(graph.is_out_channel_pruning_fn(dep.handler))
    channels = graph.get_out_channels(root_module) if is_out else graph.get_in_channels(root_module)
    channel_groups = int(pruner._get_channel_groups(group))
    importance = None  # not ranked by a replayable criterion (random), or not seen being ranked
    if ranked is not None:
        scores, ranked_groups = ranked
        importance = [float(v) for v in _reduce(scores, ranked_groups)]
        channel_groups = ranked_groups
    trace = GroupTrace(
        step=step,
        root=_name_of(graph, root_module),
        direction="out" if is_out else "in",
        channels=int(channels or 0),
        channel_groups=channel_groups,
        removed=sorted(int(i) for i in group[0].idxs),
        importance=importance,
    )
    members: dict[tuple[str, str], MemberTrace] = {}
    for item in group:
        target = item.dep.target.module
        name = _name_of(graph, target)
        has_params = isinstance(target, nn.Parameter) or (
            isinstance(target, nn.Module) and any(True for _ in target.parameters())
        )
        if name == "?":
            if has_params:
                trace.blockers.append(f"member {type(target).__name__} is not a named part of the model")
            continue
        direction = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        rule = _member_rule(target, direction, int(getattr(item.dep.target, "pruning_dim", -1)))
        owner = _owner(model, name)
        if isinstance(rule, str):
            trace.blockers.append(f"{name}: {rule}")
            rule_name, axis, dim = "", direction, 0
        else:
            rule_name, axis, dim = rule
        trace.blockers += [
            f"{name}: {b}"
            for b in _blockers(target, owner, direction, axis, target in heads)
            if b not in trace.blockers
        ]
        idxs = sorted({int(i) for i in item.idxs})
        key = (name, axis)
        if key in members:  # the same tensor dimension reached twice (e.g. depthwise in and out)
            members[key].idxs = sorted(set(members[key].idxs) | set(idxs))
            continue
        members[key] = MemberTrace(name, type(target).__name__, direction, rule_name, axis, dim, idxs, [])
    trace.members = list(members.values())
    trace.blockers = list(dict.fromkeys(trace.blockers))
    return trace


def _name_of(graph: Any, target: Any) -> str:
    from torch import nn

    # _module2name holds a display label for unwrapped parameters, not their name
    names = graph._param_to_name if isinstance(target, nn.Parameter) else graph._module2name
    name = names.get(target)
    return str(name) if name is not None else "?"


def _map_to_original(trace: GroupTrace, graph: Any, group: Any, alive: dict[tuple[str, str], list[int]]) -> None:
    """Number each member's removed indices as in the unpruned model (iterative steps renumber)."""
    sizes: dict[tuple[str, str], int] = {}
    for item in group:
        target = item.dep.target.module
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        size = graph.get_out_channels(target) if is_out else graph.get_in_channels(target)
        if size is not None:
            sizes.setdefault((_name_of(graph, target), "out" if is_out else "in"), int(size))
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


# -- soft pruning --------------------------------------------------------------------------------------------------


def soft_prune(original: nn.Module, groups: Iterable[GroupTrace]) -> nn.Module:
    """A copy of ``original`` with the slices the groups removed set to zero, instead of removed.

    Parameters only: buffers (BatchNorm statistics) are kept, because a
    channel whose weight and bias are zero outputs zero whatever its
    statistics, and a pruner that keeps the wrong channel's statistics must
    show up as a difference.
    """
    import torch

    soft = copy.deepcopy(original)
    with torch.no_grad():
        for group in groups:
            for member in group.members:
                if member.rule in ("", "none") or not member.original_idxs:
                    continue
                _zero(soft, member)
    return soft


def _zero(model: nn.Module, member: MemberTrace) -> None:
    import torch

    idx = torch.tensor(sorted(set(member.original_idxs)), dtype=torch.long)
    if member.rule == "param":
        param = model.get_parameter(member.name)
        param.index_fill_(member.dim % param.ndim, idx.to(param.device), 0.0)
        return
    module = model.get_submodule(member.name)
    own = dict(module.named_parameters(recurse=False))
    weight = own.get("weight")
    if member.rule == "rows" and weight is not None:
        for param in own.values():  # weight, bias, and per-output-channel extras (ScaledStdConv2d gain)
            if param.ndim >= 1 and param.shape[0] == weight.shape[0]:
                param.index_fill_(0, idx.to(param.device), 0.0)
    elif member.rule == "cols" and weight is not None:
        weight.index_fill_(member.dim, idx.to(weight.device), 0.0)
    elif member.rule == "grouped-cols" and weight is not None:
        groups = int(getattr(module, "groups", 1))
        per_group_in = weight.shape[1]
        per_group_out = weight.shape[0] // groups
        for channel in idx.tolist():
            g = channel // per_group_in
            weight[g * per_group_out : (g + 1) * per_group_out, channel % per_group_in] = 0.0
    elif member.rule == "vector":
        for param in own.values():
            if param.ndim >= 1:
                param.index_fill_(param.ndim - 1, idx.to(param.device), 0.0)


# -- comparing models ----------------------------------------------------------------------------------------------


def _outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    import torch

    from pytest_tprune.measure import output_tensor

    model.eval()
    with torch.no_grad():
        return output_tensor(model(inputs)).detach()


def same_model_problems(first: nn.Module, second: nn.Module, inputs: torch.Tensor, what: str) -> list[str]:
    """Shapes, tensor values and outputs of two models must be bit-identical; ``what`` names the pair."""
    import torch

    from pytest_tprune.pruning import tensor_shapes

    problems = []
    shapes_a, shapes_b = tensor_shapes(first), tensor_shapes(second)
    for name in sorted(set(shapes_a) | set(shapes_b)):
        if shapes_a.get(name) != shapes_b.get(name):
            problems.append(f"{what}: layer tensor {name} has shape {shapes_a.get(name)} vs {shapes_b.get(name)}")
    state_b = second.state_dict()
    for name, tensor in first.state_dict().items():
        other = state_b.get(name)
        if other is not None and other.shape == tensor.shape and not torch.equal(tensor, other):
            problems.append(f"{what}: layer tensor {name} has different values")
    out_a, out_b = _outputs(first, inputs), _outputs(second, inputs)
    if out_a.shape != out_b.shape:
        problems.append(f"{what}: output shapes {list(out_a.shape)} vs {list(out_b.shape)}")
    elif not torch.equal(out_a, out_b):
        problems.append(f"{what}: outputs differ by up to {float((out_a - out_b).abs().max()):.3g}")
    return problems


# -- the properties ------------------------------------------------------------------------------------------------


def forward_problems(original: nn.Module, pruned: nn.Module, inputs: torch.Tensor) -> list[str]:
    """The pruned model runs: same output shape as the unpruned one, finite values, and a
    backward pass reaches every parameter the unpruned model's backward reached."""
    import torch

    from pytest_tprune.case import unreached_parameters
    from pytest_tprune.measure import output_tensor

    problems = []
    expected = list(_outputs(original, inputs).shape)
    pruned.eval()
    try:
        out = output_tensor(pruned(inputs))
    except Exception as exc:
        return [f"forward failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    if list(out.shape) != expected:
        problems.append(f"output shape {list(out.shape)} != unpruned {expected}")
    if not bool(torch.isfinite(out).all()):
        problems.append("output has non-finite values")
    allowed = unreached_parameters(copy.deepcopy(original), inputs)
    pruned.zero_grad(set_to_none=True)
    out.float().sum().backward()
    missed = sorted(n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None and n not in allowed)
    pruned.zero_grad(set_to_none=True)
    if missed:
        problems.append(f"backward reaches no gradient to layer parameter(s) {', '.join(missed[:5])}")
    return problems


def ratio_zero_problems(original: nn.Module, pruned: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Ratio 0 changes nothing: shapes, every tensor and the outputs bit-identical."""
    return same_model_problems(original, pruned, inputs, "ratio 0 changed the model")


def determinism_problems(first: nn.Module, second: nn.Module, inputs: torch.Tensor) -> list[str]:
    """The same config twice on the same model gives bit-identical models."""
    return same_model_problems(first, second, inputs, "two prunes with one config differ")


@dataclass
class SizeFigures:
    """What a prune left: parameters, MACs (FlopCounterMode, one forward) and tensor shapes."""

    ratio: float
    params: int
    macs: int
    shapes: dict[str, list[int]]

    @classmethod
    def of(cls, model: nn.Module, inputs: torch.Tensor, ratio: float) -> SizeFigures:
        from pytest_tprune.measure import forward_with_flops, param_count
        from pytest_tprune.pruning import tensor_shapes

        _, macs = forward_with_flops(model.eval(), inputs)
        return cls(ratio, param_count(model), macs, tensor_shapes(model))

    @classmethod
    def from_outcome(cls, outcome: PruneOutcome) -> SizeFigures:
        """The engine's figures (its FlopCounterMode MACs) of a :func:`pytest_tprune.pruning.prune` outcome."""
        return cls(outcome.prune_config.ratio, outcome.params_after, outcome.flop_macs_after, outcome.shapes_after)


def monotonicity_problems(low: SizeFigures, high: SizeFigures) -> list[str]:
    """A larger ratio never leaves more parameters or MACs (same model, same other knobs).

    On a violation the layers that kept more at the larger ratio are named.
    """
    problems = []
    for what, at_low, at_high in (("params", low.params, high.params), ("MACs", low.macs, high.macs)):
        if high.ratio >= low.ratio and at_high > at_low:
            problems.append(f"{what}: {at_high} at ratio {high.ratio} > {at_low} at ratio {low.ratio}")
    if problems:
        grown = [
            f"{name} {low.shapes[name]} at {low.ratio} -> {shape} at {high.ratio}"
            for name, shape in high.shapes.items()
            if name in low.shapes
            and len(shape) == len(low.shapes[name])
            and any(b > a for a, b in zip(low.shapes[name], shape, strict=True))
        ]
        problems.append("layers keeping more at the larger ratio: " + "; ".join(grown[:6]))
    return problems


def layer_monotonicity_problems(
    low: SizeFigures, high: SizeFigures, original: dict[str, list[int]], exempt: Iterable[str] = ()
) -> list[str]:
    """Per layer, a larger ratio keeps no more along any dimension, unless it left that dimension whole.

    When rounding down to ``round_to`` or the global threshold would remove
    every channel of a group, torch-pruning refuses the group and leaves it
    whole (in one step), so a larger ratio can keep *more* in total (see
    :func:`monotonicity_problems`); per layer it still keeps no more unless
    whole. ``original`` holds the unpruned shapes
    (:func:`pytest_tprune.pruning.tensor_shapes`). Tensors of the modules or
    parameters named in ``exempt`` (members of groups refused at the larger
    ratio, :class:`RefusedGroup`) are not compared: over several steps a
    refused group keeps what the previous step left, neither whole nor smaller.
    """
    problems = []
    skip = tuple(exempt)
    for name, shape in sorted(high.shapes.items()):
        if any(name == m or name.startswith(m + ".") for m in skip):
            continue
        before, full = low.shapes.get(name), original.get(name)
        if before is None or full is None or len(before) != len(shape) or len(full) != len(shape):
            continue
        grown = [d for d, (a, b, f) in enumerate(zip(before, shape, full, strict=True)) if b > a and b != f]
        if grown:
            problems.append(
                f"layer tensor {name}: {before} at ratio {low.ratio} -> {shape} at ratio {high.ratio} "
                f"(dim {grown[0]} grew and is not whole: {full[grown[0]]})"
            )
    return problems


def criterion_problems(recorded: RecordedPrune) -> list[str]:
    """Every removed channel scores no higher than every kept one, per group and step.

    Scores are the reference criterion of the config's importance
    (:func:`reference_importance`), taken when torch-pruning ranked the group,
    averaged over channel groups as torch-pruning does; ties may go either way
    (``TIE_TOLERANCE``). With channel groups (heads, GroupNorm groups), every
    channel group must also lose the same positions. Groups without a recorded
    score (``random``) are not checked.
    """
    problems = []
    replayable = recorded.config.importance in DETERMINISTIC_IMPORTANCES
    if replayable and recorded.groups and all(g.importance is None for g in recorded.groups):
        return [f"no group was seen being ranked: the criterion cannot be checked ({len(recorded.groups)} pruned)"]
    for group in recorded.groups:
        if group.importance is None or not group.removed:
            continue
        scores = group.importance
        size = len(scores)
        positions = {i % size for i in group.removed}
        if group.channel_groups > 1 and size * group.channel_groups == group.channels:
            expected = {p + g * size for p in positions for g in range(group.channel_groups)}
            if expected != set(group.removed):
                problems.append(f"{group.label}: channel groups lost different positions {group.removed[:12]}")
        kept = [i for i in range(size) if i not in positions]
        if not kept:
            continue
        worst_removed = max(positions, key=lambda i: scores[i])
        best_kept = min(kept, key=lambda i: scores[i])
        high, low = scores[worst_removed], scores[best_kept]
        if high - low > TIE_TOLERANCE * max(abs(high), abs(low), 1e-12):
            outranked = sum(1 for i in positions if scores[i] > low)
            problems.append(
                f"{group.label}: removed channel {worst_removed} (score {high:.4g}) outranks kept channel "
                f"{best_kept} (score {low:.4g}); {outranked} of {len(positions)} removed channels score above a "
                "kept one"
            )
    return problems


def round_to_problems(recorded: RecordedPrune) -> list[str]:
    """Channel counts after pruning honour ``round_to`` and, in uniform mode, the shape rule.

    For every pruned group, over all iterative steps: with ``round_to = k``
    the kept count is a multiple of ``k``, or the layer was left whole
    (torch-pruning leaves a group alone when rounding would remove every
    channel). In uniform mode the kept count equals :func:`~pytest_tprune.expectations.predicted_kept` of
    the original count (for several iterative steps only where that is the
    single-step rule: groups without channel grouping); when the rule predicts
    no channel at all, any multiple of ``k`` is accepted (torch-pruning stops
    at the step that would empty the group).
    """
    config = recorded.config
    totals: dict[tuple[str, str], tuple[GroupTrace, int]] = {}
    for group in recorded.groups:
        first, removed = totals.get(group.key, (group, 0))
        totals[group.key] = (first, removed + len(group.removed))
    problems = []
    k = config.round_to
    for first, removed in totals.values():
        kept = first.channels - removed
        if removed == 0:
            continue
        label = f"group {first.root} ({first.direction}-channels)"
        if k and kept % k:
            problems.append(
                f"{label}: kept {kept} of {first.channels} channels (groups={first.channel_groups}), "
                f"not a multiple of round_to={k}"
            )
        if config.global_pruning or (config.iterative_steps > 1 and first.channel_groups > 1 and k):
            continue
        expected = predicted_kept(first.channels, first.channel_groups, config.ratio, k)
        if expected == 0 and (not k or kept % k == 0):
            continue
        if kept != expected:
            problems.append(
                f"{label}: kept {kept} of {first.channels} channels (groups={first.channel_groups}), "
                f"the shape rule predicts {expected} at ratio {config.ratio} with round_to={k}"
            )
    return problems


def save_load_problems(pruned: nn.Module, fresh: nn.Module, inputs: torch.Tensor, serialize: bool = True) -> list[str]:
    """``torch_pruning.state_dict`` saved and loaded into a fresh unpruned model reproduces the pruned one.

    The state goes through ``torch.save``/``torch.load`` as a user would store
    it (``weights_only=False``: torch-pruning pickles whole module dicts, which
    torch >= 2.6's default ``weights_only=True``, and so ``tp.load``, refuses).
    The loaded model must equal the pruned one bit for bit and share no
    tensor with it. ``serialize=False`` loads the in-memory state directly,
    which shows that torch-pruning's state is a shallow copy: the "fresh"
    model then shares its submodules and parameters with the pruned one.
    """
    import torch
    import torch_pruning as tp

    state = tp.state_dict(pruned)
    if serialize:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=False)
    try:
        loaded = tp.load_state_dict(fresh, state_dict=state)
    except Exception as exc:  # e.g. a read-only property recorded as an attribute
        return [f"torch_pruning.load_state_dict failed: {type(exc).__name__}: {exc}"]
    problems = same_model_problems(pruned, loaded, inputs, "loaded model differs from the pruned one")
    pointers = {p.data_ptr() for p in pruned.parameters()}
    shared = [n for n, p in loaded.named_parameters() if p.data_ptr() in pointers]
    if shared:
        problems.append(f"loaded model shares tensors with the pruned one: {', '.join(shared[:5])}")
    return problems


@dataclass
class EquivalenceReport:
    """The outcome of the functional-equivalence check, with its coverage."""

    problems: list[str]
    checked: list[str]  # labels of the groups pruned and compared
    skipped: dict[str, list[str]]  # label -> why soft pruning is not equivalent there
    error: float  # max |pruned - soft| / (1 + max |soft|) of the combined comparison

    @property
    def ok(self) -> bool:
        return not self.problems


def _soft_error(hard: nn.Module, soft: nn.Module, inputs: torch.Tensor) -> float:
    """``max|hard - soft| / (1 + max|soft|)`` in float64; infinite when shapes differ or values are not finite."""
    import torch

    a = _outputs(copy.deepcopy(hard).double(), inputs.double())
    b = _outputs(copy.deepcopy(soft).double(), inputs.double())
    if a.shape != b.shape:
        return float("inf")
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return float("inf")
    return float((a - b).abs().max()) / (1.0 + float(b.abs().max()))


def equivalence_report(
    spec: ModelSpec,
    model: nn.Module,
    config: PruneConfig,
    seed: int,
    *,
    unfuse: bool = True,
    include_blocked: bool = False,
    tolerance: float = EQUIVALENCE_TOLERANCE,
    inputs: torch.Tensor | None = None,
    only: Callable[[GroupTrace], bool] | None = None,
) -> EquivalenceReport:
    """The pruned model computes what the soft-pruned original computes (see the module docstring).

    ``model`` is the unpruned model (perturbed by the caller; it is not
    modified). Groups with a blocker are left unpruned and listed in
    ``skipped`` with the reason; the others are pruned together and compared
    in float64 on a batch of two in eval mode. On a mismatch each group is
    pruned alone to name the ones at fault. A group whose pruning alone makes
    the forward fail is skipped with the error (it is only valid together with
    a blocked group: timm's ``AttentionPoolLatent`` reshapes its attention
    output to the width of its input, so its head dims can only be pruned with
    the embedding dim). ``unfuse`` turns timm's fused attention off on both
    models (see :func:`unfuse_attention`); ``include_blocked`` prunes blocked
    groups too, to show that a blocker really breaks equivalence; ``only``
    restricts the check to the groups it accepts.
    """
    base = copy.deepcopy(model).eval()
    if unfuse:
        unfuse_attention(base)
    trace_inputs = spec.make_inputs(1, seed)
    batch = spec.make_inputs(2, seed) if inputs is None else inputs
    excluded: dict[tuple[str, str], str] = {}

    def prune_where(select: Callable[[GroupTrace], bool]) -> RecordedPrune:
        return record_prune(spec, lambda: copy.deepcopy(base), trace_inputs, config, seed, select=select)

    def error_of(recorded: RecordedPrune) -> float:
        return _soft_error(recorded.model, soft_prune(base, recorded.groups), batch)

    def wanted(group: GroupTrace) -> bool:
        chosen = only is None or only(group)
        return chosen and (include_blocked or not group.blockers) and group.key not in excluded

    recorded = prune_where(wanted)
    try:
        error = error_of(recorded) if recorded.groups else 0.0
    except Exception:  # a group that is only valid together with a blocked one: find it, leave it out
        for key in dict.fromkeys(g.key for g in recorded.groups):
            alone = prune_where(lambda group, key=key: group.key == key)  # type: ignore[misc]
            try:
                _outputs(alone.model, batch)
            except Exception as exc:
                excluded[key] = f"pruned alone, the forward fails: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        recorded = prune_where(wanted)
        error = error_of(recorded) if recorded.groups else 0.0
    skipped: dict[str, list[str]] = {
        g.label: g.blockers or [excluded.get(g.key, "not selected")] for g in recorded.skipped
    }
    checked = [g.label for g in recorded.groups]
    if error <= tolerance:
        return EquivalenceReport([], checked, skipped, error)
    problems = []
    for key in dict.fromkeys(g.key for g in recorded.groups):
        alone = prune_where(lambda group, key=key: group.key == key)  # type: ignore[misc]
        if not alone.groups:
            continue
        single = error_of(alone)
        if single > tolerance:
            first = alone.groups[0]
            why = f" ({'; '.join(first.blockers)})" if first.blockers else ""
            problems.append(
                f"group {first.root} ({first.direction}-channels): pruned output differs from the soft-pruned "
                f"original by {single:.3g} relative (tolerance {tolerance:g}){why}"
            )
    if not problems:
        problems.append(
            f"the groups pruned together differ from the soft-pruned original by {error:.3g} relative "
            f"(tolerance {tolerance:g}), though each group alone matches: {', '.join(checked[:8])}"
        )
    return EquivalenceReport(problems, checked, skipped, error)


def format_problems(header: str, problems: Sequence[str], limit: int = 20) -> str:
    """A failure message: the header (a reproducing command), then one problem a line."""
    shown = "\n".join(f"  - {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{header}\n{len(problems)} problem(s):\n{shown}{more}"

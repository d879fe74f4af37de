"""Functional equivalence: the pruned model computes what the soft-pruned original computes.

Soft pruning sets the removed slices of every parameter of each group to zero
instead of removing them; wherever a channel only ever meets per-channel
operations the two agree up to float rounding (the limits are in
:mod:`pytest_tprune.checks.properties`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_tprune.checks.properties.perturb import unfuse_attention
from pytest_tprune.checks.properties.recorder import GroupTrace, MemberTrace, RecordedPrune, record_prune
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.measure import eval_output
from pytest_tprune.engine.models import ModelSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.outcome import Baseline

EQUIVALENCE_TOLERANCE = 1e-9
"""Functional equivalence is checked in float64: ``max|pruned - soft| <= tol * (1 + max|soft|)``.

The pruned and the soft-pruned model compute the same sums except for the
zero terms, so they differ only by summation order: about 1e-15 relative per
operation in float64. 1e-9 leaves six orders of margin for that and is still
far below any real error (a wrong channel moves the output by 1e-3 or more).
"""


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


@dataclass
class EquivalenceReport:
    """The outcome of the functional-equivalence check, with its coverage."""

    problems: list[str]
    checked: list[str]  # labels of the groups pruned and compared
    skipped: dict[str, list[str]]  # label -> why soft pruning is not equivalent there
    error: float  # max |pruned - soft| / (1 + max |soft|) of the combined comparison
    recorded: RecordedPrune | None = None  # the prune of every checkable group together, for further checks

    @property
    def ok(self) -> bool:
        return not self.problems


@contextmanager
def _in_float64(model: nn.Module, restore: bool = True) -> Iterator[None]:
    """``model``'s floating tensors in float64 for the duration, then each back in its own dtype.

    Exact both ways (float64 holds every float32, float16 and bfloat16 value), and
    cheaper than a deep copy of a large model. Besides parameters and buffers
    this covers floating tensors a module keeps as plain attributes (timm
    1.0.20's ConViT caches ``rel_indices`` that way), which ``Module.double()``
    misses: they are restored as the very objects they were. ``restore=False``
    leaves a throw-away copy in float64 (converting it back would cost as much
    as converting it).
    """
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    plain = _plain_float_attributes(model)
    for t in tensors:
        t.data = t.data.double()
    for module, name, value in plain:
        setattr(module, name, value.double())
    try:
        yield
    finally:
        if restore:
            for t, dtype in zip(tensors, dtypes, strict=True):
                t.data = t.data.to(dtype)
            for module, name, value in plain:
                setattr(module, name, value)


@contextmanager
def _default_float64() -> Iterator[None]:
    """torch's default dtype float64 for the duration: tensors a forward creates (timm 1.0.20's ConViT
    rebuilds ``rel_indices`` with ``torch.zeros`` when the token count changes) match the converted weights."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _plain_float_attributes(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Floating tensors held as plain module attributes (neither parameter nor buffer), with their owners."""
    import torch

    return [
        (module, name, value)
        for module in model.modules()
        for name, value in vars(module).items()
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) and value.is_floating_point()
    ]


@contextmanager
def _unfused(model: nn.Module, unfuse: bool) -> Iterator[None]:
    """``model`` with timm's attention on its manual path for the duration (when ``unfuse``), then as it was."""
    switched = unfuse_attention(model) if unfuse else []
    try:
        yield
    finally:
        for name in switched:
            setattr(model.get_submodule(name), "fused_attn", True)  # noqa: B010 - see unfuse_attention


def _soft_error(hard: nn.Module, soft: nn.Module, inputs: torch.Tensor) -> float:
    """``max|hard - soft| / (1 + max|soft|)`` in float64; infinite when shapes differ or values are not finite."""
    import torch

    with _default_float64(), _in_float64(hard):  # converted in place and back (exact): checked further
        a = eval_output(hard, inputs.double())
    with _default_float64(), _in_float64(soft, restore=False):  # soft_prune's own copy, thrown away after
        b = eval_output(soft, inputs.double())
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
    baseline: Baseline | None = None,
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
    models before they are compared (see :func:`unfuse_attention`), after the
    prune: the trace is of the model as given, so the groups checked are the
    ones the case's own prune has, and a model the case has traced is traced
    again at the cost of a cached walk (:mod:`pytest_tprune.engine.tp_internals.walk`);
    ``include_blocked`` prunes blocked
    groups too, to show that a blocker really breaks equivalence; ``only``
    restricts the check to the groups it accepts; ``baseline`` is the
    measurement of ``model`` from an earlier call (``report.recorded.baseline``),
    so a model checked under several configs is measured once.
    """
    base = model.eval()  # every prune below and the soft copy are deep copies: ``model`` is not modified
    batch = spec.make_inputs(2, seed) if inputs is None else inputs
    excluded: dict[tuple[str, str], str] = {}
    measured: list[Baseline | None] = [baseline]  # the unpruned model is measured once, for every prune below

    def prune_where(select: Callable[[GroupTrace], bool]) -> RecordedPrune:
        recorded = record_prune(
            spec,
            lambda: copy.deepcopy(base),
            config,
            seed,
            select=select,
            baseline=measured[0],
            compared_unfused=unfuse,
        )
        measured[0] = recorded.baseline
        return recorded

    def error_of(recorded: RecordedPrune) -> float:
        soft = soft_prune(base, recorded.groups)
        with _unfused(recorded.model, unfuse), _unfused(soft, unfuse):
            return _soft_error(recorded.model, soft, batch)

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
                with _unfused(alone.model, unfuse):
                    eval_output(alone.model, batch)
            except Exception as exc:
                excluded[key] = f"pruned alone, the forward fails: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        recorded = prune_where(wanted)
        error = error_of(recorded) if recorded.groups else 0.0
    skipped: dict[str, list[str]] = {
        g.label: g.blockers or [excluded.get(g.key, "not selected")] for g in recorded.skipped
    }
    checked = [g.label for g in recorded.groups]
    if error <= tolerance:
        return EquivalenceReport([], checked, skipped, error, recorded)
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
    return EquivalenceReport(problems, checked, skipped, error, recorded)

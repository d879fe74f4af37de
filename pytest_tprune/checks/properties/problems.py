"""The properties every correct prune satisfies, each a function returning the problems it finds."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_tprune.checks.expectations import predicted_kept
from pytest_tprune.checks.properties.recorder import DETERMINISTIC_IMPORTANCES, GroupTrace, RecordedPrune
from pytest_tprune.engine.measure import eval_output, output_tensor, unreached_parameters
from pytest_tprune.engine.outcome import tensor_shapes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.outcome import PruneOutcome

TIE_TOLERANCE = 1e-6
"""Relative slack of the criterion check: equal scores may be ranked either way."""


def same_model_problems(
    first: nn.Module, second: nn.Module, inputs: torch.Tensor, what: str, first_output: torch.Tensor | None = None
) -> list[str]:
    """Shapes, tensor values and outputs of two models must be bit-identical; ``what`` names the pair.

    ``first_output`` is ``first``'s eval output on ``inputs`` when the caller has it (one forward fewer)."""
    import torch

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
    out_a = eval_output(first, inputs) if first_output is None else first_output
    out_b = eval_output(second, inputs)
    if out_a.shape != out_b.shape:
        problems.append(f"{what}: output shapes {list(out_a.shape)} vs {list(out_b.shape)}")
    elif not torch.equal(out_a, out_b):
        problems.append(f"{what}: outputs differ by up to {float((out_a - out_b).abs().max()):.3g}")
    return problems


def forward_problems(original: nn.Module, pruned: nn.Module, inputs: torch.Tensor) -> list[str]:
    """The pruned model runs: same output shape as the unpruned one, finite values, and a
    backward pass reaches every parameter the unpruned model's backward reached."""
    import torch

    problems = []
    expected = list(eval_output(original, inputs).shape)
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
        from pytest_tprune.engine.measure import forward_with_flops, param_count

        _, macs = forward_with_flops(model.eval(), inputs)
        return cls(ratio, param_count(model), macs, tensor_shapes(model))

    @classmethod
    def from_outcome(cls, outcome: PruneOutcome) -> SizeFigures:
        """The engine's figures (its FlopCounterMode MACs) of a :func:`pytest_tprune.engine.pruning.prune` outcome."""
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
    (:func:`pytest_tprune.engine.pruning.tensor_shapes`). Tensors of the modules or
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
    channel). In uniform mode the kept count equals :func:`~pytest_tprune.checks.expectations.predicted_kept` of
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


def format_problems(header: str, problems: Sequence[str], limit: int = 20) -> str:
    """A failure message: the header (a reproducing command), then one problem a line."""
    shown = "\n".join(f"  - {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{header}\n{len(problems)} problem(s):\n{shown}{more}"

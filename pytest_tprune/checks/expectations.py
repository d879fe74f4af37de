"""What a correct prune must satisfy, as pure functions over a PruneOutcome.

The shape rule and the reduction band are derived from torch-pruning's uniform
(local) algorithm, stated here once:

* A group of ``C`` channels with ``G`` channel groups (attention heads, grouped
  convolutions) keeps ``G * int(C/G * (1 - r))`` channels: each group is
  shrunk alike. With ``round_to = k`` the kept count ``int(C * (1 - r))`` of
  an ungrouped layer is rounded down to a multiple of ``k``; a grouped layer
  rounds its per-group removal against the whole width (see
  :func:`predicted_kept`).
* Every tensor that changed keeps, along each pruned dimension, a fraction
  ``q`` of it with ``q_min <= q <= 1 - r``, where ``q_min`` is the smallest
  predicted kept fraction over all groups. A tensor pruned along ``d``
  dimensions therefore keeps between ``q_min**d`` and ``(1 - r)`` of its
  elements. Weights of linear and convolution layers are pruned along at
  most two dimensions, so **the kept fraction of the pruned parameters lies in
  [q_min^2, 1 - r]**; tensors that did not change (ignored layers and what is
  coupled to them) are excluded from both sides. With ``q_min = 1 - r`` (no
  rounding loss) this is the familiar [(1 - r)^2, 1 - r].
* MACs follow the same per-operation argument, so their kept fraction lies in
  [q_min^2, 1) and strictly below 1 when anything was pruned.

Global mode ranks channels across layers, so only strict decrease is implied;
a model can declare its own band (with a reason) on its :class:`ModelSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_tprune.engine.pruning import GroupRecord, PruneOutcome


def predicted_kept(channels: int, channel_groups: int, ratio: float, round_to: int | None) -> int:
    """Channels a group keeps in uniform mode (torch-pruning 1.6's arithmetic).

    Without channel groups, ``int(C * (1 - r))`` rounded down to a multiple of
    ``round_to``. With ``G > 1`` channel groups (attention heads, GroupNorm
    groups) each group loses ``n = C/G - int(C/G * (1 - r))`` channels, and
    ``round_to`` is applied to ``n`` against the *whole* width ``C``
    (``_round_to(n, C, k)``): each group loses ``n + (C - n) % k``, and a group
    that would lose all of its channels is left whole.
    """
    groups = channel_groups if channel_groups > 1 and channels % channel_groups == 0 else 1
    per_group = channels // groups
    if groups == 1:
        kept = int(per_group * (1 - ratio))
        return kept - kept % round_to if round_to else kept
    removed = per_group - int(per_group * (1 - ratio))
    if round_to and removed > 0:
        removed += (channels - removed) % round_to
    return channels if removed >= per_group else groups * (per_group - removed)


@dataclass
class ShapeViolation:
    group: str
    detail: str


def shape_violations(outcome: PruneOutcome) -> list[ShapeViolation]:
    """Groups whose removed count is not what the uniform rule predicts, and
    ignored layers whose output size changed."""
    config = outcome.prune_config
    found = []
    if not config.global_pruning and config.iterative_steps == 1:
        for record in outcome.groups:
            kept = predicted_kept(record.channels, record.channel_groups, config.ratio, config.round_to)
            expected = record.channels - kept
            if record.removed != expected:
                found.append(
                    ShapeViolation(
                        record.root,
                        f"{record.direction}-channels {record.channels} (groups={record.channel_groups}): removed "
                        f"{record.removed}, the rule predicts {expected} (keep {kept})",
                    )
                )
    for name in outcome.ignored:
        before, after = outcome.shapes_before.get(f"{name}.weight"), outcome.shapes_after.get(f"{name}.weight")
        if before and after and before[0] != after[0]:
            found.append(ShapeViolation(name, f"ignored layer changed its output size {before[0]} -> {after[0]}"))
    return found


def min_kept_fraction(groups: list[GroupRecord], ratio: float, round_to: int | None) -> float:
    fractions = [
        predicted_kept(g.channels, g.channel_groups, ratio, round_to) / g.channels for g in groups if g.channels
    ]
    return min(fractions, default=1 - ratio)


@dataclass
class Band:
    low: float
    high: float
    what: str
    reason: str

    def contains(self, value: float) -> bool:
        return self.low - 1e-9 <= value <= self.high + 1e-9


def pruned_param_fraction(outcome: PruneOutcome) -> float | None:
    """Kept fraction of the parameters whose tensors changed (None if none did)."""
    before = after = 0
    for name, shape in outcome.shapes_before.items():
        new = outcome.shapes_after.get(name)
        if new is None or new == shape or not name_is_parameter(outcome, name):
            continue
        before += math.prod(shape)
        after += math.prod(new)
    return after / before if before else None


def name_is_parameter(outcome: PruneOutcome, name: str) -> bool:
    """Buffers are in the shape maps too; parameters are what params count."""
    return not name.endswith(("running_mean", "running_var"))


def param_band(outcome: PruneOutcome, declared: tuple[float, float] | None, reason: str) -> Band | None:
    config = outcome.prune_config
    if declared is not None:
        return Band(declared[0], declared[1], "params kept (all)", reason or "declared by the model spec")
    if config.global_pruning or config.ratio == 0:
        return None
    q_min = min_kept_fraction(outcome.groups, config.ratio, config.round_to)
    return Band(q_min**2, 1 - config.ratio, "params kept (pruned tensors)", f"uniform rule, q_min={q_min:.4f}")


def mac_band(outcome: PruneOutcome) -> Band | None:
    config = outcome.prune_config
    if config.global_pruning or config.ratio == 0:
        return None
    q_min = min_kept_fraction(outcome.groups, config.ratio, config.round_to)
    return Band(q_min**2, 1.0, "MACs kept", f"uniform rule, q_min={q_min:.4f}")


def fraction(after: int, before: int) -> float:
    return after / before if before else 1.0

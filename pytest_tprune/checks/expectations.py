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

Head pruning (``prune_num_heads`` with head ratio ``h``) removes whole heads
*on top of* the head dimensions the ratio removes: torch-pruning prunes the
union of the two index sets, and removes heads only in a group that loses
head dimensions (ratio 0 removes no head). An attention group of ``H`` heads
of ``D`` channels keeps ``(H - ceil(h * H)) * d`` channels, ``d`` being the
per-head width the grouped rule keeps; on a fused ``qkv`` that is
``3 * kept_heads * d`` outputs, so ``head_dim`` is ``d``, not ``D``: ratio 0.5
with head ratio 0.5 on 12 heads of 64 keeps 6 heads of 32. The rule is not
stated for grouped-query attention (query and key/value head counts differ):
torch-pruning then prunes the key/value projections differently, and the
shape check fails such a group saying so rather than passing it unchecked.
Kept fractions below ``1 - r`` are what ``q_min`` is for, so the band holds.
Like the rest of the shape rule, the head rule is stated for one step only:
over ``N`` steps torch-pruning removes ``ceil(h * k/N * heads_now)`` heads at
step ``k``, of the heads *left*, so the removals compound (head ratio 0.5 in
two steps takes 8 of 12 heads, not 6) and no per-group count is asserted.

``max_pruning_ratio`` (``m``) caps nothing within a step in torch-pruning
1.6: it only stops ranking a layer at a *later* step once it is below
``1 - m`` of its initial width. A single-step prune therefore follows the
uniform rule at ``r`` whatever ``m`` is, and an iterative one keeps at most
``max(1 - r, 1 - m)`` per dimension, which is the band's upper end.

Global mode ranks channels across layers, so only strict decrease is implied;
a model can declare its own band (with a reason) on its :class:`ModelSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_tprune.engine.config import PruneConfig
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


def predicted_kept_heads(channels: int, heads: int, ratio: float, head_ratio: float, round_to: int | None) -> int:
    """Channels an attention group of ``heads`` heads keeps with head pruning (local, torch-pruning 1.6).

    The per-head width ``d`` the grouped rule keeps (:func:`predicted_kept`
    with the heads as channel groups), times the heads left after removing
    ``ceil(head_ratio * heads)``, the same float expression torch-pruning
    evaluates. No head goes where no head dimension does (torch-pruning
    removes heads inside its width step), and a group that would lose every
    head is refused whole (``check_pruning_group``), so it keeps everything.
    """
    kept = predicted_kept(channels, heads, ratio, round_to)
    if kept == channels or heads <= 0 or channels % heads:
        return kept
    removed_heads = math.ceil(head_ratio * heads)
    if removed_heads >= heads:
        return channels
    return (heads - removed_heads) * (kept // heads)


def head_rule_unstated(record: GroupRecord, config: PruneConfig) -> str | None:
    """Why the head rule cannot be stated for ``record``, or None when it can (or no head is pruned)."""
    if not config.prune_num_heads or record.heads <= 0:
        return None
    if record.kv_heads != record.heads:
        return (
            f"the shape rule is not stated for head pruning of grouped-query attention ({record.heads} query heads, "
            f"{record.kv_heads} key/value heads): torch-pruning prunes its key/value projections apart"
        )
    return None


def group_kept(record: GroupRecord, config: PruneConfig) -> int:
    """Channels the rule says ``record``'s group keeps under ``config``, head pruning included."""
    if config.prune_num_heads and record.heads > 0 and head_rule_unstated(record, config) is None:
        heads, head_ratio = record.heads, config.head_pruning_ratio
        return predicted_kept_heads(record.channels, heads, config.ratio, head_ratio, config.round_to)
    return predicted_kept(record.channels, record.channel_groups, config.ratio, config.round_to)


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
            unstated = head_rule_unstated(record, config)
            if unstated is not None:
                found.append(ShapeViolation(record.root, f"{unstated}; removed {record.removed} of {record.channels}"))
                continue
            kept = group_kept(record, config)
            expected = record.channels - kept
            if record.removed != expected:
                found.append(ShapeViolation(record.root, _rule_detail(record, config, expected, kept)))
    for name in outcome.ignored:
        before, after = outcome.shapes_before.get(f"{name}.weight"), outcome.shapes_after.get(f"{name}.weight")
        if before and after and before[0] != after[0]:
            found.append(ShapeViolation(name, f"ignored layer changed its output size {before[0]} -> {after[0]}"))
    return found


def _rule_detail(record: GroupRecord, config: PruneConfig, expected: int, kept: int) -> str:
    """How a group broke the rule; an attention group under head pruning names its heads."""
    heads = ""
    if config.prune_num_heads and record.heads > 0:
        left = record.heads - math.ceil(config.head_pruning_ratio * record.heads)
        heads = f", heads {record.heads} -> {record.heads - record.heads_removed}, the rule keeps {left}"
    return (
        f"{record.direction}-channels {record.channels} (groups={record.channel_groups}{heads}): removed "
        f"{record.removed}, the rule predicts {expected} (keep {kept})"
    )


def min_kept_fraction(groups: list[GroupRecord], config: PruneConfig) -> float:
    """``q_min``: the smallest kept fraction the rule predicts over ``groups`` (heads included)."""
    fractions = [group_kept(g, config) / g.channels for g in groups if g.channels]
    return min(fractions, default=1 - config.ratio)


def max_kept_fraction(config: PruneConfig) -> float:
    """The band's upper end per pruned dimension: ``1 - r``, or ``1 - m`` when the cap stops later steps."""
    if config.iterative_steps > 1:
        return 1 - min(config.ratio, config.max_pruning_ratio)
    return 1 - config.ratio


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
    q_min = min_kept_fraction(outcome.groups, config)
    return Band(q_min**2, max_kept_fraction(config), "params kept (pruned tensors)", f"uniform rule, q_min={q_min:.4f}")


def mac_band(outcome: PruneOutcome) -> Band | None:
    config = outcome.prune_config
    if config.global_pruning or config.ratio == 0:
        return None
    q_min = min_kept_fraction(outcome.groups, config)
    return Band(q_min**2, 1.0, "MACs kept", f"uniform rule, q_min={q_min:.4f}")


def fraction(after: int, before: int) -> float:
    return after / before if before else 1.0

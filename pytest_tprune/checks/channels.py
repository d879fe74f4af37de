"""The right channels on real models: the property suite's equivalence, criterion and save/load checks, per case.

The shape rule and goldens see widths only: a pruner that keeps the wrong
input columns of a consumer, or another channel's BatchNorm statistics, gets
every width right. These checks compare tensors, so they run on a perturbed
copy of the pristine model (:func:`~pytest_tprune.checks.properties.perturb`:
on a fresh timm init BatchNorm statistics are 0 and 1 everywhere and a wrong
channel is invisible), made once per model and shared by its configs. They
reuse the property suite's implementation, not a second one.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from pytest_tprune.checks.properties.recorder import GroupTrace, RecordedPrune
    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.models import ModelSpec
    from pytest_tprune.engine.resources import Pristine

_MEMBER_PREFIX = re.compile(r"^[\w.]+(?: \(parameter\))?: ")


@dataclass
class ChannelReport:
    """What the per-case channel checks found and covered."""

    problems: list[str]
    checked: int  # groups pruned and compared with their soft-pruned original
    unchecked: Counter[str] = field(default_factory=Counter)  # why soft pruning cannot be compared, by reason
    error: float = 0.0  # worst relative difference of the groups pruned together
    tolerance: float = 0.0
    save_load: dict[str, str] = field(default_factory=dict)  # way -> "ok" / "unsupported by the model: ..."

    def golden(self) -> dict[str, Any]:
        """What a golden pins: coverage and save/load status, all structural. The worst error is float
        rounding, which differs between CPU and CUDA kernels, so only reports carry it."""
        return {
            "groups_checked": self.checked,
            "groups_unchecked": sum(self.unchecked.values()),
            "unchecked_reasons": dict(sorted(self.unchecked.items())),
            "save_load": dict(self.save_load),
        }

    def summary(self) -> dict[str, Any]:
        """What the report carries: the golden's block, the worst error and its tolerance."""
        return {**self.golden(), "max_error": float(f"{self.error:.3g}"), "tolerance": self.tolerance}


def perturbed_copy(pristine: Pristine, seed: int) -> nn.Module:
    """The model's perturbed copy, made once per model and worker."""
    from pytest_tprune.checks.properties import perturb

    if "perturbed" not in pristine.derived:
        pristine.derived["perturbed"] = perturb(copy.deepcopy(pristine.model), seed)
    model: nn.Module = pristine.derived["perturbed"]
    return model


HEAD_RANKING_UNCHECKED = (
    "criterion: which heads were removed is not checked (the recorded scores are per position within a head; "
    "torch-pruning ranks heads by their mean score)"
)
"""Why the criterion check cannot judge the head choice of a group that lost whole heads."""


def _without_dead_heads(recorded: RecordedPrune) -> tuple[RecordedPrune, list[str], list[str]]:
    """``recorded`` as the criterion check can judge it, the head problems, and what stays unchecked.

    A group that lost whole heads (``prune_num_heads``) breaks the criterion
    check's premise that every channel group loses the same positions. Its
    surviving heads must still lose the same positions, and those positions
    must be the lowest-scoring ones: the group is handed on as if only those
    positions were removed from every head. The head choice itself cannot be
    judged from per-position scores, so it is counted as unchecked.
    """
    import dataclasses

    groups, problems, notes = [], [], []
    for group in recorded.groups:
        survivors = _surviving_heads_positions(group)
        if survivors is None:
            groups.append(group)
            continue
        notes.append(HEAD_RANKING_UNCHECKED)
        if len(set(survivors)) > 1:
            problems.append(
                f"{group.label}: the heads it kept lost different positions {sorted(map(sorted, survivors))[:4]}"
            )
            continue
        size, lost = group.channels // group.channel_groups, sorted(next(iter(survivors), frozenset()))
        removed = [p + g * size for g in range(group.channel_groups) for p in lost]
        groups.append(dataclasses.replace(group, removed=removed))
    return dataclasses.replace(recorded, groups=groups), problems, notes


def _surviving_heads_positions(group: GroupTrace) -> list[frozenset[int]] | None:
    """Positions lost by each head the group kept, when it removed at least one whole head; else None."""
    heads = group.channel_groups
    if heads <= 1 or group.channels % heads:
        return None
    size = group.channels // heads
    lost: dict[int, set[int]] = {head: set() for head in range(heads)}
    for index in group.removed:
        lost[index // size].add(index % size)
    if not any(len(positions) == size for positions in lost.values()):
        return None
    return [frozenset(positions) for positions in lost.values() if len(positions) < size]


def right_channels(spec: ModelSpec, pristine: Pristine, config: PruneConfig, seed: int) -> ChannelReport:
    """Equivalence on every checkable group, the criterion, and the save/load round trip, on a perturbed copy."""
    from pytest_tprune.checks import properties as props

    base = perturbed_copy(pristine, seed)
    batch = spec.make_inputs(1, seed)  # eval mode: a second sample would only double the float64 forwards
    # The unpruned measurement is of the architecture (modules, shapes, counts), the same for the perturbed copy:
    # the case's own spares measuring the copy again (the engine re-measures when its key is not the CPU's).
    measured = pristine.derived.get("perturbed_baseline") or next(iter(pristine.baselines.values()), None)
    report = props.equivalence_report(spec, base, config, seed, inputs=batch, baseline=measured)
    if report.recorded is not None:
        pristine.derived["perturbed_baseline"] = report.recorded.baseline
    problems = [f"equivalence: {p}" for p in report.problems]
    recorded = report.recorded
    save_load: dict[str, str] = {}
    head_notes: list[str] = []
    if recorded is not None and recorded.groups:
        ranked, head_problems, head_notes = (
            _without_dead_heads(recorded) if config.prune_num_heads else (recorded, [], [])
        )
        own_ranking = spec.prune_function is not None or spec.pruner_arguments is not None
        criterion = [] if own_ranking else props.criterion_problems(ranked)
        if own_ranking:  # the config's importance names the seed recipe's criterion, not the project's
            head_notes.append("criterion: the model's own recipe ranks channels by its own importance")
        problems += [f"criterion: {p}" for p in head_problems + criterion]
        unsupported = pristine.derived.setdefault("save_load_unsupported", {})
        trips = props.save_load_round_trips(recorded.model, base, batch, unsupported=unsupported)
        problems += [f"save/load: {p}" for p in trips.problems]
        save_load = trips.paths
    unchecked = Counter(_MEMBER_PREFIX.sub("", reasons[0]) for reasons in report.skipped.values() if reasons)
    unchecked.update(head_notes)
    return ChannelReport(problems, len(report.checked), unchecked, report.error, props.EQUIVALENCE_TOLERANCE, save_load)

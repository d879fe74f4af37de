"""A project's own prune function, run where the engine's recipe would run.

A downstream project that ships its own recipe (its importance, its head
handling, its channel groups, a pruner of its own) wants the suite to prove
*that* recipe, not ours. :class:`~pytest_tprune.engine.models.ModelSpec`'s
``prune_function`` is called with the pristine model (on the case's device),
the example input and the case's :class:`~pytest_tprune.engine.config.PruneConfig`,
and returns the pruned model (or ``None`` when it pruned in place). While it
runs, every ``MetaPruner`` it makes is watched
(:mod:`pytest_tprune.engine.tp_internals.watch`): each group offered gets a
fate in the ledger and each group pruned a record, exactly as in the engine's
own prune loop, so the group accounting, the shape rule, goldens and the
equivalence check all apply to it. Nothing is retried or left whole: a
forward the function breaks fails the case, naming the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec, origin, user_frame
from pytest_tprune.engine.outcome import GroupRecord
from pytest_tprune.engine.records import raised_at, record_group
from pytest_tprune.engine.tp_internals.graph import (
    current_step,
    group_root,
    head_layers,
    removed_count,
    restore_head_counts,
)
from pytest_tprune.engine.tp_internals.ledger import (
    NOT_PRUNED,
    GroupLedger,
    OfferedGroup,
    close_step,
    install_ledger,
    note_yielded,
)
from pytest_tprune.engine.tp_internals.watch import WATCHED, watching_pruners
from pytest_tprune.errors import PruneStepError

if TYPE_CHECKING:
    import torch
    from torch import nn

PruneFunction = Callable[["nn.Module", "torch.Tensor", PruneConfig], "nn.Module | None"]
"""``(model, example_inputs, config) -> pruned model``: a project's own recipe (``None``: pruned in place)."""

GroupHook = Callable[[Any, Any, int], bool]


@dataclass
class _PrunerWatch:
    """One watched pruner: its ledger, and a record of each group it prunes (as the engine's loop makes)."""

    pruner: Any
    records: list[GroupRecord]
    hook: GroupHook | None
    heads: dict[Any, int] = field(default_factory=dict)
    """Head counts of the attention projections as the pruned groups left them."""
    _layers: list[Any] = field(default_factory=list)
    _width: int = 0
    _entry: OfferedGroup | None = None

    def __post_init__(self) -> None:
        self.ledger = self.pruner.tprune_ledger = install_ledger(self.pruner)
        self.heads_before = {m: int(n) for m, n in (getattr(self.pruner, "num_heads", None) or {}).items()}
        self.heads.update(self.heads_before)

    def offer(self, group: Any) -> bool:
        step = current_step(self.pruner)
        layers = head_layers(self.pruner, group)
        if self.hook is not None and not self.hook(self.pruner, group, step):
            restore_head_counts(self.pruner, layers, self.heads)
            return False
        self._entry = self.ledger.entry(self.pruner, group)
        note_yielded(self.pruner, group)
        self.records.append(record_group(self.pruner, group, step, layers, self.heads))
        self._layers, self._width = layers, group_root(self.pruner.DG, group)[2]
        return True

    def done(self, group: Any) -> None:
        """A group the function was handed but did not prune (its root kept its width) is not a pruned one."""
        if removed_count(group) and group_root(self.pruner.DG, group)[2] == self._width:
            if self._entry is not None:
                self._entry.fate, self._entry.removed = NOT_PRUNED, 0
            self.records.pop()
            restore_head_counts(self.pruner, self._layers, self.heads)
            return
        self.heads.update({m: int(self.pruner.num_heads[m]) for m in self._layers})

    def end_step(self) -> None:
        close_step(self.pruner)


@dataclass
class CustomRun:
    """What a project's prune function did, as the engine's prune loop would have recorded it."""

    model: nn.Module
    groups: list[GroupRecord]
    ledger: GroupLedger
    heads_left: dict[Any, int]
    ignored: list[str]
    heads: dict[str, int]
    recipe: dict[str, Any]


def run_prune_function(
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    model: nn.Module,
    inputs: torch.Tensor,
    observe: Callable[[nn.Module, Any], GroupHook] | None = None,
) -> CustomRun:
    """Call ``spec.prune_function`` on ``model`` with every pruner it makes watched; seeded like the engine."""
    import random

    import torch

    assert spec.prune_function is not None
    names = {m: n for n, m in model.named_modules()}
    records: list[GroupRecord] = []
    watches: list[_PrunerWatch] = []

    def watch_for(pruner: Any) -> _PrunerWatch:
        hook = observe(getattr(pruner, "model", model), pruner) if observe is not None else None
        watches.append(_PrunerWatch(pruner, records, hook))
        return watches[-1]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            with watching_pruners(watch_for) as watched:
                result = spec.prune_function(model, inputs, config)
        except PruneStepError:
            raise
        except Exception as exc:
            raise _function_failed(spec, exc) from exc
    pruned = _returned_model(spec, model, result)
    pruners = [w.pruner for w in watches]
    return CustomRun(
        model=pruned.eval(),
        groups=records,
        ledger=_merged_ledger(watches),
        heads_left={m: n for w in watches for m, n in w.heads.items()} if config.prune_num_heads else {},
        ignored=_ignored_names(pruners, names),
        heads={names[m]: n for w in watches for m, n in w.heads_before.items() if m in names},
        recipe=_recipe(spec, watched, len(watches)),
    )


def _function_failed(spec: ModelSpec, exc: BaseException) -> PruneStepError:
    note = f"raised by the model's prune function {origin(spec.prune_function)}{user_frame(exc)}"
    return PruneStepError("prune", spec.name, exc, module=raised_at(exc), note=note)


def _returned_model(spec: ModelSpec, model: nn.Module, result: Any) -> nn.Module:
    from torch import nn

    if result is None:
        return model
    if isinstance(result, nn.Module):
        return result
    message = (
        f"the prune function {origin(spec.prune_function)} of model '{spec.name}' returned "
        f"{type(result).__name__}: return the pruned nn.Module (or None when it prunes the model in place)"
    )
    raise PruneStepError("prune", spec.name, TypeError(message))


def _merged_ledger(watches: list[_PrunerWatch]) -> GroupLedger:
    """One ledger over every pruner the function made, in the order it made them."""
    return GroupLedger(
        offered=[entry for w in watches for entry in w.ledger.offered],
        ignored=sum(w.ledger.ignored for w in watches),
    )


def _ignored_names(pruners: list[Any], names: dict[Any, str]) -> list[str]:
    layers = {m for p in pruners for m in getattr(p, "ignored_layers", [])}
    return sorted(names[m] for m in layers if m in names and any(True for _ in m.parameters(recurse=False)))


def _recipe(spec: ModelSpec, watched: bool, pruners: int) -> dict[str, Any]:
    """What the goldens record of a recipe that is not the engine's: the function, and whether it was seen."""
    recipe: dict[str, Any] = {"prune_function": origin(spec.prune_function), "pruners_watched": pruners}
    if not watched:
        recipe["unobserved"] = (
            f"the installed torch-pruning lacks {' or '.join(WATCHED)} as this suite knows them, so the groups "
            "the function pruned were not seen"
        )
    elif not pruners:
        recipe["unobserved"] = "the function made no torch_pruning MetaPruner, so no group could be accounted for"
    return recipe


def unobserved_groups(recipe: dict[str, Any]) -> str | None:
    """Why a prune function's groups went unseen (the ``groups`` check fails on it), or None."""
    reason = recipe.get("unobserved")
    return str(reason) if reason else None

"""What a prune records and where its models come from: a pruned group's record, where an error was raised,
the config that ran, the warnings, and the fresh pristine copies a prune and its retries start from.

Shared by the engine's own loop (:mod:`pytest_tprune.engine.pruning`), the watch over a project's prune
function (:mod:`pytest_tprune.engine.custom`) and the stock run, so the three record alike.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec, build_model
from pytest_tprune.engine.outcome import GroupRecord
from pytest_tprune.engine.tp_internals import channel_groups, group_root, member_modules, removed_count

if TYPE_CHECKING:
    from torch import nn

ModelSource = Callable[[], "nn.Module"]


def raised_at(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame, for errors without a module."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    path = last.filename.split("site-packages/")[-1]
    return f"{path}:{last.lineno} in {last.name}"


def record_group(pruner: Any, group: Any, step: int, layers: list[Any], heads: dict[Any, int]) -> GroupRecord:
    """What ``group`` removes; ``layers`` are its attention projections, ``heads`` their counts before it.

    With ``prune_num_heads`` torch-pruning lowers the group's head count (and
    its channel grouping) before it yields the group, so the record takes
    both from before: the grouping the group was ranked with, the heads it had.
    """
    graph = pruner.DG
    root, direction, channels = group_root(graph, group)
    before = [int(heads.get(m, pruner.num_heads[m])) for m in layers]
    count = max(before, default=0)
    removed_heads = count - max((int(pruner.num_heads[m]) for m in layers), default=0)
    return GroupRecord(
        root=root,
        direction=direction,
        channels=channels,
        channel_groups=max(channel_groups(pruner, group), count if removed_heads else 0),
        removed=removed_count(group),
        members=member_modules(graph, group),
        step=step,
        heads=count,
        kv_heads=min(before, default=0),
        heads_removed=removed_heads,
    )


def effective_config(config: PruneConfig, recipe: dict[str, Any]) -> PruneConfig:
    """``config`` with the config fields a spec's ``pruner_arguments`` overrode: what the rule must check."""
    import dataclasses

    overrides = recipe.get("pruner_arguments", {})
    fields = {k: overrides[k] for k in ("round_to", "isomorphic", "max_pruning_ratio") if k in overrides}
    return dataclasses.replace(config, **fields) if fields else config


def fresh_copies(spec: ModelSpec, seed: int, model: nn.Module | ModelSource | None) -> ModelSource:
    """Where fresh pristine copies come from: a rebuild, the caller's function, or a copy taken now."""
    from torch import nn

    if model is None:
        return lambda: build_model(spec, seed)
    if isinstance(model, nn.Module):
        snapshot = copy.deepcopy(model)
        return lambda: copy.deepcopy(snapshot)
    return model


def first_then_fresh(first: nn.Module, fresh: ModelSource) -> ModelSource:
    """``first`` on the first call, ``fresh()`` after: a prune's first try, then its retries.

    ``first`` is released once handed out, so a broken first try is not kept alive through the retries.
    """
    pending = [first]
    return lambda: pending.pop() if pending else fresh()


def unique_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    seen: dict[str, None] = {}
    for item in caught:
        text = str(item.message).strip().splitlines()[0][:300] if str(item.message).strip() else ""
        if text:
            seen.setdefault(f"{item.category.__name__}: {text}", None)
    return list(seen)

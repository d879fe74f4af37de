"""Reading torch-pruning's graph and pruner: member names, widths, roots, channel grouping, steps.

Part of :mod:`pytest_tprune.engine.tp_internals`: every private name read here
is one torch-pruning could move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def item_width(graph: Any, dep: Any) -> int | None:
    """Width of the dimension ``dep`` prunes on its target, when torch-pruning knows it."""
    target = dep.target.module
    try:
        width = graph.get_out_channels(target) if graph.is_out_channel_pruning_fn(dep.handler) else None
        if width is None and graph.is_in_channel_pruning_fn(dep.handler):
            width = graph.get_in_channels(target)
    except Exception:
        return None
    return int(width) if isinstance(width, int) else None


def name_of(graph: Any, target: Any) -> str:
    """A member's dotted name; unwrapped parameters by their parameter name.

    torch-pruning names unwrapped parameters ``UnwrappedParameter_N`` in an
    order that changes from run to run, so those names cannot go in a golden.
    """
    name = dotted_name(graph, target)
    if name is None:
        return type(target).__name__
    return f"{name} (parameter)" if target in getattr(graph, "_param_to_name", {}) else name


def dotted_name(graph: Any, target: Any) -> str | None:
    """The dotted name of a graph member: a module's, or an unwrapped parameter's (keys hash by identity)."""
    name = getattr(graph, "_param_to_name", {}).get(target) or graph._module2name.get(target)
    return None if name is None else str(name)


def member_names(graph: Any, group: Any) -> Iterable[str]:
    """Dotted names of the modules and unwrapped parameters a group touches."""
    for dep, _ in group:
        name = dotted_name(graph, dep.target.module)
        if name is not None:
            yield name


def group_root(graph: Any, group: Any) -> tuple[str, str, int]:
    """The group's root: its name, the pruned direction (``out``/``in``) and that dimension's width now."""
    dep = group[0].dep
    is_out = graph.is_out_channel_pruning_fn(dep.handler)
    width = graph.get_out_channels(dep.target.module) if is_out else graph.get_in_channels(dep.target.module)
    return name_of(graph, dep.target.module), "out" if is_out else "in", int(width or 0)


def channel_groups(pruner: Any, group: Any) -> int:
    """torch-pruning's channel grouping of ``group`` (attention heads, grouped convolutions); 1 when unknown."""
    get_groups = getattr(pruner, "_get_channel_groups", None)
    return int(get_groups(group)) if callable(get_groups) else 1


def head_layers(pruner: Any, group: Any) -> list[Any]:
    """The group's attention projections: members in the pruner's ``num_heads`` pruned along their outputs.

    torch-pruning's own test (``_is_atten_group``), read from its public
    ``num_heads`` dict so that a renamed private method does not hide them.
    """
    heads = getattr(pruner, "num_heads", None) or {}
    graph = pruner.DG
    layers = [dep.target.module for dep, _ in group if dep.target.module in heads]
    return [m for m in dict.fromkeys(layers) if _prunes_outputs_of(graph, group, m)]


def restore_head_counts(pruner: Any, layers: Iterable[Any], counts: dict[Any, int]) -> None:
    """Put back the head counts (and channel grouping) torch-pruning lowered for a group that was not pruned.

    torch-pruning updates ``num_heads`` and ``out_channel_groups`` before it
    yields an attention group; a group the caller then declines would leave
    the later steps ranking heads that are still there as removed.
    """
    groups = getattr(pruner, "out_channel_groups", None)
    for layer in layers:
        if layer in counts:
            pruner.num_heads[layer] = counts[layer]
            if isinstance(groups, dict) and layer in groups:
                groups[layer] = counts[layer]


def _prunes_outputs_of(graph: Any, group: Any, module: Any) -> bool:
    return any(dep.target.module is module and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group)


def member_modules(graph: Any, group: Any) -> list[str]:
    """Sorted dotted names of the modules a group's members belong to (``?`` for an unnamed one)."""
    names = graph._module2name
    return sorted({names.get(dep.target.module, "?") for dep, _ in group})


def removed_count(group: Any) -> int:
    """How many channels of its root the group removes."""
    return len(group[0].idxs)


def is_out_channels(graph: Any, dep: Any) -> bool:
    """Whether ``dep`` prunes its target's output channels (else its input channels)."""
    return bool(graph.is_out_channel_pruning_fn(dep.handler))


def member_name(graph: Any, target: Any) -> str:
    """A member's bare dotted name (an unwrapped parameter's own name), ``?`` when the graph has none.

    ``_module2name`` holds a display label for unwrapped parameters, not their name.
    """
    from torch import nn

    names = graph._param_to_name if isinstance(target, nn.Parameter) else graph._module2name
    name = names.get(target)
    return str(name) if name is not None else "?"


def removed_indices(group: Any) -> list[int]:
    """The root indices a group removes, sorted, in the root's current numbering."""
    return sorted(int(i) for i in group[0].idxs)


def root_key(graph: Any, group: Any) -> tuple[int, bool]:
    """Identifies a group by its root across ranking and yield: the root's identity and direction."""
    dep = group[0].dep
    return (id(dep.target.module), is_out_channels(graph, dep))


def pruning_dim(dep: Any) -> int:
    """The tensor dim torch-pruning prunes on an unwrapped parameter (-1 for modules)."""
    return int(getattr(dep.target, "pruning_dim", -1))


def current_step(pruner: Any) -> int:
    """The pruner's current iterative step (1 during the first ``step()``)."""
    return int(getattr(pruner, "current_step", 0))


def observe_ranking(pruner: Any, seen: Callable[[Any, Any, Any], None]) -> None:
    """Call ``seen(pruner, group, scores)`` each time the pruner ranks a group (its ``estimate_importance``)."""
    estimate = pruner.estimate_importance

    def observed(group: Any) -> Any:
        scores = estimate(group)
        seen(pruner, group, scores)
        return scores

    pruner.estimate_importance = observed


def observe_refusals(pruner: Any, refused: Callable[[Any, Any], None]) -> None:
    """Call ``refused(pruner, group)`` for each ranked group the graph refuses to prune (it would empty a member)."""
    graph = pruner.DG
    check = graph.check_pruning_group

    def observed(group: Any) -> bool:
        accepted = bool(check(group))
        if not accepted:
            refused(pruner, group)
        return accepted

    graph.check_pruning_group = observed


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__

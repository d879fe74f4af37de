"""The bounded group walk: torch-pruning's index propagation, charged step by step.

Part of :mod:`pytest_tprune.engine.tp_internals` (the probes that switch it on
or off are in :mod:`.guards`). On some graphs torch-pruning's walk from a root
through concat/split/reshape mappings never closes: the engine bounds it
(:func:`bound_traversal`, the root is then left whole with the reason), and the
stock verdict counts it (:func:`detect_cycles`, the walk then raises where the
engine would have stopped it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from pytest_tprune.engine.tp_internals.graph import one_line
from pytest_tprune.engine.tp_internals.guards import (
    BOUNDED,
    TRAVERSAL_FACTOR,
    TraversalCycle,
    UnmappableIndices,
    WalkParts,
    active,
    probed,
    root_group,
    tolerant_index_mappings,
)


class _CountingMappings(list[Any]):
    """A dependency's ``index_mapping`` list that charges each walk step to its graph.

    torch-pruning reads the list once per edge it follows and assigns its
    entries in place whenever it refreshes the mappings, so charging on reads
    bounds the walk without changing what it computes. A step costs the
    indices it maps, in units of the root's width, so a cycle that also grows
    its index lists runs out of budget as fast as it grows.
    """

    def __init__(self, items: list[Any], graph: Any, dep: Any) -> None:
        super().__init__(items)
        self._graph = graph
        self._dep = dep

    def __iter__(self) -> Any:
        graph = self._graph
        graph.tprune_walk_reached.append(self._dep)
        return (None if m is None else _charged(m, graph) for m in list.__iter__(self))


def _charged(mapping: Any, graph: Any) -> Any:
    def charge(idxs: Any) -> Any:
        graph.tprune_walk_steps += max(1.0, len(idxs) / graph.tprune_root_width)
        if graph.tprune_walk_steps > graph.tprune_walk_budget:
            raise TraversalCycle(
                f"index propagation passed {graph.tprune_walk_budget} steps without closing (a mapping cycle)"
            )
        return mapping(idxs)

    return charge


def bound_traversal(graph: Any) -> None:
    """Make ``graph.get_pruning_group`` give up, not loop, on a mapping cycle.

    The graph's own class is swapped for a subclass whose ``get_pruning_group``
    resets a step counter, and every edge's mapping list counts the steps. A
    cyclic group comes back as the root alone, marked, so the pruner leaves it
    whole; the graph of every other model behaves exactly as before. Where
    :func:`probe_group_walk` does not find what this needs, the graph is left
    as it is: torch-pruning walks it unbounded.
    """
    if active(BOUNDED) is None:
        return
    _charge_walks(graph)
    graph.tprune_cyclic = {}
    graph.__class__ = _bounded_graph_class(graph.__class__)


def graph_property(install: Callable[[Any], Any]) -> property:
    """A pruner's ``DG`` that runs ``install`` on the graph when the constructor assigns it.

    ``MetaPruner.__init__`` builds the graph and walks every group before it
    returns, so a guard or a counter must be on the graph from the assignment.
    """

    def get(self: Any) -> Any:
        return self._tprune_graph

    def set_(self: Any, graph: Any) -> None:
        install(graph)
        self._tprune_graph = graph

    return property(get, set_)


def detect_cycles(graph: Any) -> bool:
    """Make a walk that passes :func:`bound_traversal`'s budget raise :class:`TraversalCycle`; True if it can.

    For the stock verdict: the walk is torch-pruning's own, unguarded, and the
    step where the engine would leave the group whole is where stock
    torch-pruning is judged to hang (it walks on, for minutes or for ever), so
    the verdict is reached in a second and is the same on every machine.
    """
    if active(BOUNDED) is None:
        return False
    _charge_walks(graph)
    graph.__class__ = _counting_graph_class(graph.__class__)
    return True


def _charge_walks(graph: Any) -> None:
    """Every edge's mapping list charges the walk that reads it, against a budget sized by the graph's edges."""
    edges = [dep for node in graph.module2node.values() for dep in node.dependencies]
    for dep in edges:
        dep.index_mapping = _CountingMappings(list(dep.index_mapping), graph, dep)
    _start_walk(graph, 1)
    graph.tprune_walk_budget = TRAVERSAL_FACTOR * len(edges) + 64


def _start_walk(graph: Any, idxs: Any) -> None:
    """A new group walk from a root pruning ``idxs``: no step charged, nothing reached yet."""
    graph.tprune_walk_steps = 0.0
    graph.tprune_root_width = max(1, len(idxs) if hasattr(idxs, "__len__") else 1)
    graph.tprune_walk_reached = []


@cache
def _counting_graph_class(base: Any) -> type:
    class CountingGraph(base):
        tprune_walk_reached: list[Any]
        tprune_walk_steps: float
        tprune_root_width: int

        def get_pruning_group(self, module: Any, pruning_fn: Any, idxs: Any) -> Any:
            _start_walk(self, idxs)
            return super().get_pruning_group(module, pruning_fn, idxs)

    CountingGraph.__name__ = CountingGraph.__qualname__ = f"Counting{base.__name__}"
    return CountingGraph


@cache
def _bounded_graph_class(base: Any) -> type:
    class BoundedGraph(base):
        tprune_walk_reached: list[Any]
        tprune_cyclic: dict[Any, str]
        tprune_walk_steps: float
        tprune_root_width: int
        tprune_walk_budget: int

        def get_pruning_group(self, module: Any, pruning_fn: Any, idxs: Any) -> Any:
            """torch-pruning's group, or the marked root when the walk cycles.

            Every layer whose output channels a cyclic walk reached is coupled
            to the same cycle, so its own walk is not retried, and a walk that
            closes (the order of the walk decides whether it does) but touches
            such a layer is left whole with the cycle. The pruner's first
            enumeration of the groups (in its constructor) finds every cycle
            before anything is ranked.
            """
            if active(BOUNDED) is None:  # switched off after this graph was bounded (tests re-probe)
                return super().get_pruning_group(module, pruning_fn, idxs)
            known = self.tprune_cyclic.get(module) if self.is_out_channel_pruning_fn(pruning_fn) else None
            if known is not None:
                return _marked_root_group(self, module, pruning_fn, idxs, known)
            _start_walk(self, idxs)
            try:
                with tolerant_index_mappings():
                    group = super().get_pruning_group(module, pruning_fn, idxs)
            except (TraversalCycle, IndexError, ZeroDivisionError) as exc:
                explained = isinstance(exc, (TraversalCycle, UnmappableIndices))
                reason = str(exc) if explained else f"index mapping raised {one_line(exc)}"
                for dep in self.tprune_walk_reached:
                    if self.is_out_channel_pruning_fn(dep.handler):
                        self.tprune_cyclic.setdefault(dep.target.module, reason)
                return _marked_root_group(self, module, pruning_fn, idxs, reason)
            finally:
                self.tprune_walk_reached = []
            for dep, _ in group:
                cyclic = self.tprune_cyclic.get(dep.target.module)
                if cyclic is not None and self.is_out_channel_pruning_fn(dep.handler):
                    return _marked_root_group(self, module, pruning_fn, idxs, f"coupled to an abandoned walk: {cyclic}")
            return group

    BoundedGraph.__name__ = BoundedGraph.__qualname__ = f"Bounded{base.__name__}"
    return BoundedGraph


def _marked_root_group(graph: Any, module: Any, pruning_fn: Any, idxs: Any, reason: str) -> Any:
    """The root alone, carrying the reason its walk was abandoned: the pruner leaves it whole."""
    parts: WalkParts = probed().found[BOUNDED]  # reached only from a bounded graph, while its guard is active
    root = graph.module2node[module]
    dep = parts.dependency(pruning_fn, pruning_fn, source=root, target=root)
    group = root_group(parts, dep, [int(i) for i in idxs], graph)
    group.tprune_cycle = reason
    return group

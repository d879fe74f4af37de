"""The engine's guards inside torch-pruning: tolerant index mappings and the bounded group walk.

Part of :mod:`pytest_tprune.engine.tp_internals`. Both wrap private code of
torch-pruning (its per-operation index-mapping refresh, its dependency walk),
so both must switch themselves off, and say so, when an upgrade moves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, wraps
from typing import Any

from pytest_tprune.engine.tp_internals.graph import one_line

TRAVERSAL_FACTOR = 1
"""A group's walk may take this many charged steps per dependency edge of the graph
before it is judged cyclic. Measured on sound walks: at most 0.18 per edge
(densenet121's concats), 0 to 0.05 for most models."""


class TraversalCycle(Exception):
    """Raised inside torch-pruning's group walk once it passes its step budget."""


class UnmappableIndices(IndexError):
    """Raised by a walk through an operation whose index mapping torch-pruning could not build."""


class _Unmappable:
    """Stands in for an index mapping torch-pruning failed to build: any walk through it raises."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, idxs: Any) -> Any:
        raise UnmappableIndices(self.reason)


_TOLERANT_DEPTH = [0]


@contextmanager
def tolerant_index_mappings() -> Iterator[None]:
    """While active, an operation whose index mapping torch-pruning cannot build is marked, not fatal.

    torch-pruning refreshes the mapping of every concat, split and reshape of
    the graph before each group (``update_index_mapping``), and one operation
    whose channel sizes it cannot infer raised there and lost the whole model
    (``int + None`` on a concat's unknown input width, a reshape dividing by a
    width of 0). Each per-operation update is wrapped for the duration: when it
    raises, the edges through that operation get a mapping that raises when
    walked, so the groups through it are left whole and the rest prune. The
    updates are found by their ``update_*_index_mapping`` names, so one that a
    torch-pruning upgrade adds is covered too; outside this context
    torch-pruning is untouched.
    """
    from torch_pruning.dependency import index_mapping as module

    if _TOLERANT_DEPTH[0]:
        yield
        return
    originals = {
        name: fn
        for name, fn in vars(module).items()
        if name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping"
    }
    for name, fn in originals.items():
        setattr(module, name, _tolerant(fn))
    _TOLERANT_DEPTH[0] += 1
    try:
        yield
    finally:
        _TOLERANT_DEPTH[0] -= 1
        for name, fn in originals.items():
            setattr(module, name, fn)


def _tolerant(update: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    @wraps(update)
    def guarded(graph: Any, node: Any) -> None:
        try:
            update(graph, node)
        except (TypeError, ValueError, ArithmeticError, IndexError, AttributeError) as exc:
            kind = getattr(getattr(node, "type", None), "name", "operation").lower()
            _mark_unmappable(node, f"torch-pruning could not build the index mapping through a {kind}: {one_line(exc)}")

    return guarded


def _mark_unmappable(node: Any, reason: str) -> None:
    """Every edge into and out of ``node`` maps indices by raising ``reason``."""
    broken = _Unmappable(reason)
    edges = list(node.dependencies)
    for other in [*node.inputs, *node.outputs]:
        edges += [dep for dep in other.dependencies if dep.target is node]
    for dep in edges:
        for slot in range(len(dep.index_mapping)):
            dep.index_mapping[slot] = broken


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
    whole; the graph of every other model behaves exactly as before.
    """
    edges = [dep for node in graph.module2node.values() for dep in node.dependencies]
    for dep in edges:
        dep.index_mapping = _CountingMappings(list(dep.index_mapping), graph, dep)
    graph.tprune_walk_steps = 0.0
    graph.tprune_root_width = 1
    graph.tprune_walk_reached = []
    graph.tprune_cyclic = {}
    graph.tprune_walk_budget = TRAVERSAL_FACTOR * len(edges) + 64
    graph.__class__ = _bounded_graph_class(graph.__class__)


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
            known = self.tprune_cyclic.get(module) if self.is_out_channel_pruning_fn(pruning_fn) else None
            if known is not None:
                return _marked_root_group(self, module, pruning_fn, idxs, known)
            self.tprune_walk_steps = 0.0
            self.tprune_root_width = max(1, len(idxs) if hasattr(idxs, "__len__") else 1)
            self.tprune_walk_reached = []
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
    from torch_pruning._helpers import GroupItem
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.group import Group

    plain = [int(i) for i in idxs]
    root = graph.module2node[module]
    group = Group()
    item = GroupItem(Dependency(pruning_fn, pruning_fn, source=root, target=root), plain)
    item.root_idxs = list(plain)
    group.items.append(item)
    group._DG = graph
    group.tprune_cycle = reason
    return group

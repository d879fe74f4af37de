"""The bounded group walk: torch-pruning's index propagation, charged step by step.

Part of :mod:`pytest_tprune.engine.tp_internals` (the probes that switch it on
or off are in :mod:`.guards`). On some graphs torch-pruning's walk from a root
through concat/split/reshape mappings never closes: the engine bounds it
(:func:`bound_traversal`, the root is then left whole with the reason), and the
stock verdict counts it (:func:`detect_cycles`, the walk then raises where the
engine would have stopped it).
"""

from __future__ import annotations

from array import array
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
            key = walk_key(self, module, pruning_fn, idxs)  # one key for both caches: a walk changes no width
            replay = ABANDONED.replay(self, key)
            if replay is not None:  # the same walk, abandoned before: its outcome
                reason, targets = replay
                for target in targets:
                    self.tprune_cyclic.setdefault(target, reason)
                return _marked_root_group(self, module, pruning_fn, idxs, reason)
            group = SOUND.replay(self, key, module, pruning_fn)
            if group is not None:  # the same walk, closed before: its group, on this graph
                return _coupled_to_cycle(self, module, pruning_fn, idxs, group)
            _start_walk(self, idxs)
            try:
                with tolerant_index_mappings():
                    group = super().get_pruning_group(module, pruning_fn, idxs)
            except (TraversalCycle, IndexError, ZeroDivisionError) as exc:
                explained = isinstance(exc, (TraversalCycle, UnmappableIndices))
                reason = str(exc) if explained else f"index mapping raised {one_line(exc)}"
                reached = [
                    d.target.module for d in self.tprune_walk_reached if self.is_out_channel_pruning_fn(d.handler)
                ]
                for target in reached:
                    self.tprune_cyclic.setdefault(target, reason)
                ABANDONED.remember(self, key, reason, reached)
                return _marked_root_group(self, module, pruning_fn, idxs, reason)
            finally:
                self.tprune_walk_reached = []
            SOUND.remember(self, key, module, pruning_fn, group)
            return _coupled_to_cycle(self, module, pruning_fn, idxs, group)

    BoundedGraph.__name__ = BoundedGraph.__qualname__ = f"Bounded{base.__name__}"
    return BoundedGraph


def _coupled_to_cycle(graph: Any, module: Any, pruning_fn: Any, idxs: Any, group: Any) -> Any:
    """``group``, or the marked root when it prunes the output channels of a layer an abandoned walk reached."""
    for dep, _ in group:
        cyclic = graph.tprune_cyclic.get(dep.target.module)
        if cyclic is not None and graph.is_out_channel_pruning_fn(dep.handler):
            return _marked_root_group(graph, module, pruning_fn, idxs, f"coupled to an abandoned walk: {cyclic}")
    return group


class AbandonedWalks:
    """The outcome of every abandoned walk of this process, replayed when the same walk comes again.

    Why: an abandoned walk is the most expensive thing the engine does (it runs
    to its budget: 1 to 3 s each on ``visformer_tiny``, ``efficientvit_m0``,
    ``efficientformerv2_s0``), and the same walks come again for every graph
    of the same model: each pruner constructor enumerates every group, a retry
    after a broken forward traces again, the equivalence check prunes a copy,
    and the grid has four configs per model. A walk is a function of the graph
    (its nodes, edges, handlers and index mappings), the current widths of its
    layers, the guards, the root, the pruning function and the indices; the
    key holds all of these, so a replayed walk marks the same layers cyclic,
    with the same reason, as walking it would. A key that cannot be formed
    (or any difference) is a miss, never a wrong hit: the walk then runs.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._outcomes: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
        self.enabled = True
        self.replaying = True  # False: walks are remembered but never replayed (a fresh prune that fills the cache)
        self.matches = 0  # look-ups that found an outcome under their key
        self.hits = 0  # of those, the ones replayed (every node they name is in the graph)

    def replay(self, graph: Any, key: tuple[Any, ...] | None) -> tuple[str, list[Any]] | None:
        """The reason and the layers an earlier walk of ``key`` (:func:`walk_key`) marked cyclic, or None (then
        the walk runs)."""
        found = None if key is None or not (self.enabled and self.replaying) else self._outcomes.get(key)
        self.matches += found is not None
        targets = None if found is None else self.modules(graph, found[1])
        if found is None or targets is None:
            return None
        self.hits += 1
        return found[0], targets

    def remember(self, graph: Any, key: tuple[Any, ...] | None, reason: str, reached: list[Any]) -> None:
        """Keep an abandoned walk's outcome under the key it started with (a walk changes no width)."""
        if key is None or not self.enabled:
            return
        names = _node_names(graph)
        if any(id(m) not in names for m in reached):  # a layer outside the graph's nodes
            return
        if len(self._outcomes) >= self.LIMIT:
            self._outcomes.pop(next(iter(self._outcomes)))
        self._outcomes[key] = (reason, tuple(names[id(m)] for m in reached))

    @staticmethod
    def modules(graph: Any, reached: tuple[str, ...]) -> list[Any] | None:
        """The graph's layers of these names; None when one is missing (then the walk runs)."""
        nodes = _nodes_by_name(graph)
        found = [nodes[name].module for name in reached if name in nodes]
        return found if len(found) == len(reached) else None

    def clear(self) -> None:
        self._outcomes.clear()
        self.matches = self.hits = 0


ABANDONED = AbandonedWalks()
"""This process's abandoned walks (:class:`AbandonedWalks`); ``ABANDONED.enabled = False`` walks every time."""


def _walk_root(graph: Any, module: Any, pruning_fn: Any) -> tuple[Any, ...] | None:
    """(graph signature, root name, pruning function) of a walk; None when the root has no stable name."""
    try:
        root = _node_names(graph)[id(module)]
    except (AttributeError, KeyError, TypeError):
        return None
    return (_graph_signature(graph), root, getattr(pruning_fn, "__qualname__", repr(pruning_fn)))


def walk_key(graph: Any, module: Any, pruning_fn: Any, idxs: Any) -> tuple[Any, ...] | None:
    """The key both caches keep a walk under, or None when neither is on or it cannot be formed."""
    if not (ABANDONED.enabled or SOUND.enabled):
        return None
    return _walk_key(graph, _walk_root(graph, module, pruning_fn), idxs)


def _walk_key(graph: Any, root: tuple[Any, ...] | None, idxs: Any) -> tuple[Any, ...] | None:
    """A walk's identity: its root, the current widths of every layer, the guards, the ignored parameters and
    the indices: everything torch-pruning's walk reads besides the graph (in the signature)."""
    if root is None:
        return None
    try:
        widths = _width_hash(graph)
        indices = tuple(int(i) for i in idxs) if hasattr(idxs, "__iter__") else (int(idxs),)
        names = _node_names(graph)
        ignored = tuple(sorted(names.get(id(p), "?") for p in getattr(graph, "ignored_params", None) or ()))
    except (AttributeError, TypeError, ValueError):
        return None
    return (*root, widths, probed().states(), ignored, indices)


def _width_hash(graph: Any) -> int:
    """A hash of every parameter's current shape: what pruning changes between two walks of the same graph.

    Computed on every walk, so the modules that hold parameters are listed once per graph (until its nodes are
    rebuilt) instead of walking the module tree each time: torch-pruning replaces a layer's parameters when it
    prunes it, never the layer, so the shapes are read afresh from each layer's own parameters.
    """
    cached = graph.__dict__.get("tprune_parameter_holders")
    if cached is None or cached[0] is not graph.module2node:
        cached = (graph.module2node, [m for m in graph.model.modules() if m._parameters])
        graph.tprune_parameter_holders = cached
    return hash(tuple(p.shape for module in cached[1] for p in module._parameters.values() if p is not None))


class SoundWalks:
    """The group of every long walk that closed, replayed when the same walk comes again on a graph of the model.

    Why: walking is most of what tracing and pruning cost on graphs with many
    concat/split/reshape mappings (``efficientvit_m0``, ``efficientformerv2_s0``,
    ``coat_tiny``: tens of seconds a prune), and each walk comes again and
    again: the pruner's constructor walks from every root, each step walks them
    all once more, and the equivalence check, a retry and the other configs of
    the model build graphs of the same model. The key is :class:`AbandonedWalks`'
    (the walk reads nothing else), so a replay is the group walking would give:
    the same members, indices and root indices, built from this graph's own
    dependencies (found by their node's name and their position on it, which the
    graph signature fixes). Anything that cannot be found again is a miss, and
    the walk runs. Indices are kept as 32-bit arrays, :attr:`MAX_INDICES` of
    them at most (about 32 MB; the oldest walks are dropped first).
    """

    MAX_INDICES = 8_000_000
    ROOT = "<root>"

    def __init__(self) -> None:
        self._groups: dict[tuple[Any, ...], tuple[tuple[Any, ...], ...]] = {}
        self._sizes: dict[tuple[Any, ...], int] = {}
        self._total = 0  # indices kept, over every group
        self.enabled = True
        self.replaying = True  # False: walks are remembered but never replayed (a fresh prune that fills the cache)
        self.hits = 0  # walks replayed
        self.kept = 0  # walks remembered

    def remember(self, graph: Any, key: tuple[Any, ...] | None, module: Any, pruning_fn: Any, group: Any) -> None:
        """Keep ``group`` under ``key``, each member by its dependency's node name and position (or the root)."""
        if key is None or not self.enabled or getattr(group, "tprune_cycle", None) is not None:
            return
        names, root = _node_names(graph), graph.module2node.get(module)
        items: list[tuple[tuple[Any, ...], array[int], array[int]]] = []
        for item in group.items:
            dep = item.dep
            position = next((i for i, d in enumerate(dep.source.dependencies) if d is dep), None)
            if position is not None and id(dep.source.module) in names:
                ref: tuple[Any, ...] = (names[id(dep.source.module)], position)
            elif not items and dep.source is root and dep.target is root and dep.trigger == dep.handler:
                ref = (self.ROOT, None if dep.handler == pruning_fn else dep.handler)
            else:  # a dependency this graph does not hold: not replayable
                return
            try:
                items.append((ref, array("i", map(int, item.idxs)), array("i", map(int, item.root_idxs or ()))))
            except (TypeError, ValueError, OverflowError):  # an index that is not a plain channel number
                return
        size = sum(len(idxs) + len(roots) for _, idxs, roots in items)
        if key in self._groups:
            self._total -= self._sizes.pop(key)
            del self._groups[key]
        while self._groups and self._total + size > self.MAX_INDICES:
            oldest = next(iter(self._groups))
            self._total -= self._sizes.pop(oldest)
            del self._groups[oldest]
        self._groups[key], self._sizes[key] = tuple(items), size
        self._total += size
        self.kept += 1

    def replay(self, graph: Any, key: tuple[Any, ...] | None, module: Any, pruning_fn: Any) -> Any:
        """The kept group rebuilt on ``graph``, or None (then the walk runs)."""
        stored = self._groups.get(key) if key is not None and self.enabled and self.replaying else None
        parts: WalkParts | None = probed().found.get(BOUNDED)
        if stored is None or parts is None:
            return None
        nodes = _nodes_by_name(graph)
        group = parts.group()
        for (where, which), idxs, roots in stored:
            if where == self.ROOT:
                fn, root = which or pruning_fn, graph.module2node[module]
                dep = parts.dependency(fn, fn, source=root, target=root)
            else:
                node = nodes.get(where)
                if node is None or which >= len(node.dependencies):
                    return None
                dep = node.dependencies[which]
            item = parts.group_item(dep, idxs.tolist())
            item.root_idxs = roots.tolist()
            group.items.append(item)
        group._DG = graph
        self.hits += 1
        return group

    def clear(self) -> None:
        self._groups.clear()
        self._sizes.clear()
        self._total = self.hits = self.kept = 0


SOUND = SoundWalks()
"""This process's closed long walks (:class:`SoundWalks`); ``SOUND.enabled = False`` walks every time."""


def _nodes_by_name(graph: Any) -> dict[str, Any]:
    """The graph's nodes by :func:`_node_names`' names, kept on the graph until its nodes are rebuilt."""
    cached = graph.__dict__.get("tprune_nodes_by_name")
    if cached is not None and cached[0] is graph.module2node:
        found: dict[str, Any] = cached[1]
        return found
    names = _node_names(graph)
    found = {names[id(m)]: node for m, node in graph.module2node.items()}
    graph.tprune_nodes_by_name = (graph.module2node, found)
    return found


def _node_names(graph: Any) -> dict[int, str]:
    """A name for each node of the graph that is the same in every trace of the same model, by id, in node order.

    A layer's or parameter's qualified name in the model; an operation's node name (numbered in trace
    order). Not torch-pruning's names for unwrapped parameters: those are numbered in set order, which
    changes from one trace to the next.
    """
    cached = graph.__dict__.get("tprune_node_names")
    names: dict[int, str] | None = cached[1] if cached is not None and cached[0] is graph.module2node else None
    if names is None:  # first use, or the pruner rebuilt the graph's nodes (isomorphic pruning's steps)
        qualified = {id(p): n for n, p in graph.model.named_parameters(remove_duplicate=False)}
        qualified.update({id(m): n for n, m in graph.model.named_modules(remove_duplicate=False)})
        names = {id(m): qualified.get(id(m), f"op:{node.name}") for m, node in graph.module2node.items()}
        graph.tprune_node_names = (graph.module2node, names)
        graph.__dict__.pop("tprune_signature", None)
    return names


def _graph_signature(graph: Any) -> int:
    """A hash of everything a walk reads from the graph besides widths: nodes, edges (in their order), handlers,
    mappings. Nodes are taken in name order: their order in the graph varies with unwrapped parameters'."""
    names = _node_names(graph)  # first: it drops the signature of nodes the pruner has rebuilt
    signature: int | None = graph.__dict__.get("tprune_signature")
    if signature is None:
        rows = []
        for module, node in graph.module2node.items():
            edges = tuple(
                (
                    names[id(dep.target.module)],
                    getattr(dep.trigger, "__qualname__", repr(dep.trigger)),
                    getattr(dep.handler, "__qualname__", repr(dep.handler)),
                    tuple(_mapping_signature(m) for m in list.__iter__(dep.index_mapping)),
                )
                for dep in node.dependencies
            )
            rows.append((names[id(module)], type(module).__qualname__, edges))
        signature = hash(tuple(sorted(rows)))
        graph.tprune_signature = signature
    return signature


def _mapping_signature(mapping: Any) -> Any:
    if mapping is None:
        return None
    fields = sorted((k, repr(v)) for k, v in vars(mapping).items()) if hasattr(mapping, "__dict__") else repr(mapping)
    return (type(mapping).__qualname__, tuple(fields))


def _marked_root_group(graph: Any, module: Any, pruning_fn: Any, idxs: Any, reason: str) -> Any:
    """The root alone, carrying the reason its walk was abandoned: the pruner leaves it whole."""
    parts: WalkParts = probed().found[BOUNDED]  # reached only from a bounded graph, while its guard is active
    root = graph.module2node[module]
    dep = parts.dependency(pruning_fn, pruning_fn, source=root, target=root)
    group = root_group(parts, dep, [int(i) for i in idxs], graph)
    group.tprune_cycle = reason
    return group

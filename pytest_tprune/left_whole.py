"""Leave whole the dependency groups torch-pruning cannot prune consistently.

torch-pruning couples every tensor a channel flows through into one group, and
maps the channel indices through each concat, split and reshape on the way.
Where that mapping is wrong (indices past a coupled tensor's width, a width
that does not divide into the group's heads or channel groups), the stock
pruner raises while ranking the group and the whole model is lost, although
every other group in it prunes correctly.

:func:`guarded_pruner` returns a ``MetaPruner`` subclass that checks each group
before it is ranked and leaves the broken ones whole, recording which and why.
The same goes for groups whose index propagation raises or never ends: torch-pruning
walks the graph until every coupled tensor has been reached with indices it
has already seen, and a mapping cycle that yields new indices on every turn
(offsets that keep growing) makes that walk run forever, growing memory by
gigabytes. :func:`bound_traversal` caps the walk at a multiple of the graph's
size; a group that hits the cap is left whole like the others.

A third kind is found only by running the pruned model: a module that reads a
width at run time (attention reshaping ``qkv`` by the embedding width, a norm
sized at build time) breaks when one group it reads is pruned and a coupled
one is left whole. :func:`coupled_modules` names the modules whose forward
broke, and the engine prunes again leaving whole every group that touches them
(:mod:`pytest_tprune.pruning`).

Nothing of a group left whole is touched, so what is pruned is still checked by
every check: the shape rule and the reduction band look at pruned groups only,
and the goldens record the unpruned widths, so an upgrade that fixes the
mapping changes the goldens and is reviewed, not silently absorbed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, wraps
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LeftWhole:
    """A group torch-pruning could not prune consistently, and why."""

    root: str
    direction: str  # "out" or "in"
    channels: int
    reason: str

    def describe(self) -> str:
        return f"{self.root} ({self.direction}-channels {self.channels}): {self.reason}"


@dataclass(frozen=True)
class Culprit:
    """Modules whose pruning broke the model (its forward, or the prune step itself):
    groups touching them are left whole on the next try."""

    modules: tuple[str, ...]
    reason: str


def coupled_modules(model: nn.Module, culprit: str, error: BaseException, earlier: Sequence[Culprit]) -> Culprit | None:
    """What to leave whole after the forward of ``culprit`` broke, or None when nothing narrower than the model is left.

    A timm module's forward (attention reshaping by a width, a gating split)
    breaks the same way in every instance, so every module of its class is
    taken at once: one retry, not one per block. A torch layer (a norm sized
    at build time, a conv fed a wrongly pruned input) is taken alone. A module
    that breaks again although its own groups were left whole was broken by a
    producer torch-pruning did not couple to it, so its enclosing module is
    taken instead.
    """
    modules = dict(model.named_modules())
    taken = {name for broken in earlier for name in broken.modules}
    covered = [scope for scope in _scopes(culprit) if scope in taken]
    name = covered[-1].rpartition(".")[0] if covered else culprit
    if not name or name not in modules:
        return None
    module = modules[name]
    detail = _one_line(error)
    if type(module).__module__.startswith("torch."):
        return Culprit(
            (name,), f"touches '{name}' ({type(module).__name__}), whose forward broke when pruned: {detail}"
        )
    kind = type(module)
    names = tuple(n for n, m in modules.items() if type(m) is kind and n not in taken)
    return Culprit(names, f"touches a {kind.__name__}, whose forward broke when pruned (in '{name}': {detail})")


def failed_group(graph: Any, group: Any, error: BaseException) -> Culprit:
    """The root of a group whose ``prune()`` raised: its groups are left whole on the next try.

    torch-pruning has by then pruned part of the group, so the model cannot be
    used further; the group is ranked, so its index mapping looked sound.
    """
    return Culprit((_dotted_name(graph, group[0].dep.target.module) or "",), f"pruning it raised {_one_line(error)}")


def _scopes(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, a.b, a]``: a module and its enclosing modules, innermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)] if name else []


def _member_names(graph: Any, group: Any) -> Iterable[str]:
    """Dotted names of the modules and unwrapped parameters a group touches."""
    for dep, _ in group:
        name = _dotted_name(graph, dep.target.module)
        if name is not None:
            yield name


def touches_culprit(graph: Any, group: Any, broken: Sequence[Culprit]) -> str | None:
    """The reason to leave ``group`` whole when it touches a culprit of an earlier try, else None."""
    if not broken:
        return None
    owner = {name: b.reason for b in broken for name in b.modules}
    for name in _member_names(graph, group):
        for scope in _scopes(name):
            if scope in owner:
                return owner[scope]
    return None


def prunes_ignored_parameter(graph: Any, group: Any, ignored: Sequence[nn.Module]) -> str | None:
    """The reason to leave ``group`` whole when it would prune a parameter of an ignored layer, else None.

    torch-pruning keeps an ignored layer out of every group, but the
    parameters of a layer class it does not know (timm's ``RmsNorm``, say) are
    graph members of their own, unwrapped parameters, and it prunes those with
    the group that reaches them. When the ignored layer is a model's output
    (the last norm of a model built with ``num_classes=0``), that pruned the
    output width: aimv2's feature output went from 1024 to 512.
    """
    owners = {id(p): module for module in ignored for p in module.parameters(recurse=False)}
    if not owners:
        return None
    for dep, _ in group:
        owner = owners.get(id(dep.target.module))
        if owner is not None:
            layer = _dotted_name(graph, owner) or type(owner).__name__
            return (
                f"would prune {_name_of(graph, dep.target.module)} of '{layer}', an ignored layer "
                f"({type(owner).__name__}) that torch-pruning prunes as an unwrapped parameter"
            )
    return None


def _item_width(graph: Any, dep: Any) -> int | None:
    """Width of the dimension ``dep`` prunes on its target, when torch-pruning knows it."""
    target = dep.target.module
    try:
        width = graph.get_out_channels(target) if graph.is_out_channel_pruning_fn(dep.handler) else None
        if width is None and graph.is_in_channel_pruning_fn(dep.handler):
            width = graph.get_in_channels(target)
    except Exception:
        return None
    return int(width) if isinstance(width, int) else None


def _name_of(graph: Any, target: Any) -> str:
    """A member's dotted name; unwrapped parameters by their parameter name.

    torch-pruning names unwrapped parameters ``UnwrappedParameter_N`` in an
    order that changes from run to run, so those names cannot go in a golden.
    """
    name = _dotted_name(graph, target)
    if name is None:
        return type(target).__name__
    return f"{name} (parameter)" if target in getattr(graph, "_param_to_name", {}) else name


def _dotted_name(graph: Any, target: Any) -> str | None:
    """The dotted name of a graph member: a module's, or an unwrapped parameter's (keys hash by identity)."""
    name = getattr(graph, "_param_to_name", {}).get(target) or graph._module2name.get(target)
    return None if name is None else str(name)


def index_overrun(graph: Any, group: Any) -> str | None:
    """The first member whose mapped indices run past its own width, described."""
    for dep, idxs in group:
        width = _item_width(graph, dep)
        if width is None or not idxs:
            continue
        top = max(int(i) for i in idxs)
        if top >= width:
            return f"index {top} mapped onto {_name_of(graph, dep.target.module)}, which has {width} channels"
    return None


def group_root(graph: Any, group: Any) -> tuple[str, str, int]:
    """The group's root: its name, the pruned direction (``out``/``in``) and that dimension's width now."""
    dep = group[0].dep
    is_out = graph.is_out_channel_pruning_fn(dep.handler)
    width = graph.get_out_channels(dep.target.module) if is_out else graph.get_in_channels(dep.target.module)
    return _name_of(graph, dep.target.module), "out" if is_out else "in", int(width or 0)


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
            _mark_unmappable(
                node, f"torch-pruning could not build the index mapping through a {kind}: {_one_line(exc)}"
            )

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
                reason = str(exc) if explained else f"index mapping raised {_one_line(exc)}"
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


@cache
def guarded_pruner() -> type:
    """``MetaPruner`` that ranks only the groups it can prune consistently.

    Made on first use so that importing this module does not import
    torch-pruning.
    """
    import torch_pruning as tp

    class GuardedPruner(tp.pruner.MetaPruner):
        def __init__(self, *args: Any, culprits: Sequence[Culprit] = (), **kwargs: Any) -> None:
            self.left_whole: list[LeftWhole] = []
            self.culprits = tuple(culprits)
            with tolerant_index_mappings():  # the graph is built, and its mappings first made, in here
                super().__init__(*args, **kwargs)

        @property
        def DG(self) -> Any:
            return self._tprune_graph

        @DG.setter
        def DG(self, graph: Any) -> None:
            bound_traversal(graph)
            self._tprune_graph = graph

        def estimate_importance(self, group: Any) -> Any:
            """The stock importance, or None (torch-pruning then skips the group) with a record."""
            problem = (
                getattr(group, "tprune_cycle", None)
                or index_overrun(self.DG, group)
                or prunes_ignored_parameter(self.DG, group, self.ignored_layers)
                or touches_culprit(self.DG, group, self.culprits)
            )
            imp = None
            if problem is None:
                try:
                    imp = super().estimate_importance(group)
                except (IndexError, RuntimeError) as exc:
                    problem = f"importance raised {_one_line(exc)}"
            if imp is not None and problem is None:
                channel_groups = int(self._get_channel_groups(group))
                if channel_groups > 1 and len(imp) % channel_groups:
                    problem = f"{len(imp)} channels do not divide into {channel_groups} channel groups"
            if problem is None:
                return imp
            self._leave_whole(group, problem)
            return None

        def _leave_whole(self, group: Any, problem: str) -> None:
            root, direction, channels = group_root(self.DG, group)
            if not any(r.root == root and r.direction == direction for r in self.left_whole):
                self.left_whole.append(LeftWhole(root, direction, channels, problem))

    return GuardedPruner

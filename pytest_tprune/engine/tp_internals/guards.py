"""The engine's guards inside torch-pruning: tolerant index mappings and the bounded group walk.

Part of :mod:`pytest_tprune.engine.tp_internals`. Both wrap private code of
torch-pruning (its per-operation index-mapping refresh, its dependency walk),
so both must switch themselves off, and say so, when an upgrade moves it.

Each guard is found by what it needs, never by a version number: a probe
(:data:`PROBES`) looks for the internals the guard wraps or builds (where the
per-operation index-mapping updates live, that the refresh still calls them,
that ``Node``, ``Dependency``, ``Group`` and ``GroupItem`` build and carry the
attributes the guard uses) and returns what it found. A guard whose probe
fails is switched off for the run: the cases then run with torch-pruning's own
behaviour at that point, so their verdict is about torch-pruning, and
:func:`guard_status` says which guard is off and what was missing. The probes
run once per process, the first time a prune (or the report) asks, which is
when torch-pruning is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any

from pytest_tprune.engine.tp_internals.graph import one_line

TOLERANT = "tolerant_index_mappings"
BOUNDED = "bounded_traversal"

MAPPED_OPERATIONS = ("concat", "split", "reshape", "unbind", "expand", "slice")
"""The operations whose index-mapping update torch-pruning's refresh must still call for
:func:`tolerant_index_mappings` to cover it (``flatten``'s is never called, in 1.5.3 to 1.6.1)."""

CLASS_PLACES: dict[str, tuple[str, ...]] = {
    "Node": ("torch_pruning.dependency", "torch_pruning.dependency.node"),
    "Dependency": ("torch_pruning.dependency", "torch_pruning.dependency.dependency", "torch_pruning"),
    "Group": ("torch_pruning.dependency", "torch_pruning.dependency.group", "torch_pruning"),
    "GroupItem": ("torch_pruning._helpers", "torch_pruning.dependency.group"),
}
"""Where the guards look for the classes they build, first hit wins: 1.5.3 to 1.6.1 have
all four at the first place (``torch_pruning.dependency`` became a package in 1.6.0)."""


class GuardUnavailable(Exception):
    """A probe did not find an internal its guard needs; the message says which."""


@dataclass(frozen=True)
class MappingUpdates:
    """Where torch-pruning keeps its per-operation index-mapping updates, found by :func:`probe_index_mappings`."""

    host: Any
    """The module ``torch_pruning.dependency.index_mapping`` (1.6.x, functions ``(graph, node)``)
    or the class ``DependencyGraph`` (1.5.x, methods ``(self, node)``): the updates are patched on it."""
    names: tuple[str, ...]
    where: str


@dataclass(frozen=True)
class WalkParts:
    """The classes :func:`bound_traversal` builds its marked groups from, found by :func:`probe_group_walk`."""

    dependency: type
    group: type
    group_item: type


@dataclass(frozen=True)
class Probed:
    """What the probes found in this process's torch-pruning: per guard, its parts or what is missing."""

    version: str
    found: dict[str, Any]
    missing: dict[str, str]

    def states(self) -> tuple[str, ...]:
        """The guards that are on, as a hashable value (walks are cached per set of active guards)."""
        return tuple(sorted(self.found))


def probe_index_mappings(tp: Any) -> MappingUpdates:
    """The per-operation updates :func:`tolerant_index_mappings` wraps, checked to be the ones the refresh calls."""
    host, prefix, refresh, where = _mapping_host(tp)
    names = tuple(
        name
        for name, fn in vars(host).items()
        if name.startswith(prefix) and name.endswith("_index_mapping") and name != "update_index_mapping"
        if callable(fn)
    )
    called = _names_used(refresh)
    uncovered = [op for op in MAPPED_OPERATIONS if f"{prefix}{op}_index_mapping" not in set(names) & called]
    if uncovered:
        raise GuardUnavailable(
            f"{where}'s index-mapping refresh no longer calls {prefix}{{{','.join(uncovered)}}}_index_mapping"
        )
    odd = [name for name in names if getattr(getattr(vars(host)[name], "__code__", None), "co_argcount", 0) != 2]
    if odd:
        raise GuardUnavailable(f"{where}.{odd[0]} no longer takes (graph, node)")
    _probe_edges(tp)
    return MappingUpdates(host, names, where)


def _mapping_host(tp: Any) -> tuple[Any, str, Any, str]:
    """(host, name prefix, the refresh that calls the updates, a name for messages)."""
    try:
        from torch_pruning.dependency import index_mapping as module
    except ImportError:  # torch-pruning <= 1.5: ``dependency`` is a module, the updates are graph methods
        module = None
    if module is not None and callable(getattr(module, "update_index_mapping", None)):
        return module, "update_", module.update_index_mapping, "torch_pruning.dependency.index_mapping"
    graph = getattr(tp, "DependencyGraph", None)
    if graph is not None and callable(getattr(graph, "update_index_mapping", None)):
        return graph, "_update_", graph.update_index_mapping, "DependencyGraph"
    raise GuardUnavailable(
        "no index-mapping refresh: neither torch_pruning.dependency.index_mapping.update_index_mapping "
        "nor DependencyGraph.update_index_mapping"
    )


def _names_used(fn: Any) -> set[str]:
    """Every global and attribute name ``fn``'s code (nested code included) refers to."""
    found: set[str] = set()
    pending = [getattr(fn, "__code__", None)]
    while pending:
        code = pending.pop()
        if code is None:
            continue
        found.update(code.co_names)
        pending += [const for const in code.co_consts if hasattr(const, "co_names")]
    return found


def _probe_edges(tp: Any) -> tuple[Any, Any]:
    """A ``Node`` and a ``Dependency`` between it and itself, with the attributes the guards read and write."""
    from torch import nn

    node_class, dependency_class = find_class("Node"), find_class("Dependency")
    try:
        node = node_class(nn.Identity(), None, "tprune-probe")
        dep = dependency_class(_probe_fn, _probe_fn, source=node, target=node)
    except Exception as exc:
        raise GuardUnavailable(
            f"Node(module, grad_fn, name) or Dependency(trigger, handler, source=, target=) "
            f"no longer builds: {one_line(exc)}"
        ) from None
    absent = [f"Node.{a}" for a in ("dependencies", "inputs", "outputs", "module", "type") if not hasattr(node, a)]
    absent += [f"Dependency.{a}" for a in ("trigger", "handler", "source", "target") if not hasattr(dep, a)]
    if absent:
        raise GuardUnavailable(f"{', '.join(absent)} missing")
    mapping = getattr(dep, "index_mapping", None)
    if not isinstance(mapping, list) or len(mapping) != 2:
        raise GuardUnavailable("Dependency.index_mapping is no longer a list of two mappings")
    return node, dep


def _probe_fn(idxs: Any) -> None:
    """Stands in for a pruning function in the probe's ``Dependency``; never called."""


def probe_group_walk(tp: Any) -> WalkParts:
    """The graph methods :func:`bound_traversal` overrides and the classes it builds a marked root group from."""
    graph = getattr(tp, "DependencyGraph", None)
    if graph is None:
        raise GuardUnavailable("torch_pruning.DependencyGraph missing")
    absent = [
        m
        for m in ("get_pruning_group", "is_out_channel_pruning_fn", "build_dependency")
        if not callable(getattr(graph, m, None))
    ]
    if absent:
        raise GuardUnavailable(f"DependencyGraph.{absent[0]} missing")
    if "index_mapping" not in _names_used(graph.get_pruning_group):
        raise GuardUnavailable("DependencyGraph.get_pruning_group no longer walks Dependency.index_mapping")
    if "module2node" not in _names_used(graph.build_dependency):
        raise GuardUnavailable("DependencyGraph.build_dependency no longer sets module2node")
    _node, dep = _probe_edges(tp)
    parts = WalkParts(find_class("Dependency"), find_class("Group"), find_class("GroupItem"))
    try:
        group = root_group(parts, dep, [0], None)
        members = [(member, idxs) for member, idxs in group]
    except Exception as exc:
        raise GuardUnavailable(f"a Group of one GroupItem(dep, idxs) no longer builds: {one_line(exc)}") from None
    if members != [(dep, [0])] or group[0].root_idxs != [0]:
        raise GuardUnavailable("a Group no longer iterates as (dep, idxs) pairs with root_idxs")
    return parts


def find_class(name: str) -> type:
    """Class ``name`` from the first of its :data:`CLASS_PLACES` that has it."""
    for place in CLASS_PLACES[name]:
        try:
            found = getattr(importlib.import_module(place), name, None)
        except ImportError:
            continue
        if isinstance(found, type):
            return found
    raise GuardUnavailable(f"class {name} not found in {' or '.join(CLASS_PLACES[name])}")


PROBES: dict[str, Callable[[Any], Any]] = {TOLERANT: probe_index_mappings, BOUNDED: probe_group_walk}
"""Every guard, by the name :func:`guard_status` reports, and the probe that finds what it needs."""


@cache
def probed() -> Probed:
    """Run every probe, once per process: importing torch-pruning is the cost (import-only, no model)."""
    version = torch_pruning_version()
    try:
        import torch_pruning as tp
    except Exception as exc:
        return Probed(version, {}, {name: f"torch_pruning does not import: {one_line(exc)}" for name in PROBES})
    found: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name, probe in PROBES.items():
        try:
            found[name] = probe(tp)
        except GuardUnavailable as exc:
            missing[name] = str(exc)
        except Exception as exc:  # a probe tripping over a changed internal: that internal is what is missing
            missing[name] = f"its probe raised {one_line(exc)}"
    return Probed(version, found, missing)


def reprobe() -> None:
    """Forget the probes' findings; the next guard (or :func:`guard_status`) probes again. For tests."""
    probed.cache_clear()


def torch_pruning_version() -> str:
    """The installed distribution's version: ``torch_pruning.__version__`` is absent before 1.6.1 and wrong in it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "absent"


def active(name: str) -> Any | None:
    """What guard ``name``'s probe found, or None when the guard is switched off."""
    return probed().found.get(name)


def guard_status() -> dict[str, str]:
    """Each guard: ``"active"`` or ``"unavailable on torch-pruning X.Y.Z: <what is missing>"``."""
    state = probed()
    return {
        name: "active"
        if name in state.found
        else f"unavailable on torch-pruning {state.version}: {state.missing[name]}"
        for name in PROBES
    }


def guard_summary() -> str:
    """One line: ``guards: all active on torch-pruning 1.6.1 (...)`` or which are off, and why."""
    state = probed()
    if not state.missing:
        return f"guards: all active on torch-pruning {state.version} ({', '.join(PROBES)})"
    off = [f"{name} unavailable on torch-pruning {state.version} ({why})" for name, why in state.missing.items()]
    on = [f"{name} active" for name in PROBES if name in state.found]
    return "guards: " + "; ".join(off + on)


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
    updates are found by their ``update_*_index_mapping`` names (functions of
    ``torch_pruning.dependency.index_mapping`` from 1.6.0, methods
    ``DependencyGraph._update_*_index_mapping`` before), so one that a
    torch-pruning upgrade adds is covered too; outside this context
    torch-pruning is untouched. Where :func:`probe_index_mappings` finds no
    such updates the context does nothing: torch-pruning raises as it does.
    """
    updates = active(TOLERANT)
    if updates is None or _TOLERANT_DEPTH[0]:
        yield
        return
    host = updates.host
    originals = {name: vars(host)[name] for name in updates.names if name in vars(host)}
    for name, fn in originals.items():
        setattr(host, name, _tolerant(fn))
    _TOLERANT_DEPTH[0] += 1
    try:
        yield
    finally:
        _TOLERANT_DEPTH[0] -= 1
        for name, fn in originals.items():
            setattr(host, name, fn)


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


def root_group(parts: WalkParts, dep: Any, plain: list[int], graph: Any) -> Any:
    """A ``Group`` of ``dep`` alone, its indices also its root indices (as torch-pruning's own groups carry)."""
    item = parts.group_item(dep, plain)
    item.root_idxs = list(plain)
    group = parts.group()
    group.items.append(item)
    group._DG = graph
    return group

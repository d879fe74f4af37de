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
gigabytes. :func:`~pytest_tprune.engine.tp_internals.bound_traversal` caps the walk at a multiple of the graph's
size; a group that hits the cap is left whole like the others.

A third kind is found only by running the pruned model: a module that reads a
width at run time (attention reshaping ``qkv`` by the embedding width, a norm
sized at build time) breaks when one group it reads is pruned and a coupled
one is left whole. :func:`coupled_modules` names the modules whose forward
broke, and the engine prunes again leaving whole every group that touches them
(:mod:`pytest_tprune.engine.pruning`).

Nothing of a group left whole is touched, so what is pruned is still checked by
every check: the shape rule and the reduction band look at pruned groups only,
and the goldens record the unpruned widths, so an upgrade that fixes the
mapping changes the goldens and is reviewed, not silently absorbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.tp_internals import (
    bound_traversal,
    channel_groups,
    dotted_name,
    graph_property,
    group_root,
    item_width,
    member_names,
    name_of,
    one_line,
    tolerant_index_mappings,
)
from pytest_tprune.engine.tp_internals.ledger import install_ledger

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
    detail = one_line(error)
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
    return Culprit((dotted_name(graph, group[0].dep.target.module) or "",), f"pruning it raised {one_line(error)}")


def _scopes(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, a.b, a]``: a module and its enclosing modules, innermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)] if name else []


def touches_culprit(graph: Any, group: Any, broken: Sequence[Culprit]) -> str | None:
    """The reason to leave ``group`` whole when it touches a culprit of an earlier try, else None."""
    if not broken:
        return None
    owner = {name: b.reason for b in broken for name in b.modules}
    for name in member_names(graph, group):
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
            layer = dotted_name(graph, owner) or type(owner).__name__
            return (
                f"would prune {name_of(graph, dep.target.module)} of '{layer}', an ignored layer "
                f"({type(owner).__name__}) that torch-pruning prunes as an unwrapped parameter"
            )
    return None


def index_overrun(graph: Any, group: Any) -> str | None:
    """The first member whose mapped indices run past its own width, described."""
    for dep, idxs in group:
        width = item_width(graph, dep)
        if width is None or not idxs:
            continue
        top = max(int(i) for i in idxs)
        if top >= width:
            return f"index {top} mapped onto {name_of(graph, dep.target.module)}, which has {width} channels"
    return None


STOCK_IMPORTANCE_NONE = (
    "torch-pruning's importance scores none of its members (it knows only its stock pruning functions, "
    "and a custom pruner hides a layer from it)"
)
"""Why a group whose stock importance is None stays whole: torch-pruning drops it silently, the engine says so."""

NO_DOWNSTREAM_ROOT = (
    "an attention group torch-pruning cannot re-root on a downstream layer (no Linear or Conv it reaches "
    "consumes its heads): torch-pruning drops it"
)


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
            self.tprune_ledger = install_ledger(self)  # every group offered from now on gets a fate

        DG = graph_property(bound_traversal)

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
                    problem = f"importance raised {one_line(exc)}"
            if imp is None and problem is None:
                problem = STOCK_IMPORTANCE_NONE
            if imp is not None and problem is None:
                grouping = channel_groups(self, group)
                if grouping > 1 and len(imp) % grouping:
                    problem = f"{len(imp)} channels do not divide into {grouping} channel groups"
            if problem is None:
                return imp
            self._leave_whole(group, problem)
            return None

        def _downstream_node_as_root_if_attention(self, group: Any) -> Any:
            """torch-pruning's re-rooting of an attention group; one it cannot re-root is left whole, said so.

            torch-pruning drops such a group without a word: its output reaches no
            Linear or Conv it can map (the heads reshape loses the coupling), so
            pruning it alone would break the model.
            """
            rerooted = super()._downstream_node_as_root_if_attention(group)
            if rerooted is None:
                self._leave_whole(group, NO_DOWNSTREAM_ROOT)
            return rerooted

        def _leave_whole(self, group: Any, problem: str) -> None:
            root, direction, channels = group_root(self.DG, group)
            if not any(r.root == root and r.direction == direction for r in self.left_whole):
                self.left_whole.append(LeftWhole(root, direction, channels, problem))

    return GuardedPruner

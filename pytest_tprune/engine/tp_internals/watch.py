"""See every group a project's own prune function has torch-pruning prune.

A downstream prune function builds its pruners itself, so the engine cannot
hand it a guarded one. To account for its groups all the same (none silently
skipped, each removing what the rule says), :func:`watching_pruners` wraps,
for the length of the call, the two points every ``MetaPruner`` passes
through: its constructor (the ledger is installed on the finished pruner) and
its ``_prune`` generator, which ``step()`` drains whether interactive or not.
Both are private names of torch-pruning: when they are missing or not what
they were, nothing is wrapped and the caller is told, so the case says its
groups went unobserved instead of passing on an empty ledger.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class PrunerWatch(Protocol):
    """What the caller does with one pruner's groups (one instance per pruner)."""

    def offer(self, group: Any) -> bool:
        """A group ``_prune`` is about to yield: record it; False declines it (it is not pruned)."""
        ...

    def done(self, group: Any) -> None:
        """The consumer came back from the group (``step()`` has pruned it)."""
        ...

    def end_step(self) -> None:
        """``_prune`` finished one step."""
        ...


WATCHED = ("MetaPruner.__init__", "MetaPruner._prune")
"""The private names the watch wraps: an upgrade that renames one switches the watch off, saying so."""


def _meta_pruner() -> Any | None:
    """torch-pruning's ``MetaPruner`` when it still has the generator this module wraps, else None."""
    import torch_pruning as tp

    base = getattr(getattr(tp, "pruner", None), "MetaPruner", None)
    prune = getattr(base, "_prune", None)
    if base is None or prune is None or not inspect.isgeneratorfunction(prune):
        return None
    return base


@contextmanager
def watching_pruners(watch_for: Callable[[Any], PrunerWatch]) -> Iterator[bool]:
    """Within the block, every ``MetaPruner`` made gets ``watch_for(pruner)`` watching its groups.

    Yields whether the watch is on (False: torch-pruning's internals moved, and
    groups pruned in the block are not seen). The class is restored on exit,
    also when the block raises.
    """
    base = _meta_pruner()
    if base is None:
        yield False
        return
    original_init, original_prune = base.__init__, base._prune

    def watched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if getattr(self, "tprune_watch", None) is None:  # a subclass's super().__init__ comes here once
            self.tprune_watch = watch_for(self)

    def watched_prune(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        watch: PrunerWatch | None = getattr(self, "tprune_watch", None)
        for group in original_prune(self, *args, **kwargs):
            if watch is None:
                yield group
            elif watch.offer(group):
                yield group
                watch.done(group)
        if watch is not None:
            watch.end_step()

    base.__init__, base._prune = watched_init, watched_prune
    try:
        yield True
    finally:
        base.__init__, base._prune = original_init, original_prune

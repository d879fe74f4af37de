"""What a case drops is freed: no torch-pruning graph outlives the run that built it.

A worker freezes what its imports left alive so that the cyclic collector
stops walking it (:func:`pytest_tprune.engine.resources.freeze_imports_for_gc`).
Frozen objects are never collected, so a freeze made after a model is built
would keep every dependency graph alive (they are full of reference cycles)
and a worker's memory would grow with each case. End to end with pytester on
one ``test_resnet`` case; the second test moves the freeze after the prune on
purpose and shows the check names the graphs that leak.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

# In-process pytester runs forget modules imported during the run; torch cannot be
# imported twice in one process, so import it (and timm, torch-pruning) before any run does.
import timm  # noqa: F401
import torch  # noqa: F401
import torch_pruning as tp

from pytest_tprune.engine import pruning, resources

ONE_CASE = (
    "--tprune-models=test_resnet",
    "--tprune-ratios=0.5",
    "--tprune-modes=local",
    "--tprune-checks=forward,groups,equivalence",  # the case's prune and the equivalence check's own
    "-p",
    "no:cacheprovider",
)
PRUNES = "def test_prune(tprune_case):\n    tprune_case.check_all()\n"


@pytest.fixture
def graphs_built(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[object]]:
    """Weak references to every torch-pruning ``DependencyGraph`` built from now on."""
    refs: list[weakref.ref[object]] = []
    original = tp.DependencyGraph.__init__

    def tracked(self: object, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        refs.append(weakref.ref(self))

    monkeypatch.setattr(tp.DependencyGraph, "__init__", tracked)
    return refs


@pytest.fixture
def freeze_restored() -> Iterator[None]:
    """After a test that froze garbage on purpose: thaw it, collect it, and freeze what is left, as before."""
    yield
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def graphs_left(pytester: pytest.Pytester, refs: list[weakref.ref[object]]) -> str:
    """Run the case, drop the pristine model, collect; say which dependency graphs are still alive."""
    pytester.makepyfile(test_prune=PRUNES)
    pytester.runpytest_inprocess(*ONE_CASE).assert_outcomes(passed=1)
    resources.STORE.clear()
    gc.collect()
    assert refs, "the case built no dependency graph: nothing to check"
    alive = [ref for ref in refs if ref() is not None]
    if not alive:
        return ""
    return f"{len(alive)} of {len(refs)} torch-pruning DependencyGraph objects outlived the run and a full collection"


def test_a_case_leaves_no_dependency_graph_behind(
    pytester: pytest.Pytester, isolated: None, graphs_built: list[weakref.ref[object]]
) -> None:
    assert graphs_left(pytester, graphs_built) == ""


def test_a_freeze_after_the_prune_is_caught(
    pytester: pytest.Pytester,
    isolated: None,
    graphs_built: list[weakref.ref[object]],
    freeze_restored: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Broken on purpose: freezing right after the engine prunes keeps that prune's graphs for ever."""
    engine_prune = pruning.prune

    def prune_then_freeze(*args: object, **kwargs: object) -> object:
        pruned = engine_prune(*args, **kwargs)  # type: ignore[arg-type]
        gc.freeze()
        return pruned

    monkeypatch.setattr(pruning, "prune", prune_then_freeze)
    assert "DependencyGraph objects outlived the run" in graphs_left(pytester, graphs_built)

"""The walk caches (:mod:`pytest_tprune.engine.tp_internals.walk`) change nothing.

A walk the engine abandons at its budget (``AbandonedWalks``), and a walk that
closed (``SoundWalks``), is replayed, not walked again, when the same walk
comes back on a graph of the same model (the step after the constructor,
another config, a retry, the equivalence check's copy). These tests pin that a
replay gives exactly what walking gives, on every grid model, and that the
key (graph signature, indices) is what keeps a replay from standing in for
another walk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_tprune.checks.golden import golden_content  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import ModelSpec, timm_model_names, timm_spec  # noqa: E402
from pytest_tprune.engine.pruning import prune  # noqa: E402
from pytest_tprune.engine.tp_internals import walk  # noqa: E402

CACHED_MODELS = ("test_coatnet", "test_maxvit")
"""The grid models with walks the engine abandons, so the cache replays them (measured at 0.5 uniform: 3 and 8
replays on a second prune). The other grid models abandon none: the cache never engages on them, and their
goldens, checked with the cache on by tests/test_zoo.py, are unchanged since it came."""


@pytest.fixture
def cache() -> Iterator[walk.AbandonedWalks]:
    """The process's cache, emptied before and after (other tests' walks must not leak in or out)."""
    walk.ABANDONED.clear()
    yield walk.ABANDONED
    walk.ABANDONED.enabled = True
    walk.ABANDONED.clear()


def _golden(spec: ModelSpec, config: PruneConfig) -> dict[str, Any]:
    return golden_content(prune(spec, config, device="cpu").outcome, {})


@pytest.mark.parametrize("model", CACHED_MODELS)
def test_replayed_walks_give_the_golden_of_walked_ones(model: str, cache: walk.AbandonedWalks) -> None:
    spec, config = timm_spec(model), PruneConfig(ratio=0.5)
    cache.enabled = False
    walked = _golden(spec, config)
    cache.enabled = True
    first = _golden(spec, config)  # fills the cache (and replays walks repeated within the prune)
    hits = cache.hits
    replayed = _golden(spec, config)
    assert first == walked
    assert replayed == walked
    assert cache.hits > hits  # the second prune replayed walks: the comparison is not vacuous
    assert cache.hits >= 2 * hits  # and at least what the first did


class _SliceResidual(nn.Module):
    """ReXNet's block: the output is wider than the input and the residual joins its first channels."""

    def __init__(self, cin: int, cout: int, residual: bool = True) -> None:
        super().__init__()
        self.cin = cin
        self.residual = residual
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, : self.cin] + x, y[:, self.cin :]], dim=1) if self.residual else y


class _Net(nn.Module):
    """A stem and three slice-residual blocks (torch-pruning's walk from the stem cycles) or, without the
    residuals, the same layers, names and widths as a plain chain whose walks close."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        widths = [(16, 20), (20, 24), (24, 28)]
        self.blocks = nn.Sequential(*(_SliceResidual(a, b, residual) for a, b in widths))
        self.mid = nn.Conv2d(28, 64, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.blocks(self.stem(x)))).mean((2, 3)))


def _cyclic_roots(residual: bool) -> list[str]:
    spec = ModelSpec(f"net_{residual}", lambda: _Net(residual), (3, 16, 16), ignored_layers=lambda m: [m.head])
    outcome = prune(spec, PruneConfig(ratio=0.5), device="cpu").outcome
    return sorted(lw.root for lw in outcome.left_whole if "mapping cycle" in lw.reason)


def test_a_graph_of_the_same_names_and_widths_but_other_edges_walks_again(cache: walk.AbandonedWalks) -> None:
    assert _cyclic_roots(residual=True)
    assert cache._outcomes  # the cyclic walks were remembered
    before = cache.matches
    assert _cyclic_roots(residual=False) == []  # the plain chain is walked, not replayed
    assert cache.matches == before


def test_without_the_graph_signature_the_other_graph_would_replay_the_cyclic_walks(
    cache: walk.AbandonedWalks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break the key (drop the graph's edges from it): the plain chain then hits the cyclic model's walks
    (a replay naming a node the chain lacks is still refused). The signature is what keeps them apart."""
    monkeypatch.setattr(walk, "_graph_signature", lambda graph: 0)
    assert _cyclic_roots(residual=True)
    before = cache.matches
    _cyclic_roots(residual=False)
    assert cache.matches > before


# --- closed walks (SoundWalks): every walk is kept and replayed, so every grid model is pinned ------------------------

GRID = sorted({*timm_model_names("test_*"), "vit_base_patch32_224"})
"""The models of tests/test_zoo.py's grid: a replayed walk must give each of them the golden a fresh walk gives."""


@pytest.fixture
def walks() -> Iterator[walk.SoundWalks]:
    """The process's closed-walk cache, emptied before and after, switched back on after."""
    walk.SOUND.clear()
    walk.ABANDONED.clear()
    yield walk.SOUND
    walk.SOUND.enabled = walk.ABANDONED.enabled = True
    walk.SOUND.replaying = walk.ABANDONED.replaying = True
    walk.SOUND.clear()
    walk.ABANDONED.clear()


def _fresh_and_replayed(spec: ModelSpec, config: PruneConfig, walks: walk.SoundWalks) -> tuple[Any, Any, int]:
    """The golden with every walk walked (and remembered, none replayed), then the golden of a second prune
    that replays them, and how many it replayed."""
    walks.replaying = walk.ABANDONED.replaying = False
    fresh = _golden(spec, config)
    walks.replaying = walk.ABANDONED.replaying = True
    before = walks.hits
    replayed = _golden(spec, config)
    return fresh, replayed, walks.hits - before


@pytest.mark.parametrize("model", GRID)
def test_a_replayed_trace_gives_every_grid_model_the_golden_of_a_fresh_one(model: str, walks: walk.SoundWalks) -> None:
    for config in (PruneConfig(ratio=0.5), PruneConfig(ratio=0.5, global_pruning=True)):
        fresh, replayed, hits = _fresh_and_replayed(timm_spec(model), config, walks)
        assert replayed == fresh, f"{model} {config.config_id}: a replayed walk changed the golden"
        assert hits > 0, f"{model} {config.config_id}: nothing was replayed, so nothing was compared"


def test_a_key_that_forgets_the_indices_replays_the_wrong_group_and_the_golden_shows_it(
    walks: walk.SoundWalks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break the key (drop the indices from it): pruning's walk from the ranked indices then replays the
    enumeration's walk of every channel, and the golden is no longer the fresh one."""
    key = walk._walk_key
    monkeypatch.setattr(walk, "_walk_key", lambda graph, root, idxs: key(graph, root, [0]))
    spec, config = timm_spec("test_resnet"), PruneConfig(ratio=0.5)
    walks.enabled = walk.ABANDONED.enabled = False
    fresh = _golden(spec, config)
    walks.enabled = walk.ABANDONED.enabled = True
    try:
        broken: Any = _golden(spec, config)
    except Exception as exc:  # pruning every channel of a group may not even run
        broken = exc
    assert broken != fresh


def test_the_width_hash_reads_each_layers_current_parameters_and_agrees_across_copies() -> None:
    """The hash lists a graph's parameter-holding layers once; what it hashes must still be read afresh:
    torch-pruning replaces a pruned layer's ``weight`` with a new, narrower parameter, and a walk keyed on
    the old widths would replay the group of another width state."""
    import copy
    from types import SimpleNamespace

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    graph = SimpleNamespace(model=model, module2node={})
    unpruned = walk._width_hash(graph)
    assert walk._width_hash(SimpleNamespace(model=copy.deepcopy(model), module2node={})) == unpruned
    model[2].weight = nn.Parameter(model[2].weight.detach()[:, :6].clone())  # in-channels pruned, as tp does
    assert walk._width_hash(graph) != unpruned
    model[2].weight = nn.Parameter(torch.zeros(4, 8, 1, 1))
    assert walk._width_hash(graph) == unpruned
    graph.module2node = {}  # the pruner rebuilt the graph's nodes: the layers are listed again
    model[0] = nn.Conv2d(3, 8, 5)
    assert walk._width_hash(graph) != unpruned

"""Gradient-based importances (Taylor, Hessian): seeded, replayable, checked like the magnitude ones.

The engine backpropagates a seeded batch's loss before each step
(pytest_tprune/engine/gradients.py). A case must replay exactly, rank by the
gradients (not by the weights), leave no gradient behind on the pruned model,
and the criterion check must see a Taylor ranking turned upside down.
"""

from __future__ import annotations

import copy
from typing import Any

import model_cache as cache
import pytest
import torch_pruning as tp
from model_cache import SEED

from pytest_tprune.checks import properties as props
from pytest_tprune.engine import recipe
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.pruning import prune


def _prune(name: str, config: PruneConfig) -> Any:
    spec, model = cache.pristine(name)
    return prune(spec, config, "cpu", SEED, model=lambda: copy.deepcopy(model))


@pytest.mark.parametrize("importance", ["taylor", "hessian"])
def test_a_gradient_importance_replays_exactly_and_leaves_no_gradient(importance: str) -> None:
    config = PruneConfig(0.5, global_pruning=True, importance=importance, iterative_steps=2)
    first, again = _prune("test_resnet", config), _prune("test_resnet", config)
    assert first.outcome.shapes_after == again.outcome.shapes_after
    assert all(p.grad is None for p in first.model.parameters()), "the checks' backward must start from no gradient"


def test_taylor_ranks_by_gradients_not_by_weights() -> None:
    """Global ranking across layers: Taylor and L2 keep different channel counts per layer."""
    taylor = _prune("test_resnet", PruneConfig(0.5, global_pruning=True, importance="taylor")).outcome
    magnitude = _prune("test_resnet", PruneConfig(0.5, global_pruning=True)).outcome
    assert taylor.modules_after != magnitude.modules_after


def test_a_later_step_of_a_vit_gets_its_attention_adapted_before_the_backward() -> None:
    """Without adapting between steps, step 2's backward reshapes with a stale head_dim and raises."""
    out = _prune("test_vit", PruneConfig(0.5, importance="taylor", iterative_steps=3)).outcome
    assert out.output_shape_after == out.output_shape_before
    assert {g.step for g in out.groups} == {1, 2, 3}


class _InvertedTaylor(tp.importance.GroupTaylorImportance):
    """Taylor upside down: the pruner then keeps the channels with the smallest |w * grad|."""

    def __call__(self, group: Any, **kwargs: Any) -> Any:
        scores = super().__call__(group, **kwargs)
        return None if scores is None else -scores


def test_an_inverted_taylor_ranking_is_caught_by_the_criterion_check(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PruneConfig(0.5, importance="taylor")

    def record() -> props.RecordedPrune:
        return cache.record("test_resnet", config, perturbed_copy=True)

    assert props.criterion_problems(record()) == []
    original = recipe.make_importance
    monkeypatch.setattr(recipe, "make_importance", lambda n, s: _InvertedTaylor() if n == "taylor" else original(n, s))
    problems = props.criterion_problems(record())
    assert problems and any("group conv1.0 (out-channels, step 1)" in p for p in problems), problems


def test_gradient_importances_are_opt_in_for_the_default_strategies() -> None:
    from hypothesis import given, settings

    from pytest_tprune.checks.strategies import prune_configs

    seen: set[str] = set()

    @settings(max_examples=60, database=None, deadline=None)
    @given(prune_configs())
    def draw(config: PruneConfig) -> None:
        seen.add(config.importance)

    draw()
    assert not seen & {"taylor", "hessian"}

"""The regression suite: every selected timm model x ratio x mode passes every check.

The selection is data: ``[tool.pytest.ini_options]`` in pyproject.toml names
the models (``tprune_models``: timm's tiny ``test_*`` models, the seed's
ViT-B/32 and ``@families``, the smallest model of every timm family listed in
``pytest_tprune/engine/data/zoo_representatives.json``), ratios and modes. The two
tests below split that selection by cost:

* ``test_prune``: the tiny models and ViT-B/32 over the full grid, 0.3 (where
  ``round_to`` and head rounding bite) and 0.5, uniform and global;
* ``test_recipe_knobs``: the same models at 0.3 uniform with ``round_to=8``
  (kept widths floored to multiples of 8), and with Taylor importance
  (gradients of a seeded batch's loss);
* ``test_heads``: the ViTs at 0.5 uniform removing half their heads whole
  (``prune_num_heads``, ``head_pruning_ratio=0.5``);
* ``test_family``: one case per family, 0.5 uniform, the rest of the zoo;
* at 0.5 uniform (the seed's config) every case is also exported (``check_export``: torch.export,
  jit.trace, onnx where installed) before its other checks, so that its golden records the outcomes;
* ``test_model``: any other selected model (zoo mode, ``--tprune-models='*'``),
  at the run's ratios and modes; the default selection leaves it empty.

Narrow either from the command line, e.g. ``pytest tests/test_zoo.py
--tprune-models=vit_*``; what fails for a known reason is a strict xfail with
its cause in ``pytest_tprune/engine/known.py``.
"""

from __future__ import annotations

import pytest

from pytest_tprune.case import TpruneCase

GRID_MODELS = ["test_*", "vit_base_patch32_224"]
ATTENTION_MODELS = ["test_vit*", "vit_base_patch32_224"]


SEED_CONFIG = "r0.50-local"
"""The seed's config: at it every model of the default selection is also exported (torch.export, jit.trace, and
onnx where installed), so the report and the goldens say which families still deploy after pruning."""


@pytest.mark.tprune(models=GRID_MODELS)
def test_prune(tprune_case: TpruneCase) -> None:
    if tprune_case.config.config_id == SEED_CONFIG:
        tprune_case.check_export()
    tprune_case.check_all()


RECIPE_KNOBS = [{"round_to": 8}, {"importance": "taylor"}]
HEAD_KNOBS = [{"prune_num_heads": True, "head_pruning_ratio": 0.5}]


@pytest.mark.tprune(models=GRID_MODELS, ratios=[0.3], modes=["local"], knobs=RECIPE_KNOBS)
def test_recipe_knobs(tprune_case: TpruneCase) -> None:
    tprune_case.check_all()


@pytest.mark.tprune(models=ATTENTION_MODELS, ratios=[0.5], modes=["local"], knobs=HEAD_KNOBS)
def test_heads(tprune_case: TpruneCase) -> None:
    tprune_case.check_all()


@pytest.mark.tprune(models=["@families"], exclude=GRID_MODELS, ratios=[0.5], modes=["local"])
def test_family(tprune_case: TpruneCase) -> None:
    tprune_case.check_export()
    tprune_case.check_all()


@pytest.mark.tprune(exclude=[*GRID_MODELS, "@families"])
def test_model(tprune_case: TpruneCase) -> None:
    tprune_case.check_all()

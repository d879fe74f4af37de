"""The regression suite: every selected timm model x ratio x mode passes every check.

The selection comes from ``[tool.pytest.ini_options]`` in pyproject.toml
(``tprune_models``, ``tprune_ratios``, ``tprune_modes``); narrow it from the
command line, e.g. ``pytest tests/test_zoo.py --tprune-models=vit_*``.
"""

from __future__ import annotations

from pytest_tprune.case import TpruneCase


def test_prune(tprune_case: TpruneCase) -> None:
    tprune_case.check_all()

"""pytest-tprune setup: which of ACME's models to prune, and how.

Two ways to add a model, both shown here: ``register_model`` in a module this
file imports (acme_cnn), and the ``pytest_tprune_models`` hook returning
``ModelSpec`` objects (acme_attn).
"""

from __future__ import annotations

import acmenets.tprune_models  # registers acme_cnn on import
import pytest

from pytest_tprune import ModelSpec


def pytest_tprune_models(config: pytest.Config) -> list[ModelSpec]:
    return [acmenets.tprune_models.acme_attn_spec()]

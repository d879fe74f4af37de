"""Hook specifications that downstream projects implement (in a conftest.py or a plugin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_tprune.engine.models import ModelSpec


@pytest.hookspec
def pytest_tprune_models(config: pytest.Config) -> list[ModelSpec] | None:
    """Return extra :class:`~pytest_tprune.ModelSpec` objects to prune.

    Every implementation is called; their results are merged with the timm
    models selected by ``--tprune-models``/``tprune_models`` and with the models
    registered by :func:`pytest_tprune.register_model`. Names must be unique.
    """

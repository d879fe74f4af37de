"""Fixtures shared by the plugin's pytester tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "downstream"
"""The downstream example project, copied into a pytester directory by the ``example`` fixture."""


@pytest.fixture(autouse=True)
def _registry_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every pytester test leaves the model registry as it found it.

    An in-process run imports its project's conftest, whose ``register_model``
    calls land in the registry of this process; without this, a model one
    test registers shows up in the default selection of the next test the
    same worker runs (an order-dependent failure under ``-n auto``).
    """
    if "pytester" not in request.fixturenames:
        yield
        return
    from pytest_tprune.engine import models

    saved = dict(models._REGISTERED)
    yield
    models._REGISTERED.clear()
    models._REGISTERED.update(saved)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An empty-ini project; child runs do not inherit the outer run's xdist identity.

    Test modules whose projects need more (an ini, goldens) define their own ``project``.
    """
    for name in list(os.environ):
        if name.startswith("PYTEST_XDIST_"):
            monkeypatch.delenv(name)
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    return pytester


@pytest.fixture
def example(pytester: pytest.Pytester) -> Path:
    """A copy of examples/downstream as the pytester project (caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True, ignore=ignore)
    return pytester.path


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process runs: a fresh model registry, and no pristine model kept from another run."""
    from pytest_tprune.engine import models, resources

    monkeypatch.setattr(models, "_REGISTERED", {})
    resources.STORE.clear()
    yield
    resources.STORE.clear()


@pytest.fixture
def one_group_dropped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A torch-pruning whose ``step`` silently drops the first group it would yield (in-process runs see it)."""
    from typing import Any

    tp = pytest.importorskip("torch_pruning")
    base = tp.pruner.BasePruner
    original = base._prune

    def dropping(self: Any) -> Iterator[Any]:
        groups = original(self)
        next(groups, None)
        yield from groups

    monkeypatch.setattr(base, "_prune", dropping)
    yield

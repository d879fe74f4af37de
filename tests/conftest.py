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


@pytest.fixture(scope="session")
def exporters_imported() -> None:
    """``torch.export`` and ``torch.jit.trace`` import much of ``torch._dynamo`` and ``torch.jit`` on their first
    call. Made inside an in-process pytester run, those imports are forgotten when the run ends, and the next
    run's export fails (an ``AssertionError`` in torch), so a test that exports in two in-process runs passed or
    failed with what its xdist worker happened to run before it. Both export once here, first."""
    import warnings

    import torch

    model = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation notice: this call is no test of it
        torch.export.export(model, (torch.zeros(1, 2),))
        torch.jit.trace(model, torch.zeros(1, 2))

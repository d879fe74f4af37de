"""pytest-tprune: prove that structural pruning of timm models is correct.

Importing this package is cheap: torch, timm and torch-pruning are imported
only by the functions that need them. A downstream project adds its own models
with :func:`register_model` (or a ``pytest_tprune_models`` hook returning
:class:`ModelSpec` objects), and teaches the pruner its custom modules with
:func:`register_adapter` and :func:`register_pruner`; a model's own recipe rides
on its spec (``pruner_arguments``, ``prune_function``), and :func:`prune` runs
the engine on a copy of any model, so a project ships the recipe its suite proved.
"""

from __future__ import annotations

from pytest_tprune.engine.adapters import register_adapter
from pytest_tprune.engine.api import PruneResult, prune
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.identity import VERSION as __version__
from pytest_tprune.engine.models import ModelSpec, ModelSpecError, add_model, register_model
from pytest_tprune.engine.pruners import register_pruner
from pytest_tprune.errors import CheckFailed, PruneStepError, TpruneError, UsageError

__all__ = [
    "CheckFailed",
    "ModelSpec",
    "ModelSpecError",
    "PruneConfig",
    "PruneResult",
    "PruneStepError",
    "TpruneError",
    "UsageError",
    "__version__",
    "add_model",
    "prune",
    "register_adapter",
    "register_model",
    "register_pruner",
]

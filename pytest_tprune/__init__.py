"""pytest-tprune: prove that structural pruning of timm models is correct.

Importing this package is cheap: torch, timm and torch-pruning are imported
only by the functions that need them. A downstream project adds its own models
with :func:`register_model` (or a ``pytest_tprune_models`` hook returning
:class:`ModelSpec` objects), and teaches the pruner its custom modules with
:func:`register_adapter` and :func:`register_pruner`.
"""

from __future__ import annotations

from pytest_tprune.engine.adapters import register_adapter
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.identity import VERSION as __version__
from pytest_tprune.engine.models import ModelSpec, ModelSpecError, add_model, register_model
from pytest_tprune.engine.pruners import register_pruner
from pytest_tprune.errors import PruneStepError, TpruneError, UsageError

__all__ = [
    "CheckFailed",
    "ModelSpec",
    "ModelSpecError",
    "PruneConfig",
    "PruneStepError",
    "TpruneError",
    "UsageError",
    "__version__",
    "add_model",
    "register_adapter",
    "register_model",
    "register_pruner",
]

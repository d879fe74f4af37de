"""Models for the property tests, built once per test process and handed out as deep copies.

Pruning works in place and Hypothesis does not reset fixtures between
examples, so every example deep-copies a cached pristine model (cheaper than
re-running timm's weight init). Both property modules share this cache; each
clears it when it finishes, so a worker never holds more than one module's
models.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pytest_tprune.checks import properties as props
from pytest_tprune.engine.models import ModelSpec, build_model, timm_spec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.outcome import Baseline

SEED = 0


@functools.cache
def pristine(name: str) -> tuple[ModelSpec, nn.Module]:
    """The spec and the seeded, unpruned model (never prune it: deep-copy it)."""
    spec = timm_spec(name)
    return spec, build_model(spec, SEED)


@functools.cache
def perturbed(name: str) -> nn.Module:
    """The pristine model after :func:`pytest_tprune.checks.properties.perturb`, so every channel is distinguishable."""
    return props.perturb(copy.deepcopy(pristine(name)[1]), SEED)


@functools.cache
def baseline(name: str, perturbed_copy: bool = False) -> Baseline:
    """The unpruned model's measurement, shared by every example that prunes it.

    Without it every example measures the same unpruned model again (a counting
    forward and torch-pruning's counter, about a tenth of a tiny model's
    example). Measured on a copy: a forward leaves caches in some models. The
    perturbed copy has its own, because its eval output differs.
    """
    from pytest_tprune.engine.pruning import measure_baseline

    spec, model = pristine(name)
    source = perturbed(name) if perturbed_copy else model
    return measure_baseline(spec, copy.deepcopy(source).eval(), spec.make_inputs(1, SEED), SEED)


def record(name: str, config: PruneConfig, perturbed_copy: bool = False) -> props.RecordedPrune:
    """``name`` pruned with the recording driver (:func:`pytest_tprune.checks.properties.record_prune`) from a deep
    copy of the cached model (or of its perturbed copy), with the cached unpruned measurement."""
    spec, model = pristine(name)
    source = perturbed(name) if perturbed_copy else model
    return props.record_prune(
        spec, lambda: copy.deepcopy(source), config, SEED, baseline=baseline(name, perturbed_copy)
    )


@functools.cache
def batch(name: str) -> torch.Tensor:
    """A seeded input batch of two."""
    return pristine(name)[0].make_inputs(2, SEED)


@contextmanager
def one_thread_then_release() -> Iterator[None]:
    """One torch thread while a module runs (``-n auto`` already uses every core, and tiny
    models gain nothing from intra-op threads), then drop the cached models. The imports are
    frozen out of the garbage collector's walks first, as the plugin does before its first case."""
    import torch

    from pytest_tprune.engine.resources import freeze_imports_for_gc

    freeze_imports_for_gc()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for cached in (pristine, perturbed, baseline, batch):
            cached.cache_clear()

"""The engine as a library call: prune a model exactly as the suite proved it.

A project whose suite passes on a model wants to ship the recipe that passed,
not a re-typed copy of the seed script. :func:`prune` runs the same engine the
plugin runs (guards, group accounting, groups left whole with their reason)
on a deep copy of the caller's model and returns the pruned copy with its
:class:`~pytest_tprune.engine.outcome.PruneOutcome`: the caller's model is
never touched, so a failed prune leaves it as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_tprune.engine.config import DEFAULT_SEED, PruneConfig
from pytest_tprune.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.outcome import PruneOutcome


class PruneResult(NamedTuple):
    """The pruned copy and what the engine did to it (``model, outcome = prune(...)``)."""

    model: nn.Module
    outcome: PruneOutcome


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    config: PruneConfig | None = None,
    *,
    name: str = "model",
    ignored_layers: Iterable[nn.Module] | None = None,
    num_heads: Mapping[nn.Module, int] | None = None,
    unwrapped_parameters: Iterable[tuple[nn.Parameter, int]] | None = None,
    customized_pruners: Mapping[Any, Any] | None = None,
    pruner_arguments: Mapping[str, Any] | None = None,
    adapters: Mapping[type | str, Callable[[nn.Module], None]] | None = None,
    seed: int = DEFAULT_SEED,
) -> PruneResult:
    """Prune a deep copy of ``model`` with ``config`` (the seed's ``r0.50-local`` when omitted).

    The keyword arguments are :class:`~pytest_tprune.engine.models.ModelSpec`'s,
    given as modules and parameters of ``model`` itself (they are found again
    in the copy by name); without ``ignored_layers`` the classifier is kept
    whole, without ``num_heads`` the attention heads are found as for timm
    models. The copy is pruned on the device ``model`` is on.
    """
    import torch

    from pytest_tprune.engine.models import ModelSpec
    from pytest_tprune.engine.pruning import prune as engine_prune

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"prune() takes an nn.Module to prune, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 1:
        raise UsageError(
            "prune() takes example_inputs as a tensor with a batch dimension, e.g. torch.randn(1, 3, 224, 224); "
            f"got {type(example_inputs).__name__}"
        )
    module_names = _names(model.named_modules(), "ignored_layers / num_heads")
    parameter_names = _names(model.named_parameters(), "unwrapped_parameters")
    ignored = [module_names(m) for m in ignored_layers] if ignored_layers is not None else None
    heads = {module_names(m): int(n) for m, n in num_heads.items()} if num_heads is not None else None
    unwrapped = [(parameter_names(p), d) for p, d in unwrapped_parameters] if unwrapped_parameters else None
    inputs = example_inputs.detach().cpu()
    spec = ModelSpec(
        name=name,
        factory=lambda: copy.deepcopy(model),
        input_size=tuple(int(d) for d in inputs.shape[1:]) or (1,),
        ignored_layers=(lambda m: [m.get_submodule(n) for n in ignored]) if ignored is not None else None,
        num_heads=(lambda m: {m.get_submodule(n): c for n, c in heads.items()}) if heads is not None else None,
        unwrapped_parameters=(lambda m: [(m.get_parameter(n), d) for n, d in unwrapped]) if unwrapped else None,
        customized_pruners=(lambda m: dict(customized_pruners)) if customized_pruners else None,
        pruner_arguments=(lambda m: dict(pruner_arguments)) if pruner_arguments else None,
        adapters=dict(adapters or {}),
        example_inputs=lambda batch, generator: inputs,
    )
    device = next((str(p.device) for p in model.parameters()), "cpu")
    pruned = engine_prune(spec, config or PruneConfig(), device, seed, model=lambda: copy.deepcopy(model).eval())
    return PruneResult(pruned.model, pruned.outcome)


def _names(named: Iterable[tuple[str, Any]], what: str) -> Callable[[Any], str]:
    """A lookup of each module (or parameter) of the model by identity; one not in the model is a usage error."""
    by_id = {id(item): name for name, item in named}

    def name_of(item: Any) -> str:
        if id(item) not in by_id:
            raise UsageError(
                f"prune(): {what} names a {type(item).__name__} that is not part of the model: "
                "pass modules and parameters of the model being pruned"
            )
        return by_id[id(item)]

    return name_of

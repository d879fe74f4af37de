"""Gradients for the gradient-based importances, from a seeded batch, so a case replays exactly.

Taylor importance ranks a channel by ``|w * dL/dw|`` and Hessian importance
by the squared gradient averaged over samples: both read ``param.grad`` when
the pruner ranks a group, so something must backpropagate a loss first. The
engine (and the stock run, which is what a user of plain torch-pruning does
in torch-pruning's own examples) calls :func:`prepare_gradients` before each
step, with a batch built from the case's seed: the loss is the mean square of
the model's output, which needs no labels and reaches every parameter the
output depends on. A parameter the loss does not reach gets a zero gradient
(torch-pruning's Taylor criterion dereferences ``.grad`` unconditionally).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.models import ModelSpec


@dataclass(frozen=True)
class GradientFeed:
    """What a prune loop needs to rank by gradients: the seeded batch, and how to make a partly pruned
    model run again before a later step's backward (its adapters, with the head counts pruned so far)."""

    batch: Callable[[], torch.Tensor]
    adapt: Callable[[dict[Any, int]], None]

    def before_step(self, pruner: Any, step: int, heads: dict[Any, int]) -> None:
        """Fill the gradients ``pruner``'s importance ranks by, when it reads any; ``heads``: counts so far."""
        if gradient_kind(pruner.importance) is None:
            return  # weight-only criteria: no batch built, no backward
        if step > 1:
            self.adapt(heads)  # the partly pruned model must run for this step's backward
        prepare_gradients(pruner, self.batch())


def gradient_feed(
    spec: ModelSpec, config: PruneConfig, seed: int, model: nn.Module, inputs: torch.Tensor
) -> GradientFeed:
    """The feed of one prune: a batch of two from ``seed + 1`` (not the checks' inputs), on the inputs' device.

    Between steps the attention attributes a forward reshapes with are stale
    (the engine adapts after the last step), so a later step's backward would
    fail: ``adapt`` applies the spec's adapters first, with the heads removed
    so far when the config prunes heads.
    """
    from pytest_tprune.engine.adapters import apply_adapters

    def adapt(heads: dict[Any, int]) -> None:
        apply_adapters(model, spec.adapters, dict(heads) if config.prune_num_heads else {})

    return GradientFeed(lambda: spec.make_inputs(2, seed + 1).to(inputs.device), adapt)


def gradient_kind(importance: Any) -> str | None:
    """``"hessian"``, ``"taylor"`` or None (the importance reads weights only), by class."""
    import torch_pruning as tp

    hessian = getattr(tp.importance, "GroupHessianImportance", None)
    taylor = getattr(tp.importance, "GroupTaylorImportance", None)
    if hessian is not None and isinstance(importance, hessian):
        return "hessian"
    if taylor is not None and isinstance(importance, taylor):
        return "taylor"
    return None


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    from pytest_tprune.engine.measure import output_tensor

    return output_tensor(model(batch)).float().square().mean()


def prepare_gradients(pruner: Any, batch: torch.Tensor) -> None:
    """Fill ``param.grad`` of the pruner's model for its importance (nothing for weight-only criteria).

    Taylor: one backward over the whole batch. Hessian: one backward per
    sample, each accumulated into the importance (``accumulate_grad``), as
    torch-pruning's examples do. The model's train/eval mode is kept.
    """
    import torch

    kind = gradient_kind(pruner.importance)
    if kind is None:
        return
    model: nn.Module = pruner.model
    with torch.enable_grad():
        if kind == "hessian":
            pruner.importance.zero_grad()
            for index in range(batch.shape[0]):
                model.zero_grad(set_to_none=True)
                _loss(model, batch[index : index + 1]).backward()
                _zero_missing(model)
                pruner.importance.accumulate_grad(model)
        else:
            model.zero_grad(set_to_none=True)
            _loss(model, batch).backward()
            _zero_missing(model)


def _zero_missing(model: nn.Module) -> None:
    import torch

    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


def clear_gradients(pruner: Any) -> None:
    """Drop the gradients the ranking used: the pruned model's checks start from none."""
    model = getattr(pruner, "model", None)
    if model is not None and gradient_kind(pruner.importance) is not None:
        model.zero_grad(set_to_none=True)

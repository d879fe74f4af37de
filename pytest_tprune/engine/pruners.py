"""Custom torch-pruning pruners for layers whose extra parameters it does not know.

torch-pruning prunes a Conv2d subclass with its plain ConvPruner, which only
touches ``weight`` and ``bias``. A subclass with a per-output-channel parameter
of its own (timm's ScaledStdConv2d ``gain``) then keeps a stale parameter and
breaks in its forward. A pruner here extends the stock one to prune those too.

Pruners are kept in a :class:`~pytest_tprune.engine.registry.TypeRegistry`
with the adapters' lookup rule: a subclass of a registered class gets its
pruner, as it gets its adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.registry import TypeRegistry

if TYPE_CHECKING:
    from torch import nn

PrunerFactory = Callable[[], Any]

PRUNERS: TypeRegistry[PrunerFactory] = TypeRegistry()


def register_pruner(*types: type | str) -> Callable[[PrunerFactory], PrunerFactory]:
    """Decorator registering a factory of a torch-pruning pruner for module types."""
    return PRUNERS.register(*types)


def builtin_pruners(model: nn.Module) -> dict[type, Any]:
    """``customized_pruners`` for every class of ``model`` that has a registered pruner (fresh instances).

    torch-pruning matches ``customized_pruners`` by exact type, so each class
    present is resolved through the registry's MRO rule and listed itself.
    """
    found: dict[type, Any] = {}
    for cls in dict.fromkeys(type(module) for module in model.modules()):
        factory = PRUNERS.lookup(cls)
        if factory is not None:
            found[cls] = factory()
    return found


def kept_indices(count: int, removed: Sequence[int]) -> list[int]:
    """The indices of ``count`` channels that survive removing ``removed``, in order."""
    gone = {int(i) for i in removed}
    return [i for i in range(count) if i not in gone]


@register_pruner("timm.layers.std_conv.ScaledStdConv2d", "timm.layers.std_conv.ScaledStdConv2dSame")
def scaled_std_conv_pruner() -> Any:
    """ConvPruner that also prunes the per-output-channel ``gain`` (shape (out, 1, 1, 1))."""
    import torch
    import torch_pruning as tp

    class ScaledStdConvPruner(tp.pruner.function.ConvPruner):
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            gain: torch.Tensor = layer.gain  # type: ignore[assignment]
            keep = kept_indices(int(gain.shape[0]), idxs)
            layer = super().prune_out_channels(layer, idxs)
            layer.gain = torch.nn.Parameter(gain.data[keep], requires_grad=gain.requires_grad)
            return layer

    return ScaledStdConvPruner()


@register_pruner("timm.models.metaformer.GroupNorm1NoBias")
def bias_free_group_norm_pruner() -> Any:
    """GroupNormPruner for a GroupNorm whose ``bias`` is None (MetaFormer v2's ``GroupNorm1NoBias``).

    The stock pruner prunes ``bias`` unconditionally and fails on None; this one
    prunes ``weight`` and the channel count and leaves the absent bias absent.
    """
    import torch_pruning as tp

    class BiasFreeGroupNormPruner(tp.pruner.function.GroupNormPruner):
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = kept_indices(int(layer.num_channels), idxs)  # type: ignore[arg-type]
            layer.num_channels = len(keep)  # type: ignore[assignment]
            if layer.affine:
                layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            return layer

        prune_in_channels = prune_out_channels

    return BiasFreeGroupNormPruner()

"""Registers ACME's models with pytest-tprune (imported by ../conftest.py).

``register_model`` runs when this module is imported, so the conftest.py
imports it; every xdist worker imports the conftest.py, hence registers too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from acmenets.models import AcmeAttention, AcmeAttnNet, AcmeCNN, ChannelScale
from pytest_tprune import ModelSpec, PruneConfig, register_model


class ChannelScalePruner(tp.pruner.function.BasePruningFunc):
    """Teaches torch-pruning our layer: its channels are the entries of ``weight``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, ChannelScale)
        removed = set(idxs)
        keep = [i for i in range(layer.weight.shape[0]) if i not in removed]
        layer.weight = nn.Parameter(layer.weight.data[keep])
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])

    get_in_channels = get_out_channels


@register_model(input_size=(3, 32, 32), customized_pruners=lambda model: {ChannelScale: ChannelScalePruner()})
def acme_cnn() -> nn.Module:
    return AcmeCNN(widths=(16, 32))


def sync_attention(module: nn.Module) -> None:
    """Adapter: after pruning, ``qkv`` holds 3 x num_heads x head_dim outputs with a smaller head_dim."""
    assert isinstance(module, AcmeAttention)
    module.head_dim = module.qkv.out_features // (3 * module.num_heads)


def acme_attn_spec() -> ModelSpec:
    """A spec spelled out field by field (returned by the conftest's pytest_tprune_models hook)."""
    return ModelSpec(
        name="acme_attn",
        factory=AcmeAttnNet,
        input_size=(3, 32, 32),
        # the classifier keeps its 10 outputs (the default is the last layer with weights: the same here)
        ignored_layers=lambda model: [model.head],
        # prune head dimensions, keeping the heads (torch-pruning groups qkv channels per head)
        num_heads=lambda model: {m.qkv: m.num_heads for m in model.modules() if isinstance(m, AcmeAttention)},
        # a parameter outside any layer: prune its channel dimension (2) with the embedding width
        unwrapped_parameters=lambda model: [(model.pos_embed, 2)],
        # recompute head_dim after pruning, or AcmeAttention.forward's reshape fails
        adapters={AcmeAttention: sync_attention},
    )


def acme_recipe(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig) -> nn.Module:
    """ACME's own recipe, the one it ships: L1 magnitude, heads kept, head_dim synced by hand.

    The suite runs this instead of its engine (``prune_function``) and checks what it
    returns like any other case: every group its pruner offered must be pruned as the
    config's ratio says, the forward must run, the goldens must hold.
    """
    attention = [m for m in model.modules() if isinstance(m, AcmeAttention)]
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=config.ratio,
        global_pruning=config.global_pruning,
        ignored_layers=[model.head],
        num_heads={m.qkv: m.num_heads for m in attention},
        unwrapped_parameters=[(model.pos_embed, 2)],
    )
    pruner.step()
    for module in attention:
        sync_attention(module)
    return model


register_model("acme_attn_l1", input_size=(3, 32, 32), prune_function=acme_recipe)(AcmeAttnNet)

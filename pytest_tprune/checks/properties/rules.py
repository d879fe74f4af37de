"""Soft-pruning rules: which tensor slices removing a group's channels zeroes, and where that is not equivalent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

WIDTH_COUPLED_ATTENTION = ("AttentionPoolLatent",)
"""timm attention modules whose forward reshapes the attention output with the *input* width ``C``."""


def mixes_channels(module: Any) -> bool:
    """A norm whose statistics span channels: true of every norm but Batch- and InstanceNorm."""
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm

    if not isinstance(module, nn.Module) or isinstance(module, (_BatchNorm, _InstanceNorm)):
        return False
    rms = getattr(nn, "RMSNorm", nn.LayerNorm)
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, rms)) or "Norm" in type(module).__name__


def is_depthwise(conv: Any) -> bool:
    """torch-pruning's test: groups == out_channels > 1 (it prunes in and out channels together)."""
    return bool(conv.groups == conv.out_channels and conv.out_channels > 1)


def member_rule(
    target: Any, direction: str, pruning_dim: int, depthwise: bool | None = None
) -> tuple[str, str, int] | str:
    """``(rule, axis, dim)`` saying which slices the removal of channels zeroes, or why none applies.

    ``axis`` names the tensor dimension of the original model the indices live
    in (``out`` or ``in``), so that indices of later iterative steps can be
    mapped back to it; BatchNorm, depthwise convolutions and parameters prune
    one dimension whatever the handler, so they always use ``out``.
    ``depthwise`` says whether a convolution was depthwise *in the unpruned
    model*: the rule zeroes slices of the unpruned tensors, and a grouped
    convolution whose output was pruned to one channel per group looks
    depthwise by then (dla46x_c's 64 -> 64, groups=32 bottleneck conv), while its
    input channels still number as in a grouped one.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.instancenorm import _InstanceNorm

    if isinstance(target, nn.Parameter):
        return ("param", "out", pruning_dim)
    if isinstance(target, _ConvNd):
        if target.transposed:
            return f"no soft-pruning rule for transposed convolution {type(target).__name__}"
        if (is_depthwise(target) if depthwise is None else depthwise) or direction == "out":
            return ("rows", "out", 0)
        return ("cols", "in", 1) if target.groups == 1 else ("grouped-cols", "in", 1)
    if isinstance(target, nn.Linear):
        return ("rows", "out", 0) if direction == "out" else ("cols", "in", 1)
    if isinstance(target, nn.Embedding):
        return ("cols", "out", 1)
    norm_like = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)
    if isinstance(target, norm_like) or mixes_channels(target):
        own = [p for p in target.parameters(recurse=False) if p.ndim >= 1]
        if any(p.ndim > 1 for p in own):
            return f"no soft-pruning rule for {type(target).__name__} with multi-dimensional parameters"
        return ("vector", "out", -1)
    if isinstance(target, nn.Module) and not any(True for _ in target.parameters()):
        return ("none", "out", 0)
    return f"no soft-pruning rule for {type(target).__name__}"


def blockers(
    target: Any, owner: Any, direction: str, axis: str, is_head_projection: bool, compared_unfused: bool = False
) -> list[str]:
    """Why soft pruning of this member would not be equivalent to removing its channels.

    ``compared_unfused``: the comparison runs with timm's attention on its manual path
    (:func:`~pytest_tprune.checks.properties.unfuse_attention`), so fused attention blocks nothing.
    """
    from torch import nn

    found = []
    norm = target if not isinstance(target, nn.Parameter) else owner  # an unwrapped norm weight: its module
    if mixes_channels(norm):
        found.append(f"{type(norm).__name__} normalises over the pruned channels")
    if "StdConv" in type(target).__name__ and axis == "in":
        found.append(f"{type(target).__name__} standardises its weight over the pruned input channels")
    if is_head_projection and direction == "out" and type(owner).__name__ in WIDTH_COUPLED_ATTENTION:
        found.append(
            f"{type(owner).__name__} reshapes its attention output to its input width: "
            "its head dims are only valid pruned together with the embedding dim"
        )
    fused = not compared_unfused and getattr(owner, "fused_attn", False) is True
    if is_head_projection and direction == "out" and fused:
        found.append(
            f"fused attention in {type(owner).__name__}: scaled_dot_product_attention scales by "
            "1/sqrt(pruned head_dim) and ignores the kept `scale`"
        )
    return found


def owner_of(model: nn.Module, name: str) -> Any:
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    try:
        return model.get_submodule(parent)
    except AttributeError:
        return None

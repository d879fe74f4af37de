"""Make every channel of a freshly initialised model distinguishable, and turn fused attention off.

A fresh timm init leaves many tensors constant across channels (BatchNorm
statistics 0 and 1, norm weights 1, biases 0), and then keeping the wrong
channel of such a tensor changes nothing observable: every check that compares
tensors runs on a perturbed copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PERTURB_SCALE = 0.1
PERTURB_FLOOR = 0.02


def perturb(model: nn.Module, seed: int, scale: float = PERTURB_SCALE, floor: float = PERTURB_FLOOR) -> nn.Module:
    """Make every channel distinguishable, in place and reproducibly; returns ``model``.

    Every parameter and floating buffer ``t`` becomes ``t * (1 + scale * N1) +
    sigma * N2`` with ``N1, N2`` standard normal draws from a generator seeded
    with ``seed`` and ``sigma = max(scale * rms(t), floor)``. The multiplicative
    term keeps a tensor's magnitude and breaks ties between equal entries; the
    additive term gives tensors that are constant at init (biases 0, norm
    weights 1, BatchNorm means 0, layer-scale gammas of 1e-5) distinct values
    of an observable size. BatchNorm ``running_var`` is multiplied by
    ``exp(scale * N1)`` and gets ``floor * |N2|`` added instead, so it stays
    positive. Non-finite entries (masks of ``-inf``), integer buffers and
    non-persistent buffers are left alone: the last are constants the module
    derives from its configuration (timm's ``BlurPool2d`` filter, one blur
    kernel repeated per channel; position tables), not state a checkpoint
    carries, and an adapter may rely on them being the same for every channel.

    Why: a fresh timm init leaves many tensors constant across channels, and
    then keeping the wrong channel of such a tensor changes nothing observable;
    the correctness checks (criterion, functional equivalence) perturb first so
    that a wrong channel shows up in the output.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: list[tuple[str, torch.Tensor]] = list(model.named_parameters())
    tensors += [(name, b) for name, b in _persistent_buffers(model) if b.is_floating_point()]
    with torch.no_grad():
        for name, tensor in tensors:
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            n1 = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float64)
            n2 = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float64)
            old = tensor.detach().to(device="cpu", dtype=torch.float64)
            finite = torch.isfinite(old)
            if name.endswith("running_var"):
                new = old.clamp(min=0) * torch.exp(scale * n1) + floor * n2.abs()
            else:
                rms = float(old[finite].pow(2).mean().sqrt()) if bool(finite.any()) else 0.0
                new = old * (1 + scale * n1) + max(scale * rms, floor) * n2
            tensor.copy_(torch.where(finite, new, old).to(device=tensor.device, dtype=tensor.dtype))
    return model


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model.named_buffers()`` less each module's non-persistent ones (those left out of its state_dict)."""
    found: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in skip and id(buffer) not in seen:  # a shared buffer once
                seen.add(id(buffer))
                found.append((f"{prefix}.{name}" if prefix else name, buffer))
    return found


def unfuse_attention(model: nn.Module) -> list[str]:
    """Switch timm attention modules to their manual path; returns the modules switched.

    The manual path scales queries by the module's ``scale``, which the engine
    keeps when it prunes head dims; the fused path (``F.scaled_dot_product_attention``)
    ignores it and uses ``1/sqrt`` of the pruned head dim instead.
    """
    switched = []
    for name, module in model.named_modules():
        if getattr(module, "fused_attn", None) is True:
            setattr(module, "fused_attn", False)  # noqa: B010 - a plain attribute that timm annotates Final
            switched.append(name)
    return switched

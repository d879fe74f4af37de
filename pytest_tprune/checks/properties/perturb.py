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
    tensors += _persistent_buffers(model)
    tensors = [(name, t) for name, t in tensors if t.is_floating_point() and t.numel() > 0]
    if not tensors:
        return model
    draws = _Draws(max(t.numel() for _, t in tensors), generator)
    with torch.no_grad():
        for name, tensor in tensors:
            tensor.copy_(_perturbed(tensor.detach(), name.endswith("running_var"), draws, scale, floor))
    return model


class _Draws:
    """Standard normal draws from one seeded CPU generator, into two reused float32 buffers.

    Why: perturbing is otherwise the most expensive step of the equivalence
    check on large models (two draws per parameter: 130 M parameters for
    ``vgg11``). float32 draws cost a quarter of float64's, and refilling the
    same buffers spares the page faults of fresh allocations. The generator is
    the CPU's whatever the model's device, so the perturbed model is the same
    on every device.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        import torch

        self._buffers = (torch.empty(size), torch.empty(size))
        self._generator = generator

    def pair(self, shape: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        n = shape.numel()
        first, second = (b[:n].view(shape).normal_(generator=self._generator) for b in self._buffers)
        return first.to(dtype), second.to(dtype)


def _perturbed(tensor: torch.Tensor, variance: bool, draws: _Draws, scale: float, floor: float) -> torch.Tensor:
    """``tensor``'s perturbed values (the formula is :func:`perturb`'s), computed on the CPU in float32 or float64."""
    import torch

    work_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    old = tensor.to(device="cpu", dtype=work_dtype)
    n1, n2 = draws.pair(tensor.shape, work_dtype)
    finite = None if bool(torch.isfinite(old.sum())) else torch.isfinite(old)  # a finite sum: no inf or nan
    if variance:
        new = n1.mul_(scale).exp_().mul_(old.clamp(min=0)).add_(n2.abs_(), alpha=floor)
    else:
        new = n1.mul_(scale).add_(1.0).mul_(old).add_(n2, alpha=max(scale * _rms(old, finite), floor))
    return new if finite is None else torch.where(finite, new, old)


def _rms(values: torch.Tensor, finite: torch.Tensor | None) -> float:
    """Root mean square of the finite entries of ``values`` (0.0 when there are none)."""
    import torch

    kept = values if finite is None else values[finite]
    if kept.numel() == 0:
        return 0.0
    norm = float(torch.linalg.vector_norm(kept))
    if norm == float("inf"):  # float32 overflowed the sum of squares
        norm = float(torch.linalg.vector_norm(kept, dtype=torch.float64))
    return norm / kept.numel() ** 0.5


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

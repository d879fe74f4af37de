"""Counting and forward-pass helpers.

Two MAC counters on purpose: torch-pruning's ``count_ops_and_params`` is what
the seed prints (so the CLI matches it), but it matches hooks by exact type and
skips timm's norm subclasses; summing torch's FLOP formulas (those of
``FlopCounterMode``) over the aten ops that run is the independent figure
correctness checks can lean on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tp_counts(model: nn.Module, inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) as torch-pruning counts them: the seed's figures."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, inputs)
    return int(macs), int(params)


def forward_with_flops(model: nn.Module, inputs: torch.Tensor) -> tuple[Any, int]:
    """One no-grad forward that also yields the independent MAC count (FLOPs / 2).

    The FLOP formulas are ``FlopCounterMode``'s (its ``flop_registry``), summed
    by a bare dispatch mode: the same total without ``FlopCounterMode``'s
    per-module bookkeeping, which costs about a fifth of a forward pass.
    """
    import torch

    counter = _make_flop_counter()
    with torch.no_grad(), counter:
        output = model(inputs)
    return output, int(counter.flops) // 2


def _make_flop_counter() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    count = _flop_formula()

    class FlopSum(TorchDispatchMode):
        """Sums the FLOPs of every aten op that has a formula, nothing else."""

        flops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.flops += count(func._overloadpacket, args, kwargs, out)
            return out

    return FlopSum()


FlopFormula = Callable[[Any, Any, dict[str, Any], Any], int]


def _flop_formula() -> FlopFormula:
    """``(op, args, kwargs, out) -> FLOPs`` (0 for an op without a formula), from whichever table torch has.

    torch >= 2.2 keeps ``flop_registry``, whose formulas take the output as
    ``out_val``; torch 2.1 keeps ``flop_mapping``, whose formulas take shapes.
    Detected by what the module holds, so both count the same formulas.
    """
    from torch.utils import flop_counter

    registry = getattr(flop_counter, "flop_registry", None)
    if registry is not None:

        def with_values(op: Any, args: Any, kwargs: dict[str, Any], out: Any) -> int:
            formula = registry.get(op)
            return int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0

        return with_values
    from torch.utils._pytree import tree_map

    mapping = flop_counter.flop_mapping  # type: ignore[attr-defined]  # torch 2.1 only
    get_shape = flop_counter.get_shape

    def with_shapes(op: Any, args: Any, kwargs: dict[str, Any], out: Any) -> int:
        formula = mapping.get(op)
        if formula is None:
            return 0
        shape_args, shape_kwargs, out_shape = tree_map(get_shape, (args, kwargs, out))
        return int(formula(*shape_args, **shape_kwargs, out_shape=out_shape))

    return with_shapes


def output_tensor(output: Any) -> torch.Tensor:
    """The logits of a model output (some models return tuples or dicts)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return output_tensor(output[0])
    if isinstance(output, dict) and output:
        return output_tensor(next(iter(output.values())))
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor")


def shape_of(output: Any) -> list[int]:
    return [int(d) for d in output_tensor(output).shape]


@contextmanager
def module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Track which modules are mid-forward, so a failure can name the innermost one."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():

        def enter(_m: nn.Module, _args: Any, name: str = name) -> None:
            stack.append(name)

        def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def failing_module(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """Re-run a failing forward with hooks and return the innermost module's name."""
    import torch

    with module_stack(model) as stack, torch.no_grad():
        try:
            model(inputs)
        except Exception:
            return (stack[-1] or "<root>") if stack else None
    return None


def unreached_parameters(model: nn.Module, inputs: Any, train: bool = False) -> frozenset[str]:
    """Parameters a backward pass from the output does not reach, in eval or train mode.

    Computed on the unpruned model too, so that parameters a model never uses
    (e.g. an unused auxiliary head) are not blamed on pruning; the mode must
    be the one the pruned model's backward ran in.
    """
    model.zero_grad(set_to_none=True)
    model.train(train)
    output_tensor(model(inputs)).float().sum().backward()
    model.eval()
    unreached = frozenset(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    model.zero_grad(set_to_none=True)
    return unreached


def eval_output(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's output tensor on ``inputs`` in eval mode, without autograd."""
    import torch

    model.eval()
    with torch.no_grad():
        return output_tensor(model(inputs)).detach()

"""Saving and reloading a pruned model: the two ways torch-pruning documents, each a round trip.

A pruned model no longer matches its timm constructor, so it cannot be
reloaded with ``load_state_dict`` into ``timm.create_model(...)``.
torch-pruning documents two ways instead: pickling the whole module
(``torch.save(model)``) and its own ``torch_pruning.state_dict`` /
``load_state_dict``, which records every module's ``__dict__`` and public
attributes and sets them on a fresh unpruned model. Each is checked as a
user would run it, through ``torch.save``/``torch.load``: the loaded model
must equal the pruned one bit for bit and share no tensor with it.

A way that raises is a *finding*, not necessarily a failure: when the
unpruned model cannot make the same round trip (torch-pruning's state
cannot set timm's read-only ``ConvNormAct.in_channels``, or cannot pickle
an LSTM's weak references), the model does not support that way at all and
the report says so; when only the pruned model fails, pruning broke saving,
and that is a problem.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_tprune.checks.properties.problems import same_model_problems
from pytest_tprune.engine.measure import eval_output

if TYPE_CHECKING:
    import torch
    from torch import nn

WHOLE_MODULE = "torch.save(model)"
TP_STATE = "torch_pruning.state_dict"
SAVE_PATHS = (WHOLE_MODULE, TP_STATE)
"""The round trips checked, by the name reports and goldens use."""


@dataclass
class SaveLoad:
    """What the round trips found: problems (pruning broke something) and each way's status."""

    problems: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)  # way -> "ok" or "unsupported by the model: <error>"


def _through_bytes(obj: Any) -> Any:
    """``obj`` saved with ``torch.save`` and loaded back (``weights_only=False``: both ways pickle modules)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _whole_module(model: nn.Module, fresh: Callable[[], nn.Module]) -> nn.Module:
    loaded: nn.Module = _through_bytes(model)
    return loaded


def _tp_state(model: nn.Module, fresh: Callable[[], nn.Module]) -> nn.Module:
    import torch_pruning as tp

    loaded: nn.Module = tp.load_state_dict(fresh(), state_dict=_through_bytes(tp.state_dict(model)))
    return loaded


_LOADERS: dict[str, Callable[[nn.Module, Callable[[], nn.Module]], nn.Module]] = {
    WHOLE_MODULE: _whole_module,
    TP_STATE: _tp_state,
}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def loaded_problems(
    pruned: nn.Module, loaded: nn.Module, inputs: torch.Tensor, what: str, pruned_output: torch.Tensor | None = None
) -> list[str]:
    """``loaded`` equals ``pruned`` bit for bit and shares no tensor with it (``pruned_output``: ``pruned``'s
    eval output on ``inputs``, when the caller has it)."""
    problems = same_model_problems(pruned, loaded, inputs, f"{what} differs from the pruned one", pruned_output)
    pointers = {p.data_ptr() for p in pruned.parameters()}
    shared = [n for n, p in loaded.named_parameters() if p.data_ptr() in pointers]
    if shared:
        problems.append(f"{what} shares tensors with the pruned one: {', '.join(shared[:5])}")
    return problems


def save_load_round_trips(
    pruned: nn.Module,
    unpruned: nn.Module,
    inputs: torch.Tensor,
    paths: tuple[str, ...] = SAVE_PATHS,
    unsupported: dict[str, str] | None = None,
) -> SaveLoad:
    """Each way of :data:`SAVE_PATHS` saves ``pruned`` and loads it back into a copy of ``unpruned``.

    ``unpruned`` is not modified. A way that raises on the pruned model is
    tried on the unpruned one: if that raises too, the way is recorded as
    unsupported by the model; if not, pruning broke it. ``unsupported`` is a
    per-model cache of those statuses (way -> status), filled here, so that
    the other configs of the model do not retry a way it cannot take.
    """
    found = SaveLoad()
    known = {} if unsupported is None else unsupported

    def fresh() -> nn.Module:
        return copy.deepcopy(unpruned)

    outputs: list[torch.Tensor] = []  # the pruned model's eval output, computed once for every way

    def pruned_output() -> torch.Tensor:
        if not outputs:
            outputs.append(eval_output(pruned, inputs))
        return outputs[0]

    for path in paths:
        if path in known:
            found.paths[path] = known[path]
            continue
        load = _LOADERS[path]
        try:
            loaded = load(pruned, fresh)
        except Exception as exc:
            try:
                load(unpruned, fresh)
            except Exception as unpruned_exc:
                found.paths[path] = known[path] = f"unsupported by the model: {_error(unpruned_exc)}"
                continue
            found.paths[path] = f"broken by pruning: {_error(exc)}"
            found.problems.append(f"{path}: fails on the pruned model ({_error(exc)}), works on the unpruned one")
            continue
        problems = loaded_problems(pruned, loaded, inputs, f"{path}: loaded model", pruned_output())
        found.paths[path] = "differs" if problems else "ok"
        found.problems += problems
    return found


def save_load_problems(pruned: nn.Module, fresh: nn.Module, inputs: torch.Tensor, serialize: bool = True) -> list[str]:
    """``torch_pruning.state_dict`` saved and loaded into a fresh unpruned model reproduces the pruned one.

    The property suite's form: a raising ``load_state_dict`` is a problem here.
    ``serialize=False`` loads the in-memory state directly, which shows that
    torch-pruning's state is a shallow copy: the "fresh" model then shares its
    submodules and parameters with the pruned one.
    """
    import torch_pruning as tp

    state = tp.state_dict(pruned)
    if serialize:
        state = _through_bytes(state)
    try:
        loaded = tp.load_state_dict(fresh, state_dict=state)
    except Exception as exc:  # e.g. a read-only property recorded as an attribute
        return [f"torch_pruning.load_state_dict failed: {type(exc).__name__}: {exc}"]
    return loaded_problems(pruned, loaded, inputs, "loaded model")

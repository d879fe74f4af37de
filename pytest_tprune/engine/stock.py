"""The stock run: plain torch-pruning with the seed recipe's arguments, none of the engine's guards.

The engine copes with what torch-pruning gets wrong (it leaves groups whole,
retries after a broken forward, bounds walks that never close, tolerates
mappings torch-pruning cannot build). A user who runs stock torch-pruning in
production needs to know what *it* does with their model, so every case also
prunes a copy with a plain ``MetaPruner``: the seed recipe's arguments
(importance, ratio, mode, round_to, steps, per-layer cap, classifier ignored,
attention heads and head pruning) plus the spec's own pruners and unwrapped parameters, none of this
project's pruners or guards, one try. The adapters run after it, as the seed
script's attribute updates do: without them every attention model's forward
would break on attributes any user updates by hand.

Only the group walk is watched (:func:`~pytest_tprune.engine.tp_internals.detect_cycles`):
where the engine would stop a walk that does not close, the stock run is
judged to hang, in a second and the same on every machine, instead of
walking on for minutes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec
from pytest_tprune.engine.resources import time_limit
from pytest_tprune.errors import CaseTimeout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.tp_internals.ledger import OfferedGroup

OK = "ok"
SKIPS_GROUPS = "skips groups"
BREAKS_FORWARD = "breaks the forward"
CRASHES = "crashes"
HANGS = "hangs"
VERDICTS = (OK, SKIPS_GROUPS, BREAKS_FORWARD, CRASHES, HANGS)
"""Stock verdicts from best to worst (``tprune compare`` reads a move to the right as a regression)."""

STOCK_TIME_LIMIT_S = 60.0
"""Wall-clock limit of a stock run, for hangs the walk counter does not see; a run past it ``hangs``."""

_WHAT = "the stock torch-pruning run"


class StockRunFault(Exception):
    """The stock run failed in this project's own code, not in torch-pruning's: no verdict to record.

    Raised instead of ``crashes`` so that a bug of ours (an import that moved, an
    attribute we misread) never reads as torch-pruning crashing on the model.
    """


def raised_by_this_package(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is in pytest-tprune's own code (a library or the model is not)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "/pytest_tprune/" in frames[-1].filename.replace("\\", "/")


@dataclass
class StockRun:
    """How the stock run ended: ``verdict`` when it did not run through, else the groups it offered."""

    verdict: str = ""  # CRASHES, HANGS or BREAKS_FORWARD; "" when it pruned and the forward is sound
    detail: str = ""
    offered: list[OfferedGroup] = field(default_factory=list)


def run_stock(
    spec: ModelSpec,
    model: nn.Module,
    inputs: torch.Tensor,
    config: PruneConfig,
    seed: int,
    output_shape: list[int],
    limit: float = STOCK_TIME_LIMIT_S,
) -> StockRun:
    """Prune ``model`` (a pristine copy, pruned in place) with stock torch-pruning and run its forward.

    ``output_shape`` is the unpruned model's output shape on ``inputs``.
    """
    from pytest_tprune.engine.tp_internals import TraversalCycle

    try:
        with time_limit(limit, _WHAT), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the engine's prune already recorded what torch-pruning warns about
            offered, heads = _prune(spec, model, inputs, config, seed)
    except CaseTimeout as exc:
        if _WHAT not in str(exc):
            raise  # the case's own limit: not ours to judge
        return StockRun(HANGS, f"ran past {limit:g} s")
    except TraversalCycle as exc:
        return StockRun(HANGS, f"a group walk does not close: {exc}")
    except Exception as exc:
        if raised_by_this_package(exc):
            raise StockRunFault(_described(exc)) from exc
        return StockRun(CRASHES, _described(exc))
    broken = _forward_problem(spec, model, inputs, output_shape, heads)
    return StockRun(BREAKS_FORWARD, broken, offered) if broken else StockRun(offered=offered)


def _prune(
    spec: ModelSpec, model: nn.Module, inputs: torch.Tensor, config: PruneConfig, seed: int
) -> tuple[list[OfferedGroup], dict[nn.Module, int]]:
    """The groups offered, and the head counts torch-pruning left (its ``num_heads``, for the adapters)."""
    from pytest_tprune.engine.gradients import gradient_feed
    from pytest_tprune.engine.pruning import Broke, run_pruner
    from pytest_tprune.engine.recipe import pruner_arguments
    from pytest_tprune.engine.tp_internals.ledger import install_ledger

    model.eval()
    pruner = _watched_pruner()(model, inputs, **pruner_arguments(model, spec, config, seed, engine_pruners=False))
    ledger = pruner.tprune_ledger = install_ledger(pruner)  # the prune loop reports each yield to it
    try:
        run_pruner(pruner, config.iterative_steps, seed, gradients=gradient_feed(spec, config, seed, model, inputs))
    except Broke as broke:
        raise broke.error from None
    return list(ledger.offered), dict(pruner.num_heads) if config.prune_num_heads else {}


@cache
def _watched_pruner() -> type:
    """``MetaPruner`` whose graph counts its walks from the start: the constructor already walks every group."""
    import torch_pruning as tp

    from pytest_tprune.engine.tp_internals import detect_cycles, graph_property

    class WatchedPruner(tp.pruner.MetaPruner):
        DG = graph_property(detect_cycles)

    return WatchedPruner


def _forward_problem(
    spec: ModelSpec, model: nn.Module, inputs: torch.Tensor, output_shape: list[int], heads: dict[nn.Module, int]
) -> str:
    """What is wrong with the stock-pruned model's eval forward, or ``""``.

    ``heads`` (torch-pruning's counts after pruning) are set on the attention
    modules first, as the seed script does by hand after head pruning.
    """
    import torch

    from pytest_tprune.engine.adapters import apply_adapters
    from pytest_tprune.engine.measure import eval_output, failing_module

    try:
        apply_adapters(model, spec.adapters, heads)
        output = eval_output(model, inputs)
    except Exception as exc:
        module = failing_module(model, inputs)
        inside = f" in module '{module}'" if module and module != "<root>" else ""
        return f"{type(exc).__name__}{inside}: {_first_line(exc)}"
    if list(output.shape) != list(output_shape):
        return f"output shape {list(output.shape)} != unpruned {list(output_shape)}"
    if not bool(torch.isfinite(output).all()):
        return "output has non-finite values"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _described(exc: BaseException) -> str:
    """``ExcType: first line (file:line in function)``, the innermost frame, relative to site-packages."""
    from pytest_tprune.engine.records import raised_at

    where = raised_at(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}{f' ({where})' if where else ''}"

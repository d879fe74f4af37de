"""The pruning recipe: the seed script's steps, kept working as timm changes.

``prune()`` builds (or takes) a model, makes the seed's pruner
(:mod:`pytest_tprune.engine.recipe`), prunes group by group, applies adapters,
and measures. Every step is timed and a failure names its step, and the module
where one can be found, instead of surfacing a traceback from deep in torch.
When pruning breaks the model, it prunes again from a fresh copy with more
left whole (:func:`until_sound`). A caller that needs to see or steer each
group (the property suite's recorder) passes ``observe``: it runs the same
engine, not a copy of it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_tprune.engine.config import DEFAULT_SEED, PruneConfig
from pytest_tprune.engine.gradients import GradientFeed, clear_gradients, gradient_feed
from pytest_tprune.engine.left_whole import Culprit, LeftWhole, coupled_modules, failed_group
from pytest_tprune.engine.measure import failing_module, forward_with_flops, output_tensor, tp_counts
from pytest_tprune.engine.models import ModelSpec, check_adapters
from pytest_tprune.engine.outcome import (
    Baseline,
    GroupRecord,
    Pruned,
    PruneOutcome,
    attention_after,
    module_lines,
    tensor_shapes,
)
from pytest_tprune.engine.recipe import make_pruner, resolve_device
from pytest_tprune.engine.records import (
    ModelSource,
    effective_config,
    first_then_fresh,
    fresh_copies,
    raised_at,
    record_group,
    unique_messages,
)
from pytest_tprune.engine.tp_internals import (
    head_layers,
    restore_head_counts,
)
from pytest_tprune.engine.tp_internals.ledger import GroupLedger, close_step, note_yielded
from pytest_tprune.errors import PruneStepError

if TYPE_CHECKING:
    import torch
    from torch import nn

GroupHook = Callable[[Any, Any, int], bool]
"""``(pruner, group, step) -> prune it?``: sees every group the pruner yields, before it is pruned."""

Observe = Callable[["nn.Module", Any], GroupHook]
"""Called with the model and its fresh pruner at the start of every attempt; returns that attempt's hook."""


class _Clock:
    """Named wall-clock timings of the recipe's steps."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _fail(
    step: str, spec: ModelSpec, exc: BaseException, module: str | None = None, note: str | None = None
) -> PruneStepError:
    return PruneStepError(step, spec.name, exc, module=module or raised_at(exc), note=note)


def _left_whole_note(left_whole: list[LeftWhole]) -> str | None:
    """A forward that breaks after groups were left whole most often ties their width to a pruned one."""
    if not left_whole:
        return None
    first = left_whole[0]
    return f"after leaving {len(left_whole)} group(s) whole, first {first.root}: {first.reason}"


def run_pruner(
    pruner: Any,
    steps: int,
    seed: int,
    on_group: GroupHook | None = None,
    heads_left: dict[Any, int] | None = None,
    gradients: GradientFeed | None = None,
) -> list[GroupRecord]:
    """Prune group by group, recording each; seeds the RNG random importance draws from.

    ``on_group`` sees each group first; a group it declines is not pruned (nor recorded).
    ``gradients`` feeds the gradient-based importances their seeded batch
    (:mod:`pytest_tprune.engine.gradients`); weight-only criteria never use it.
    ``heads_left`` is filled with the head count of every attention projection
    as the pruned groups left it: torch-pruning lowers its ``num_heads`` before
    it yields a group, also for a group then refused (``check_pruning_group``)
    or declined here, so only the counts of pruned groups are taken from it,
    and a declined group's counts are put back for the steps after.
    """
    import random

    import torch

    heads = heads_left if heads_left is not None else {}
    heads.update({m: int(n) for m, n in (getattr(pruner, "num_heads", None) or {}).items()})
    records = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)  # torch-pruning < 1.6.1's RandomImportance shuffles with Python's random
        for step in range(1, steps + 1):
            if gradients is not None:
                gradients.before_step(pruner, step, heads)  # Taylor / Hessian rank by this step's gradients
            for group in pruner.step(interactive=True):
                layers = head_layers(pruner, group)
                if on_group is not None and not on_group(pruner, group, step):
                    restore_head_counts(pruner, layers, heads)
                    continue
                note_yielded(pruner, group)
                records.append(record_group(pruner, group, step, layers, heads))
                prune_group(pruner, group)
                heads.update({m: int(pruner.num_heads[m]) for m in layers})
            close_step(pruner)
    clear_gradients(pruner)
    return records


class Broke(Exception):
    """Pruning broke the model: the error, and what to leave whole on another try (None: nothing would help)."""

    def __init__(self, error: BaseException, culprit: Culprit | None, module: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.culprit = culprit
        self.module = module  # the innermost module a forward failed in, when known


def prune_group(pruner: Any, group: Any) -> None:
    """``group.prune()``; one that raises part-way names its root to leave whole on another try."""
    try:
        group.prune()
    except Exception as exc:
        raise Broke(exc, failed_group(pruner.DG, group, exc)) from exc


def forward_broke(model: nn.Module, inputs: torch.Tensor, exc: BaseException, culprits: Sequence[Culprit]) -> Broke:
    """The pruned ``model``'s forward raised ``exc``: the modules to leave whole on another try, if any."""
    module = failing_module(model, inputs)
    inside = module if module and module != "<root>" else None
    return Broke(exc, coupled_modules(model, inside, exc, culprits) if inside else None, module)


T = TypeVar("T")


def until_sound(models: Callable[[], nn.Module], attempt: Callable[[nn.Module, Sequence[Culprit]], T]) -> T:
    """Prune a model from ``models`` with ``attempt`` until it does not break, or nothing more would help.

    Each :class:`Broke` adds its culprit (leave whole what touches it) and the
    next attempt starts from a fresh model; the engine and the property
    suite's recorder share this, so they leave whole the same groups. Gives
    up, raising the last error, when the culprit is already covered or after
    ``MAX_RETRIES``.
    """
    culprits: list[Culprit] = []
    while True:
        model = models()
        try:
            return attempt(model, tuple(culprits))
        except Broke as failure:
            more = failure.culprit
            if (
                more is None
                or len(culprits) >= MAX_RETRIES
                or any(set(more.modules) <= set(c.modules) for c in culprits)
            ):
                raise failure.error from failure.__cause__
            culprits.append(more)
        del model


def _measured(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """The eval output on ``inputs`` (detached), the FLOP-formula MACs, torch-pruning's MACs and the params."""
    output, flop_macs = forward_with_flops(model, inputs)
    macs, params = tp_counts(model, inputs)
    return output_tensor(output).detach(), flop_macs, macs, params


def measure_baseline(spec: ModelSpec, model: nn.Module, inputs: torch.Tensor, seed: int) -> Baseline:
    """Measure the unpruned ``model`` (already on its device) on ``inputs``."""
    try:
        output, flop_macs, macs, params = _measured(model, inputs)
    except Exception as exc:
        raise _fail("forward", spec, exc, failing_module(model, inputs)) from exc
    return Baseline(
        key=(spec.name, seed, str(inputs.device)),
        tree=repr(model),
        modules=module_lines(model),
        shapes=tensor_shapes(model),
        output=output,
        flop_macs=flop_macs,
        macs=macs,
        params=params,
    )


MAX_RETRIES = 8
"""Times a model may be pruned again after pruning broke it (each time leaving more whole)."""


def prune(
    spec: ModelSpec,
    config: PruneConfig,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    model: nn.Module | ModelSource | None = None,
    baseline: Baseline | None = None,
    observe: Observe | None = None,
) -> Pruned:
    """Prune one model with one config and measure it.

    ``model`` is the pristine model to prune (in place), or a function that
    returns a fresh pristine copy each time it is called; without it the model
    is built from ``spec`` with ``seed``. When the pruned model's forward
    breaks, the model is pruned again from a fresh copy with the groups that
    touch the modules that broke left whole (:func:`~pytest_tprune.engine.left_whole.coupled_modules`),
    so a caller passing a model pays one copy of it, and a caller passing a
    function none. ``baseline`` is the unpruned model's measurement from an
    earlier case of the same model, seed and device (``Pruned.baseline``); it
    is measured when absent or when its key does not match. ``observe`` is
    called on every attempt with the model and its pruner, and returns the
    :data:`GroupHook` that sees (and may decline) each group of that attempt.
    """

    target = resolve_device(device)
    clock = _Clock()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = fresh_copies(spec, seed, model)
        with clock.step("build"):
            live, inputs = _first_model(spec, seed, fresh, model, target)
        if baseline is None or baseline.key != (spec.name, seed, str(inputs.device)):
            with clock.step("count"):
                baseline = measure_baseline(spec, live, inputs, seed)

        def rebuild() -> nn.Module:
            with clock.step("build"):
                return fresh().to(target)

        models = first_then_fresh(live, rebuild)
        del live  # a retry must not keep the broken first model alive
        before_pruning = attempt_start = len(caught)

        def prune_once(model: nn.Module, culprits: Sequence[Culprit]) -> _Attempt:
            nonlocal attempt_start
            attempt_start = len(caught)
            if spec.prune_function is not None:
                return _custom_once(spec, config, seed, model, inputs, clock, observe)
            return _prune_once(spec, config, seed, model, inputs, clock, culprits, observe)

        attempt = until_sound(models, prune_once)
        live = attempt.model
        # what building warned about, and what the attempt that stood did: not the broken tries
        caught[before_pruning:attempt_start] = []
    outcome = PruneOutcome(
        model=spec.name,
        config=effective_config(config, attempt.recipe).to_dict(),
        device=target,
        input_size=list(inputs.shape[1:]),
        modules_before=baseline.modules,
        modules_after=module_lines(live),
        shapes_before=baseline.shapes,
        shapes_after=tensor_shapes(live),
        macs_before=baseline.macs,
        macs_after=attempt.macs,
        params_before=baseline.params,
        params_after=attempt.params,
        flop_macs_before=baseline.flop_macs,
        flop_macs_after=attempt.flop_macs,
        output_shape_before=list(baseline.output.shape),
        output_shape_after=[int(d) for d in attempt.output.shape],
        ignored=attempt.ignored,
        heads=attempt.heads,
        groups=attempt.groups,
        left_whole=attempt.left_whole,
        adapted=attempt.adapted,
        warnings=unique_messages(caught),
        timings={k: round(v, 4) for k, v in clock.timings.items()},
        offered=attempt.ledger.offered,
        ignored_groups=attempt.ledger.ignored,
        attention=attention_after(live, attempt.heads) if config.prune_num_heads else {},
        recipe=attempt.recipe,
    )
    return Pruned(live, inputs, outcome, baseline, attempt.output)


def _first_model(
    spec: ModelSpec, seed: int, fresh: ModelSource, given: nn.Module | ModelSource | None, target: str
) -> tuple[nn.Module, torch.Tensor]:
    """The model to prune first and the inputs, on ``target``; a caller's model is checked against its spec."""
    from torch import nn

    try:
        model = given if isinstance(given, nn.Module) else fresh()  # build_model checks the spec itself
        if given is not None:
            check_adapters(spec, model.eval())
        inputs = spec.make_inputs(1, seed)
    except PruneStepError:
        raise
    except Exception as exc:
        raise _fail("build", spec, exc) from exc
    return model.to(target), inputs.to(target)


@dataclass
class _Attempt:
    """What one prune of the model produced, when its forward ran."""

    model: nn.Module
    ignored: list[str]
    heads: dict[str, int]
    groups: list[GroupRecord]
    left_whole: list[LeftWhole]
    adapted: list[str]
    output: torch.Tensor
    flop_macs: int
    macs: int
    params: int
    ledger: GroupLedger
    recipe: dict[str, Any] = field(default_factory=dict)
    """What of the recipe is the project's own (``PruneOutcome.recipe``); empty for the seed recipe."""


def _prune_once(
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    model: nn.Module,
    inputs: torch.Tensor,
    clock: _Clock,
    culprits: Sequence[Culprit],
    observe: Observe | None = None,
) -> _Attempt:
    """Trace, prune, adapt and measure ``model`` in place, leaving whole what touches ``culprits``."""
    names = {m: n for n, m in model.named_modules()}
    with clock.step("trace"):
        try:
            pruner = make_pruner(model, inputs, spec, config, seed, culprits)
        except PruneStepError:
            raise
        except Exception as exc:
            raise _fail("trace", spec, exc) from exc
    ignored = sorted(
        names[m] for m in pruner.ignored_layers if m in names and any(True for _ in m.parameters(recurse=False))
    )
    heads = {names[m]: n for m, n in pruner.num_heads.items() if m in names}
    heads_left: dict[nn.Module, int] = {}  # what the pruned groups left, filled by run_pruner
    with clock.step("prune"):
        try:
            on_group = observe(model, pruner) if observe is not None else None
            groups = run_pruner(
                pruner,
                config.iterative_steps,
                seed,
                on_group,
                heads_left,
                gradient_feed(spec, config, seed, model, inputs),
            )
        except Broke as failed:
            raise Broke(_fail("prune", spec, failed.error), failed.culprit) from failed.error
        except Exception as exc:
            raise _fail("prune", spec, exc) from exc
    left_whole = list(pruner.left_whole)
    ledger: GroupLedger = getattr(pruner, "tprune_ledger", None) or GroupLedger()
    recipe = dict(getattr(pruner, "tprune_recipe", {}))
    del pruner
    if not config.prune_num_heads:
        heads_left = {}  # without head pruning the adapters keep every num_heads as it is
    with clock.step("adapt"):
        try:
            adapted = _adapt(model, spec, heads_left)
        except Exception as exc:
            raise _fail("adapt", spec, exc) from exc
        if config.prune_num_heads:
            _check_head_counts(spec, model, heads_left)
    with clock.step("count"):
        try:
            measured = _measured(model, inputs)
        except Exception as exc:
            broke = forward_broke(model, inputs, exc, culprits)
            error = _fail("forward", spec, exc, broke.module, _left_whole_note(left_whole))
            raise Broke(error, broke.culprit) from exc
    return _Attempt(model, ignored, heads, groups, left_whole, adapted, *measured, ledger, recipe)


def _custom_once(
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    model: nn.Module,
    inputs: torch.Tensor,
    clock: _Clock,
    observe: Observe | None = None,
) -> _Attempt:
    """Run the spec's own prune function on ``model`` (:mod:`pytest_tprune.engine.custom`), then measure.

    Never a :class:`Broke`: the engine cannot tell a project's function what to
    leave whole, so a forward it breaks fails the case, naming the module.
    """
    from pytest_tprune.engine.custom import run_prune_function

    with clock.step("prune"):
        run = run_prune_function(spec, config, seed, model, inputs, observe)
    if config.prune_num_heads:
        with clock.step("adapt"):
            _check_head_counts(spec, run.model, run.heads_left)
    with clock.step("count"):
        try:
            measured = _measured(run.model, inputs)
        except Exception as exc:
            note = f"after the model's prune function {run.recipe['prune_function']}"
            raise _fail("forward", spec, exc, failing_module(run.model, inputs), note) from exc
    return _Attempt(run.model, run.ignored, run.heads, run.groups, [], [], *measured, run.ledger, run.recipe)


def _adapt(model: nn.Module, spec: ModelSpec, heads: dict[nn.Module, int]) -> list[str]:
    from pytest_tprune.engine.adapters import apply_adapters

    return apply_adapters(model, spec.adapters, heads)


class HeadCountMismatch(RuntimeError):
    """An attention module's heads disagree with what torch-pruning removed (see ``head_count_problems``)."""


def _check_head_counts(spec: ModelSpec, model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """Fail the adapt step, naming the first module, when head counts were not carried over.

    Not a :class:`Broke`: leaving groups whole cannot repair an attribute the
    adapters got wrong, and such a model's forward runs, so only this says so.
    """
    from pytest_tprune.engine.adapters import head_count_problems

    problems = head_count_problems(model, heads)
    if problems:
        module, detail = problems[0]
        more = f" (and {len(problems) - 1} more attention problem(s))" if len(problems) > 1 else ""
        raise _fail("adapt", spec, HeadCountMismatch(f"{detail}{more}"), module)

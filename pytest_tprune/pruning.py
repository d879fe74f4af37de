"""The pruning recipe: the seed script's steps, kept working as timm changes.

``prune()`` builds (or takes) a model, finds the layers to leave whole and the
attention heads, prunes with fresh argument dicts, applies adapters, and
measures. Every step is timed and a failure names its step, and the module
where one can be found, instead of surfacing a traceback from deep in torch.
"""

from __future__ import annotations

import copy
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_tprune.config import DEFAULT_SEED, PruneConfig
from pytest_tprune.errors import PruneStepError, UsageError
from pytest_tprune.left_whole import Culprit, LeftWhole, coupled_modules, failed_group, group_root
from pytest_tprune.measure import failing_module, forward_with_flops, output_tensor, tp_counts
from pytest_tprune.models import ModelSpec, build_model, check_adapters

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class GroupRecord:
    """What one pruned dependency group removed: enough to check the shape rule."""

    root: str
    direction: str  # "out" or "in": which dimension of the root was pruned
    channels: int  # channels of the root's pruned dimension before this group was pruned
    channel_groups: int  # torch-pruning's channel grouping (heads, group convs)
    removed: int
    members: list[str] = field(default_factory=list)
    step: int = 1


@dataclass
class PruneOutcome:
    """Everything a check needs about one pruned case, as plain data."""

    model: str
    config: dict[str, Any]
    device: str
    input_size: list[int]
    modules_before: dict[str, str]
    modules_after: dict[str, str]
    shapes_before: dict[str, list[int]]
    shapes_after: dict[str, list[int]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    flop_macs_before: int
    flop_macs_after: int
    output_shape_before: list[int]
    output_shape_after: list[int]
    ignored: list[str]
    heads: dict[str, int]
    groups: list[GroupRecord]
    left_whole: list[LeftWhole]
    """Groups torch-pruning could not prune consistently, left unpruned (see :mod:`pytest_tprune.left_whole`)."""
    adapted: list[str]
    warnings: list[str]
    timings: dict[str, float]

    @property
    def prune_config(self) -> PruneConfig:
        return PruneConfig.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """What the unpruned model measures: the same for every config of a model, seed and device.

    Measuring it costs two forwards (one summing FLOP formulas, one traced by
    torch-pruning's counter), so a caller that prunes one model with several
    configs measures it once and passes it to :func:`prune`.
    """

    key: tuple[str, int, str]  # model, seed, device
    tree: str
    modules: dict[str, str]
    shapes: dict[str, list[int]]
    output: torch.Tensor
    flop_macs: int
    macs: int
    params: int


@dataclass
class Pruned:
    """The live result: the pruned model and what it takes to check it."""

    model: nn.Module
    inputs: torch.Tensor
    outcome: PruneOutcome
    baseline: Baseline
    output: torch.Tensor
    """The pruned model's eval output on ``inputs`` (from the counting pass, so checks need not rerun it)."""

    @property
    def base_output(self) -> torch.Tensor:
        """The unpruned model's eval output on ``inputs``."""
        return self.baseline.output

    @property
    def tree_before(self) -> str:
        return self.baseline.tree

    @property
    def tree_after(self) -> str:
        """The pruned model's repr, made on demand: only the command line prints it."""
        return repr(self.model)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when present; an absent CUDA device is a usage error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"device '{device}' requested but CUDA is not available: use --device cpu or auto")
        index = int(device.split(":")[1]) if ":" in device and device.split(":")[1].isdigit() else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise UsageError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


def make_importance(name: str, seed: int) -> Any:
    import torch_pruning as tp

    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    if name == "random":
        return tp.importance.RandomImportance()
    raise UsageError(f"unknown importance '{name}'")


def _as_modules(value: Any) -> list[nn.Module]:
    from torch import nn

    if isinstance(value, nn.Module):
        return [value]
    if isinstance(value, (tuple, list)):
        return [m for item in value for m in _as_modules(item)]
    return []


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The output layers to leave whole: their width is the number of classes.

    Uses timm's ``get_classifier()`` (which may return several heads, e.g. a
    distillation head) and the pretrained config's ``classifier`` names; falls
    back to the last module with weights when neither names one.
    """
    found: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        found += _as_modules(get_classifier())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    for name in [names] if isinstance(names, str) else list(names or []):
        try:
            found.append(model.get_submodule(name))
        except AttributeError:
            continue
    found = [m for m in found if any(True for _ in m.parameters())]
    if not found:
        weighted = [m for m in model.modules() if getattr(m, "weight", None) is not None]
        found = weighted[-1:]
    unique: dict[int, nn.Module] = {id(m): m for m in found}
    return list(unique.values())


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Map each attention projection to its head count, for every module that has heads."""
    from torch import nn

    heads: dict[nn.Module, int] = {}
    projections = (nn.Linear, nn.Conv2d)
    for module in model.modules():
        count = getattr(module, "num_heads", None)
        if not isinstance(count, int) or count <= 0:
            continue
        kv_count = getattr(module, "num_kv_heads", None) or count
        for attr, n in (("qkv", count), ("q", count), ("k", kv_count), ("v", kv_count), ("kv", kv_count)):
            layer = getattr(module, attr, None)
            if isinstance(layer, projections):
                heads[layer] = int(n)
    return heads


def module_lines(model: nn.Module) -> dict[str, str]:
    """One seed-style line per module holding tensors: ``Linear(in_features=..)``."""
    lines = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            lines[name] = f"{type(module).__name__}({module.extra_repr()})"
    return lines


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shapes of every parameter and floating buffer: catches what a repr omits."""
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    shapes.update({name: list(b.shape) for name, b in model.named_buffers() if b.is_floating_point()})
    return dict(sorted(shapes.items()))


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


def _where(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame, for errors without a module."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    path = last.filename.split("site-packages/")[-1]
    return f"{path}:{last.lineno} in {last.name}"


def _fail(
    step: str, spec: ModelSpec, exc: BaseException, module: str | None = None, note: str | None = None
) -> PruneStepError:
    return PruneStepError(step, spec.name, exc, module=module or _where(exc), note=note)


def _left_whole_note(left_whole: list[LeftWhole]) -> str | None:
    """A forward that breaks after groups were left whole most often ties their width to a pruned one."""
    if not left_whole:
        return None
    first = left_whole[0]
    return f"after leaving {len(left_whole)} group(s) whole, first {first.root}: {first.reason}"


def make_pruner(
    model: nn.Module,
    inputs: torch.Tensor,
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    culprits: Sequence[Culprit] = (),
) -> Any:
    """A MetaPruner with fresh dicts: torch-pruning mutates its mutable defaults."""
    ignored = spec.ignored_layers(model) if spec.ignored_layers else classifier_layers(model)
    heads = dict(spec.num_heads(model)) if spec.num_heads else attention_heads(model)
    unwrapped = list(spec.unwrapped_parameters(model)) if spec.unwrapped_parameters else None
    from pytest_tprune.pruners import builtin_pruners

    pruners = builtin_pruners(model)
    if spec.customized_pruners:
        pruners.update(spec.customized_pruners(model))
    from pytest_tprune.left_whole import guarded_pruner

    return guarded_pruner()(
        model,
        inputs,
        importance=make_importance(config.importance, seed),
        global_pruning=config.global_pruning,
        pruning_ratio=config.ratio,
        iterative_steps=config.iterative_steps,
        ignored_layers=list(ignored),
        round_to=config.round_to,
        isomorphic=config.isomorphic,
        num_heads=dict(heads),
        in_channel_groups={},
        out_channel_groups={},
        unwrapped_parameters=unwrapped,
        customized_pruners=pruners or None,
        culprits=culprits,
    )


def _record_group(pruner: Any, group: Any, step: int) -> GroupRecord:
    graph = pruner.DG
    root, direction, channels = group_root(graph, group)
    get_groups = getattr(pruner, "_get_channel_groups", None)
    names = graph._module2name
    members = sorted({names.get(d.target.module, "?") for d, _ in group})
    return GroupRecord(
        root=root,
        direction=direction,
        channels=channels,
        channel_groups=int(get_groups(group)) if callable(get_groups) else 1,
        removed=len(group[0].idxs),
        members=members,
        step=step,
    )


def run_pruner(pruner: Any, steps: int, seed: int) -> list[GroupRecord]:
    """Prune group by group, recording each; seeds the RNG random importance draws from."""
    import torch

    records = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(1, steps + 1):
            for group in pruner.step(interactive=True):
                records.append(_record_group(pruner, group, step))
                prune_group(pruner, group)
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


def measure_baseline(spec: ModelSpec, model: nn.Module, inputs: torch.Tensor, seed: int) -> Baseline:
    """Measure the unpruned ``model`` (already on its device) on ``inputs``."""
    try:
        output, flop_macs = forward_with_flops(model, inputs)
        macs, params = tp_counts(model, inputs)
    except Exception as exc:
        raise _fail("forward", spec, exc, failing_module(model, inputs)) from exc
    return Baseline(
        key=(spec.name, seed, str(inputs.device)),
        tree=repr(model),
        modules=module_lines(model),
        shapes=tensor_shapes(model),
        output=output_tensor(output).detach(),
        flop_macs=flop_macs,
        macs=macs,
        params=params,
    )


MAX_RETRIES = 8
"""Times a model may be pruned again after pruning broke it (each time leaving more whole)."""

ModelSource = Callable[[], "nn.Module"]


def prune(
    spec: ModelSpec,
    config: PruneConfig,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    model: nn.Module | ModelSource | None = None,
    baseline: Baseline | None = None,
) -> Pruned:
    """Prune one model with one config and measure it.

    ``model`` is the pristine model to prune (in place), or a function that
    returns a fresh pristine copy each time it is called; without it the model
    is built from ``spec`` with ``seed``. When the pruned model's forward
    breaks, the model is pruned again from a fresh copy with the groups that
    touch the modules that broke left whole (:func:`left_whole.coupled_modules`),
    so a caller passing a model pays one copy of it, and a caller passing a
    function none. ``baseline`` is the unpruned model's measurement from an
    earlier case of the same model, seed and device (``Pruned.baseline``); it
    is measured when absent or when its key does not match.
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
            return _prune_once(spec, config, seed, model, inputs, clock, culprits)

        attempt = until_sound(models, prune_once)
        live = attempt.model
        # what building warned about, and what the attempt that stood did: not the broken tries
        caught[before_pruning:attempt_start] = []
    outcome = PruneOutcome(
        model=spec.name,
        config=config.to_dict(),
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
        warnings=_unique_messages(caught),
        timings={k: round(v, 4) for k, v in clock.timings.items()},
    )
    return Pruned(live, inputs, outcome, baseline, attempt.output)


def fresh_copies(spec: ModelSpec, seed: int, model: nn.Module | ModelSource | None) -> ModelSource:
    """Where fresh pristine copies come from: a rebuild, the caller's function, or a copy taken now."""
    from torch import nn

    if model is None:
        return lambda: build_model(spec, seed)
    if isinstance(model, nn.Module):
        snapshot = copy.deepcopy(model)
        return lambda: copy.deepcopy(snapshot)
    return model


def first_then_fresh(first: nn.Module, fresh: ModelSource) -> ModelSource:
    """``first`` on the first call, ``fresh()`` after: a prune's first try, then its retries.

    ``first`` is released once handed out, so a broken first try is not kept alive through the retries.
    """
    pending = [first]
    return lambda: pending.pop() if pending else fresh()


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


def _prune_once(
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    model: nn.Module,
    inputs: torch.Tensor,
    clock: _Clock,
    culprits: Sequence[Culprit],
) -> _Attempt:
    """Trace, prune, adapt and measure ``model`` in place, leaving whole what touches ``culprits``."""
    names = {m: n for n, m in model.named_modules()}
    with clock.step("trace"):
        try:
            pruner = make_pruner(model, inputs, spec, config, seed, culprits)
        except Exception as exc:
            raise _fail("trace", spec, exc) from exc
    ignored = sorted(
        names[m] for m in pruner.ignored_layers if m in names and any(True for _ in m.parameters(recurse=False))
    )
    heads = {names[m]: n for m, n in pruner.num_heads.items() if m in names}
    with clock.step("prune"):
        try:
            groups = run_pruner(pruner, config.iterative_steps, seed)
        except Broke as failed:
            raise Broke(_fail("prune", spec, failed.error), failed.culprit) from failed.error
        except Exception as exc:
            raise _fail("prune", spec, exc) from exc
    left_whole = list(pruner.left_whole)
    del pruner
    with clock.step("adapt"):
        try:
            adapted = _adapt(model, spec)
        except Exception as exc:
            raise _fail("adapt", spec, exc) from exc
    with clock.step("count"):
        try:
            output, flop_macs = forward_with_flops(model, inputs)
            macs, params = tp_counts(model, inputs)
        except Exception as exc:
            broke = forward_broke(model, inputs, exc, culprits)
            error = _fail("forward", spec, exc, broke.module, _left_whole_note(left_whole))
            raise Broke(error, broke.culprit) from exc
    return _Attempt(
        model, ignored, heads, groups, left_whole, adapted, output_tensor(output).detach(), flop_macs, macs, params
    )


def _adapt(model: nn.Module, spec: ModelSpec) -> list[str]:
    from pytest_tprune.adapters import apply_adapters, type_key

    extra = {type_key(cls): fn for cls, fn in spec.adapters.items()}
    return apply_adapters(model, extra)


def _unique_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    seen: dict[str, None] = {}
    for item in caught:
        text = str(item.message).strip().splitlines()[0][:300] if str(item.message).strip() else ""
        if text:
            seen.setdefault(f"{item.category.__name__}: {text}", None)
    return list(seen)

"""Model specs: which model, how to build it reproducibly, and what to feed it.

A :class:`ModelSpec` is the unit every other part works on, whether the model
comes from timm or from a downstream project's factory. Building is seeded on
the CPU so that two builds (in two xdist workers, or on CPU and CUDA) start
from bit-identical weights.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_tprune.errors import PruneStepError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

ModuleHook = Callable[["nn.Module"], Any]
Factory = TypeVar("Factory", bound=Callable[[], "nn.Module"])
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, feed and prune one model.

    The callables receive the freshly built (unpruned) model, so they can pick
    its modules by identity: ``ignored_layers=lambda m: [m.head]``. ``name``
    names the golden folder, so it is restricted to letters, digits and
    ``_.+-``; ``source`` is ``"timm"`` for timm models (trusted inputs) and
    ``"downstream"`` otherwise (example inputs are checked when built).
    """

    name: str
    factory: Callable[[], nn.Module]
    input_size: tuple[int, ...]
    source: str = "downstream"
    ignored_layers: Callable[[nn.Module], Iterable[nn.Module]] | None = None
    num_heads: Callable[[nn.Module], Mapping[nn.Module, int]] | None = None
    unwrapped_parameters: Callable[[nn.Module], Iterable[tuple[nn.Parameter, int]]] | None = None
    customized_pruners: Callable[[nn.Module], Mapping[Any, Any]] | None = None
    adapters: Mapping[type | str, Callable[[nn.Module], None]] = field(default_factory=dict)
    example_inputs: Callable[[int, torch.Generator], torch.Tensor] | None = None
    reduction_band: tuple[float, float] | None = None
    reduction_band_reason: str = ""
    known_failure: str | Mapping[str, str | None] | None = None
    param_count: int | None = None
    pruner_arguments: Callable[[nn.Module], Mapping[str, Any]] | None = None
    """Extra ``MetaPruner`` keyword arguments over the seed recipe's (``round_to``, ``importance``,
    ``in_channel_groups``...), from the freshly built model: the project's own recipe, run by the engine."""
    prune_function: Callable[[nn.Module, torch.Tensor, Any], nn.Module | None] | None = None
    """``(model, example_inputs, config) -> pruned model`` run instead of the engine's recipe
    (:mod:`pytest_tprune.engine.custom`): every check applies to what it returns."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise UsageError(
                f"model name {self.name!r} is not usable: use letters, digits and '_.+-' "
                "(it names the model's golden folder)"
            )
        if not callable(self.factory):
            raise UsageError(f"model '{self.name}': factory must be a callable returning an nn.Module")
        for what in ("pruner_arguments", "prune_function"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise UsageError(
                    f"model '{self.name}': {what} must be a callable taking the model"
                    + (", the example inputs and the config" if what == "prune_function" else "")
                    + f", got {type(getattr(self, what)).__name__}"
                )
        size = tuple(self.input_size) if isinstance(self.input_size, Iterable) else ()
        if not size or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
            raise UsageError(
                f"model '{self.name}': input_size must be positive integers without the batch, "
                f"e.g. (3, 32, 32), got {self.input_size!r}"
            )
        object.__setattr__(self, "input_size", size)

    def failure_reason(self, config_id: str) -> str | None:
        """The known-failure cause for a config (by id, e.g. ``r0.50-local``), if any.

        ``known_failure`` is a cause for every config, or a mapping from
        fnmatch patterns over config ids (``"*"``, ``"*-global"``,
        ``"r0.30-local"``) to causes. A cause starting with ``hang:`` marks a
        case that never finishes: it runs under a short time limit and must
        time out. An exact config id wins over patterns, and maps to ``None``
        where a config is known to pass although a pattern covers it (e.g.
        ``{"*": cause, "r0.50-local": None}``).
        """
        if isinstance(self.known_failure, str):
            return self.known_failure
        table = dict(self.known_failure or {})
        if config_id in table:
            return table[config_id]
        for pattern, reason in sorted(table.items()):
            if reason is not None and fnmatch.fnmatchcase(config_id, pattern):
                return reason
        return None

    def make_inputs(self, batch: int, seed: int) -> torch.Tensor:
        """A seeded input batch on the CPU (move it with the model)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        if self.example_inputs is not None:
            return self.example_inputs(batch, generator)
        return torch.randn((batch, *self.input_size), generator=generator)


class ModelSpecError(PruneStepError):
    """A model spec does not work: its factory, its example inputs or its adapters.

    Raised when the model is built, before any pruning, with a message that names
    the model and says what to fix; ``exc`` keeps the original exception.
    """

    def __init__(self, step: str, model: str, exc: BaseException, message: str) -> None:
        super().__init__(step, model, exc)
        self.args = (message,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def user_frame(exc: BaseException) -> str:
    """`` (file:line in function)`` of the innermost frame outside installed libraries."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "site-packages" not in f.filename and "/pytest_tprune/" not in f.filename
    ]
    return f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""


def origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Build ``spec`` on the CPU from a seeded RNG, in eval mode, and check the spec.

    The global RNG is forked so that building never disturbs the caller's
    random state, and the same seed gives the same weights in every process.
    A factory that raises, an adapter type the model does not contain and (for
    downstream specs) example inputs the unpruned model rejects raise
    :class:`ModelSpecError` saying what to fix, without the library traceback.
    """
    __tracebackhide__ = True
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = spec.factory()
        except Exception as exc:
            message = (
                f"build failed for model '{spec.name}': its factory {origin(spec.factory)} raised "
                f"{_first_line(exc)}{user_frame(exc)}: fix the factory so that calling it with no "
                "arguments returns the model"
            )
            raise ModelSpecError("build", spec.name, exc, message) from None
    if not isinstance(model, torch.nn.Module):
        message = (
            f"build failed for model '{spec.name}': its factory {origin(spec.factory)} returned "
            f"{type(model).__name__}, not a torch.nn.Module: return the model instance"
        )
        raise ModelSpecError("build", spec.name, TypeError(message), message)
    model = model.eval()
    check_adapters(spec, model)
    if spec.source != "timm":
        check_example_inputs(spec, model, seed)
    return model


def check_adapters(spec: ModelSpec, model: nn.Module) -> None:
    """Fail when ``spec.adapters`` names a module type that never occurs in ``model``."""
    __tracebackhide__ = True
    from pytest_tprune.engine.adapters import type_key, unused_adapter_types

    unused = unused_adapter_types(model, [type_key(cls) for cls in spec.adapters])
    if unused:
        message = (
            f"adapt failed for model '{spec.name}': ModelSpec.adapters names type(s) that never occur in the "
            f"model: {', '.join(unused)}: most likely a typo or the wrong class; key the adapter by a module "
            "class the model contains (or remove the entry)"
        )
        raise ModelSpecError("adapt", spec.name, LookupError(message), message)


def check_example_inputs(spec: ModelSpec, model: nn.Module, seed: int) -> None:
    """Fail unless the unpruned model accepts its example input at batch 1 and 2."""
    __tracebackhide__ = True
    import torch

    from pytest_tprune.engine.measure import failing_module

    for batch in (1, 2):
        try:
            inputs = spec.make_inputs(batch, seed)
        except Exception as exc:
            message = (
                f"build failed for model '{spec.name}': its example_inputs({batch}, generator) raised "
                f"{_first_line(exc)}{user_frame(exc)}: it must return a batch of {batch} input(s)"
            )
            raise ModelSpecError("build", spec.name, exc, message) from None
        try:
            with torch.no_grad():
                model(inputs)
        except Exception as exc:
            module = failing_module(model, inputs)
            where = f" in module '{module}'" if module else ""
            message = (
                f"forward failed for model '{spec.name}': the unpruned model rejected its example input "
                f"of shape {list(inputs.shape)}{where}: {_first_line(exc)}: make ModelSpec.input_size "
                "(or example_inputs) match what the model's forward expects (input_size excludes the batch)"
            )
            raise ModelSpecError("forward", spec.name, exc, message) from None


def timm_model_names(pattern: str | None = None) -> list[str]:
    """All timm model names (naturally sorted by timm), optionally filtered."""
    import timm

    return list(timm.list_models(pattern)) if pattern else list(timm.list_models())


def check_timm_name(name: str) -> None:
    """Fail with the closest names when ``name`` is not a timm model.

    ``timm.is_model`` is a lookup; the sorted name list (about 15 ms to build)
    is made only to suggest names, since a zoo selection checks 1371 names.
    """
    import timm

    if timm.is_model(name):
        return
    raise UsageError(f"unknown timm model '{name}': {closest_names_hint(name, timm_model_names())}")


LIST_MODELS_HINT = "run 'tprune --list_models PATTERN' to search"


def closest_names_hint(word: str, names: Iterable[str], fallback: str = LIST_MODELS_HINT) -> str:
    """``did you mean: a, b?`` with the names closest to a mistyped name or pattern, else ``fallback``.

    The one place that suggests names, so the command line and the pytest
    options suggest the same ones. Wildcards at the ends of a pattern are
    dropped first: ``resnt5*`` is closest to the names starting ``resnet5``.
    """
    close = difflib.get_close_matches(word.strip("*?") or word, list(names), n=5, cutoff=0.6)
    return f"did you mean: {', '.join(close)}?" if close else fallback


def timm_input_size(name: str, cap: int | None = None) -> tuple[int, int, int]:
    """The model's pretrained ``input_size``, its spatial size capped when allowed.

    A cap is ignored for models with ``fixed_input_size`` (position embeddings,
    windows sized at build time) and never goes below ``min_input_size``. A
    model that declares a minimum takes sizes on the grid its default and its
    minimum share (``deepseek_vit_412m``: 546 and 126, patches of 14), so the
    capped side is rounded down to a multiple of their greatest common divisor.
    """
    import timm

    cfg = timm.get_pretrained_cfg(name)
    size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
    channels, height, width = size
    if cap is None or cfg is None or cfg.fixed_input_size:
        return channels, height, width
    floor = cfg.min_input_size[1:] if cfg.min_input_size else (1, 1)
    return channels, _capped_side(height, cap, floor[0]), _capped_side(width, cap, floor[1])


def _capped_side(side: int, cap: int, floor: int) -> int:
    """``side`` capped at ``cap``, on the grid of ``side`` and ``floor`` (see :func:`timm_input_size`), >= floor."""
    if side <= cap:
        return side
    step = math.gcd(side, floor)  # 1 without a minimum (floor 1): the cap as given
    return max(cap // step * step, floor)


def timm_spec(name: str, input_cap: int | None = None, pretrained: bool = False) -> ModelSpec:
    """A spec for a timm model; ``pretrained`` is only for the CLI (tests never download)."""
    check_timm_name(name)

    def factory() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=pretrained)

    from pytest_tprune.engine.known import known_failure, reduction_band
    from pytest_tprune.engine.zoo import representative_param_counts

    band = reduction_band(name)
    return ModelSpec(
        name=name,
        factory=factory,
        input_size=timm_input_size(name, input_cap),
        source="timm",
        param_count=representative_param_counts().get(name),
        known_failure=known_failure(name),
        reduction_band=band[0] if band else None,
        reduction_band_reason=band[1] if band else "",
    )


def meta_param_count(spec: ModelSpec) -> int | None:
    """Count parameters without allocating weights, by building on the meta device."""
    if spec.param_count is not None:
        return spec.param_count
    import torch

    try:
        with torch.device("meta"):
            model = spec.factory()
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def match_patterns(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """Names matching any fnmatch pattern, sorted; a pattern matching nothing is an error."""
    pool = sorted(set(names))
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in pool if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            is_pattern = any(char in pattern for char in "*?[")
            what = f"model pattern '{pattern}' matches no model" if is_pattern else f"unknown model '{pattern}'"
            raise UsageError(f"{what}: {closest_names_hint(pattern, pool)}")
        chosen.update(hits)
    return sorted(chosen)


_REGISTERED: dict[str, ModelSpec] = {}


def _definition(factory: Any) -> tuple[str, ...]:
    """Where a factory is defined: a module imported again re-registers, not duplicates."""
    code = getattr(factory, "__code__", None)
    where = (code.co_filename, str(code.co_firstlineno)) if code is not None else (origin(factory),)
    return (*where, getattr(factory, "__qualname__", ""))


def add_model(spec: ModelSpec) -> ModelSpec:
    """Register a downstream spec; a name registered twice is an error, not a silent override.

    Registering again the same definition (a module imported a second time, as
    in-process test runs do) replaces the earlier spec.
    """
    known = _REGISTERED.get(spec.name)
    if known is not None and known is not spec and _definition(known.factory) != _definition(spec.factory):
        raise UsageError(
            f"model '{spec.name}' is registered twice (by {origin(known.factory)} and {origin(spec.factory)}): "
            "give each model a unique name"
        )
    _REGISTERED[spec.name] = spec
    return spec


def register_model(
    name: str | None = None,
    *,
    input_size: Iterable[int],
    ignored_layers: Callable[[nn.Module], Iterable[nn.Module]] | None = None,
    num_heads: Callable[[nn.Module], Mapping[nn.Module, int]] | None = None,
    unwrapped_parameters: Callable[[nn.Module], Iterable[tuple[nn.Parameter, int]]] | None = None,
    customized_pruners: Callable[[nn.Module], Mapping[Any, Any]] | None = None,
    adapters: Mapping[type | str, Callable[[nn.Module], None]] | None = None,
    example_inputs: Callable[[int, torch.Generator], torch.Tensor] | None = None,
    reduction_band: tuple[float, float] | None = None,
    reduction_band_reason: str = "",
    known_failure: str | Mapping[str, str | None] | None = None,
    param_count: int | None = None,
    pruner_arguments: Callable[[nn.Module], Mapping[str, Any]] | None = None,
    prune_function: Callable[[nn.Module, torch.Tensor, Any], nn.Module | None] | None = None,
) -> Callable[[Factory], Factory]:
    """Decorator registering a model factory: the simplest way to add a model.

    ``@register_model(input_size=(3, 32, 32))`` over ``def my_cnn(): return MyCNN()``
    adds ``my_cnn`` (or ``name``); the keyword arguments are the
    :class:`ModelSpec` fields of the same names. Registration happens when the
    decorated module is imported: import it from a ``conftest.py`` (every xdist
    worker imports it too). The factory is returned unchanged.
    """

    def decorate(factory: Factory) -> Factory:
        add_model(
            ModelSpec(
                name=name or factory.__name__,
                factory=factory,
                input_size=tuple(input_size),
                source="downstream",
                ignored_layers=ignored_layers,
                num_heads=num_heads,
                unwrapped_parameters=unwrapped_parameters,
                customized_pruners=customized_pruners,
                adapters=dict(adapters or {}),
                example_inputs=example_inputs,
                reduction_band=reduction_band,
                reduction_band_reason=reduction_band_reason,
                known_failure=known_failure,
                param_count=param_count,
                pruner_arguments=pruner_arguments,
                prune_function=prune_function,
            )
        )
        return factory

    return decorate


def registered_models() -> dict[str, ModelSpec]:
    """The specs registered with :func:`register_model` or :func:`add_model` in this process."""
    return dict(_REGISTERED)

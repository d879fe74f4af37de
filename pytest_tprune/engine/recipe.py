"""The seed recipe's arguments: the device, the importance, the layers to leave out, the heads.

:func:`make_pruner` builds the pruner exactly as the seed script does, with
fresh argument dicts (torch-pruning mutates its mutable defaults), the layers
a model must keep (its classifier) and the head count of every attention
projection. The pruner's ``num_heads`` dict is the one passed in: with
``prune_num_heads`` torch-pruning lowers its counts as it removes heads, and
the adapters read the counts back from it
(:func:`~pytest_tprune.engine.adapters.sync_head_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.adapters import KV_PROJECTIONS, QUERY_PROJECTIONS
from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec
from pytest_tprune.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_tprune.engine.left_whole import Culprit


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
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "hessian":
        return tp.importance.GroupHessianImportance()
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
        for attr, n in (*((a, count) for a in QUERY_PROJECTIONS), *((a, kv_count) for a in KV_PROJECTIONS)):
            layer = getattr(module, attr, None)
            if isinstance(layer, projections):
                heads[layer] = int(n)
    return heads


def pruner_arguments(
    model: nn.Module,
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    engine_pruners: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The seed recipe's ``MetaPruner`` arguments for ``model``, with fresh dicts (torch-pruning mutates
    its mutable defaults), then the spec's ``overrides`` (:func:`spec_overrides`, made here when not given).
    ``engine_pruners=False`` leaves out this project's pruners for timm layers that
    torch-pruning lacks, keeping only the spec's own: what a user running plain torch-pruning passes."""
    ignored = spec.ignored_layers(model) if spec.ignored_layers else classifier_layers(model)
    heads = dict(spec.num_heads(model)) if spec.num_heads else attention_heads(model)
    unwrapped = list(spec.unwrapped_parameters(model)) if spec.unwrapped_parameters else None
    from pytest_tprune.engine.pruners import builtin_pruners

    pruners = builtin_pruners(model) if engine_pruners else {}
    if spec.customized_pruners:
        pruners.update(spec.customized_pruners(model))
    arguments = {
        "importance": make_importance(config.importance, seed),
        "global_pruning": config.global_pruning,
        "pruning_ratio": config.ratio,
        "iterative_steps": config.iterative_steps,
        "ignored_layers": list(ignored),
        "round_to": config.round_to,
        "isomorphic": config.isomorphic,
        "max_pruning_ratio": config.max_pruning_ratio,
        "num_heads": dict(heads),
        "prune_num_heads": config.prune_num_heads,
        "head_pruning_ratio": config.head_pruning_ratio,
        "in_channel_groups": {},
        "out_channel_groups": {},
        "unwrapped_parameters": unwrapped,
        "customized_pruners": pruners or None,
    }
    arguments.update(spec_overrides(model, spec) if overrides is None else overrides)
    return arguments


CONFIG_OWNED = ("pruning_ratio", "global_pruning", "iterative_steps", "prune_num_heads", "head_pruning_ratio")
"""MetaPruner arguments a case's config sets: a spec overriding them would prune what its config id does not say."""


def spec_overrides(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """``spec.pruner_arguments(model)``, checked against the arguments the installed ``MetaPruner`` takes.

    A name it does not take (a typo, or one a torch-pruning release renamed) and a
    name the config owns are errors saying what to use, not a ``TypeError`` from the
    pruner's constructor.
    """
    if spec.pruner_arguments is None:
        return {}
    from pytest_tprune.engine.models import ModelSpecError, origin

    try:
        extra = dict(spec.pruner_arguments(model))
    except Exception as exc:
        message = (
            f"trace failed for model '{spec.name}': its pruner_arguments {origin(spec.pruner_arguments)} raised "
            f"{type(exc).__name__}: {exc}: it must return a dict of MetaPruner keyword arguments for the model"
        )
        raise ModelSpecError("trace", spec.name, exc, message) from None
    known = meta_pruner_arguments()
    unknown = sorted(k for k in extra if k not in known)
    owned = sorted(k for k in extra if k in CONFIG_OWNED)
    if unknown or owned:
        problem = (
            f"names {', '.join(unknown)}, which the installed torch_pruning MetaPruner does not take "
            f"(it takes: {', '.join(sorted(k for k in known if k not in CONFIG_OWNED))})"
            if unknown
            else f"sets {', '.join(owned)}, which each case's config sets: select them with --tprune-ratios, "
            "--tprune-modes and the other --tprune-* options instead"
        )
        message = f"trace failed for model '{spec.name}': its pruner_arguments {problem}"
        raise ModelSpecError("trace", spec.name, TypeError(message), message)
    return extra


def meta_pruner_arguments() -> set[str]:
    """The keyword arguments of the installed ``MetaPruner`` (besides the model and the example inputs)."""
    import inspect

    import torch_pruning as tp

    parameters = inspect.signature(tp.pruner.MetaPruner.__init__).parameters
    return {name for name in parameters if name not in ("self", "model", "example_inputs")}


def describe_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """A stable, readable record of overridden arguments for goldens: plain values as they are, dicts and
    lists by their size, anything else by its class (an object's repr carries its memory address)."""

    def describe(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, dict):
            return f"dict of {len(value)}"
        if isinstance(value, (list, tuple)):
            return f"{type(value).__name__} of {len(value)}"
        return f"{type(value).__module__}.{type(value).__qualname__}"

    return {key: describe(value) for key, value in sorted(arguments.items())}


def make_pruner(
    model: nn.Module,
    inputs: torch.Tensor,
    spec: ModelSpec,
    config: PruneConfig,
    seed: int,
    culprits: Sequence[Culprit] = (),
) -> Any:
    """The engine's pruner: the seed recipe's arguments on a guarded ``MetaPruner``."""
    from pytest_tprune.engine.left_whole import guarded_pruner

    overrides = spec_overrides(model, spec)  # the spec's callable runs once per pruner
    arguments = pruner_arguments(model, spec, config, seed, overrides=overrides)
    pruner = guarded_pruner()(model, inputs, **arguments, culprits=culprits)
    pruner.tprune_recipe = {"pruner_arguments": describe_arguments(overrides)} if spec.pruner_arguments else {}
    return pruner

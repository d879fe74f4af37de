"""Which cases a run has: the model selection, the case list of each test, its shard and marks.

The list is built from sorted models, ratios, modes and head ratios (none by
default) and nothing random, so every xdist worker collects the same cases in
the same order; a shard is every N-th case of that list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec, match_patterns, registered_models
from pytest_tprune.errors import UsageError
from pytest_tprune.session.state import CaseParam, RunState
from pytest_tprune.session.usage import selection_failed

if TYPE_CHECKING:
    from pytest_tprune.session.settings import Settings

DEFAULT_TIMM_MODELS = ("test_*",)
FAMILIES_TOKEN = "@families"
"""Stands, in a models list, for the smallest model of every timm family (see :mod:`pytest_tprune.engine.zoo`)."""


def expand_tokens(patterns: tuple[str, ...], available: set[str] | None = None) -> tuple[str, ...]:
    """Replace ``@families`` by the family representatives' names: those of ``available`` when given.

    The representatives are the project's list, picked on the timm release the
    suite is tested with; an older timm lacks some (timm 1.0.20 has no
    ``cpubone_nano``), and the default selection must still run there, so those
    are left out rather than reported as unknown names (``tprune compare``
    lists them as disappeared). A name the user typed stays an error.
    """
    if FAMILIES_TOKEN not in patterns:
        return patterns
    from pytest_tprune.engine.zoo import load_representatives

    families = sorted(set(load_representatives().values()))
    if available is not None:
        families = [name for name in families if name in available]
    return tuple(p for p in patterns if p != FAMILIES_TOKEN) + tuple(families)


def downstream_specs(config: pytest.Config) -> dict[str, ModelSpec]:
    """Specs from ``register_model`` and from every ``pytest_tprune_models`` hook."""
    specs = registered_models()
    for result in config.hook.pytest_tprune_models(config=config):
        for spec in result or []:
            if not isinstance(spec, ModelSpec):
                raise UsageError(f"pytest_tprune_models returned {type(spec).__name__}, expected ModelSpec objects")
            if spec.name in specs and specs[spec.name] is not spec:
                raise UsageError(
                    f"model '{spec.name}' is provided twice (by register_model or pytest_tprune_models hooks): "
                    "give each model a unique name"
                )
            specs[spec.name] = spec
    return specs


def select_models(config: pytest.Config, settings: Settings) -> dict[str, ModelSpec]:
    """The run's models by name: patterns over timm and downstream names, minus exclusions.

    Without a models setting, a project that registered its own models tests
    those; otherwise timm's tiny ``test_*`` models.
    """
    from pytest_tprune.engine.models import timm_model_names, timm_spec

    extra = downstream_specs(config)
    timm_names = set(timm_model_names())
    chosen = settings.models or (tuple(sorted(extra)) if extra else DEFAULT_TIMM_MODELS)
    patterns = expand_tokens(chosen, timm_names | set(extra))
    clash = sorted(timm_names & set(extra))
    if clash:
        raise UsageError(f"downstream model name(s) {', '.join(clash)} clash with timm models: rename them")
    names = _matching(timm_names | set(extra), patterns, "--tprune-models" if settings.models else "the default models")
    if settings.exclude:
        excluded = set(_matching(names, settings.exclude, "--tprune-exclude")) if names else set()
        names = [n for n in names if n not in excluded]
    return {name: extra[name] if name in extra else timm_spec(name, settings.input_size) for name in names}


def _matching(names: Iterable[str], patterns: Iterable[str], option: str) -> list[str]:
    """:func:`~pytest_tprune.engine.models.match_patterns`, its error naming the option it came from."""
    try:
        return match_patterns(names, patterns)
    except UsageError as err:
        raise UsageError(f"{option}: {err}") from None


def run_models(config: pytest.Config, state: RunState) -> dict[str, ModelSpec]:
    """The run's models by name, selected once per process (the first test that asks for cases)."""
    if state.specs is None:
        state.specs = select_models(config, state.settings)
    return state.specs


def narrow_models(names: list[str], patterns: Any, exclude: Any = None) -> list[str]:
    """Apply a ``tprune(models=..., exclude=...)`` marker: keep the selected names it matches.

    The marker only ever narrows the run's selection (``--tprune-models`` stays
    the outer bound), so one project can give two tests different slices of one
    selection, e.g. a full grid for tiny models and one config per family.
    """
    import fnmatch

    def as_patterns(value: Any) -> tuple[str, ...]:
        return expand_tokens((value,) if isinstance(value, str) else tuple(value))

    def matches(name: str, value: Any) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in as_patterns(value))

    kept = names if patterns is None else [n for n in names if matches(n, patterns)]
    return kept if exclude is None else [n for n in kept if not matches(n, exclude)]


def case_marks(spec: ModelSpec, config_id: str) -> list[Any]:
    """A known failure is a strict xfail of what it names: a known hang must end in the time limit, and a
    cause that names a check (``[equivalence] ...``) must fail that check; anything else fails the case.

    A known-slow model (``slow: ...``) gets no mark unless its cause names a check: its timeout becomes an
    xfail where it happens (:func:`pytest_tprune.session.run.slow_timeouts_expected`), so a case that
    finishes in time is judged by its checks instead of passing unexpectedly.
    """
    from pytest_tprune.engine.known import failing_check, is_hang, is_slow
    from pytest_tprune.errors import CaseTimeout, CheckFailed

    reason = spec.failure_reason(config_id)
    check = failing_check(reason)
    if not reason or (is_slow(reason) and not check):
        return []
    raises = CaseTimeout if is_hang(reason) else CheckFailed.of(check) if check else None
    return [pytest.mark.xfail(strict=True, raises=raises, reason=f"known failure: {reason}")]


def marker_values(metafunc: pytest.Metafunc) -> dict[str, Any]:
    """The ``tprune(...)`` marker's arguments, the closest marker winning per argument."""
    values: dict[str, Any] = {}
    for marker in metafunc.definition.iter_markers("tprune"):
        for key, value in marker.kwargs.items():
            values.setdefault(key, value)
    return values


def head_knobs(head_ratio: float) -> dict[str, Any]:
    """The config fields of one ``--tprune-head-ratios`` value; 0 is the plain config (no head pruning)."""
    return {"prune_num_heads": True, "head_pruning_ratio": head_ratio} if head_ratio else {}


KNOB_FIELDS = (
    "importance",
    "round_to",
    "iterative_steps",
    "prune_num_heads",
    "head_pruning_ratio",
    "max_pruning_ratio",
)
"""The config fields a ``tprune(knobs=[...])`` marker may set; ratio and mode come from the grid."""


def marker_knobs(value: Any) -> list[dict[str, Any]]:
    """The ``knobs`` of a ``tprune`` marker: a list of dicts of config fields, each a config per ratio and mode.

    ``knobs=[{"round_to": 8}, {"prune_num_heads": True, "head_pruning_ratio": 0.5}]`` gives a test those two
    configs instead of the plain one; absent, the plain config (``[{}]``). A field not in ``KNOB_FIELDS``, or a
    value ``PruneConfig`` refuses, is a usage error naming the marker.
    """
    if value is None:
        return [{}]
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, dict) for k in value) or not value:
        raise UsageError(f"tprune marker knobs={value!r}: give a non-empty list of dicts of config fields")
    for knob in value:
        unknown = sorted(set(knob) - set(KNOB_FIELDS))
        if unknown:
            raise UsageError(
                f"tprune marker knobs: {', '.join(unknown)} cannot be set per test (use one of "
                f"{', '.join(KNOB_FIELDS)}; ratios and modes have their own marker arguments)"
            )
        try:
            PruneConfig(**knob)
        except (TypeError, ValueError, UsageError) as err:
            raise UsageError(f"tprune marker knobs={knob!r}: {err}") from None
    return [dict(knob) for knob in value]


def case_params(specs: dict[str, ModelSpec], settings: Settings, narrow: dict[str, Any]) -> list[Any]:
    """The sorted, sharded ``pytest.param`` list for one test function."""
    names = narrow_models(sorted(specs), narrow.get("models"), narrow.get("exclude"))
    wanted_ratios = {float(r) for r in narrow.get("ratios", settings.ratios)}
    ratios = [r for r in settings.ratios if r in wanted_ratios]
    modes = [m for m in settings.modes if m in narrow.get("modes", settings.modes)]
    knobs = marker_knobs(narrow.get("knobs"))
    configs = [
        PruneConfig(ratio=ratio, global_pruning=mode == "global", **{**head_knobs(heads), **knob})
        for ratio in ratios
        for mode in modes
        for knob in knobs
        for heads in (0.0, *settings.head_ratios)
    ]
    unique = list(dict.fromkeys(configs))  # a knob that sets head pruning meets --tprune-head-ratios once
    cases = [CaseParam(name, config) for name in names for config in unique]
    if settings.shard is not None:
        index, total = settings.shard
        cases = [case for position, case in enumerate(cases) if position % total == index - 1]
    return [
        pytest.param(case, id=case.case_id, marks=case_marks(specs[case.model], case.config.config_id))
        for case in cases
    ]


NO_CASES_REASON = (
    "no pruning case selected for this test "
    "(check --tprune-models/-ratios/-modes, the tprune marker and --tprune-shard)"
)


def parametrize(metafunc: pytest.Metafunc, state: RunState) -> None:
    """Parametrize a test requesting ``tprune_case`` with the run's cases (a skipped stand-in when none)."""
    try:
        params = case_params(run_models(metafunc.config, state), state.settings, marker_values(metafunc))
    except UsageError as err:
        raise selection_failed(metafunc.config, err) from None  # one line and exit 4, also under xdist
    if not params:
        params = [pytest.param(None, id="no-cases", marks=pytest.mark.skip(reason=NO_CASES_REASON))]
    metafunc.parametrize("tprune_case", params, indirect=True)


def case_param(item: pytest.Item) -> CaseParam | None:
    """The case a collected test item runs, or None for other tests."""
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("tprune_case") if callspec else None
    return param if isinstance(param, CaseParam) else None


def case_keys(items: Iterable[pytest.Item]) -> set[tuple[str, str]]:
    """``(model, config id)`` of every case among ``items``."""
    return {(p.model, p.config.config_id) for p in map(case_param, items) if p is not None}

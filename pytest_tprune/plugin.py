"""pytest hooks, options and fixtures of pytest-tprune; the work lives elsewhere.

Collection is deterministic (sorted models, ratios and modes; no randomness),
so every xdist worker collects the same cases in the same order. Per-case
figures travel in ``report.user_properties`` (serialised by xdist); the cases
each worker collected travel in ``workeroutput``; only the controller prints the
summary, decides about unused goldens and writes the JSON report.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.config import PruneConfig
from pytest_tprune.errors import UsageError
from pytest_tprune.settings import Settings, add_options, parse_settings

if TYPE_CHECKING:
    from types import TracebackType

    from pytest_tprune.case import TpruneCase
    from pytest_tprune.models import ModelSpec
    from pytest_tprune.report import CaseRow

STATE = pytest.StashKey["RunState"]()
CASE_KEY, FIGURES_KEY, WRITTEN_KEY, CHECK_KEY = "tprune_case", "tprune_figures", "tprune_golden_written", "tprune_check"


@dataclass(frozen=True)
class CaseParam:
    model: str
    config: PruneConfig

    @property
    def case_id(self) -> str:
        return f"{self.model}-{self.config.config_id}"


@dataclass
class RunState:
    """Everything the plugin knows about this run, in this process."""

    settings: Settings
    specs: dict[str, ModelSpec] | None = None
    generated: set[tuple[str, str]] = field(default_factory=set)
    selected: set[tuple[str, str]] = field(default_factory=set)
    rows: dict[str, CaseRow] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def selection(self, config: pytest.Config) -> dict[str, ModelSpec]:
        if self.specs is None:
            from pytest_tprune.selection import select_models

            self.specs = select_models(config, self.settings)
        return self.specs


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_tprune import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tprune(models=None, exclude=None, ratios=None, modes=None): narrow the pruning cases of one test "
        "(model names, fnmatch patterns or @families; ratios; 'local'/'global')",
    )
    if config.option.help:
        return
    try:
        settings = parse_settings(config)
        if settings.device.startswith("cuda"):
            from pytest_tprune.pruning import resolve_device

            resolve_device(settings.device)
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None
    state = RunState(settings)
    config.stash[STATE] = state
    config.pluginmanager.register(RunReporter(state), "tprune-reporter")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(state), "tprune-xdist")


def _marker_values(metafunc: pytest.Metafunc) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for marker in metafunc.definition.iter_markers("tprune"):
        for key, value in marker.kwargs.items():
            values.setdefault(key, value)
    return values


def case_params(specs: dict[str, ModelSpec], settings: Settings, narrow: dict[str, Any]) -> list[Any]:
    """The sorted, sharded ``pytest.param`` list for one test function."""
    from pytest_tprune.selection import case_marks, narrow_models

    names = narrow_models(sorted(specs), narrow.get("models"), narrow.get("exclude"))
    wanted_ratios = {float(r) for r in narrow.get("ratios", settings.ratios)}
    ratios = [r for r in settings.ratios if r in wanted_ratios]
    modes = [m for m in settings.modes if m in narrow.get("modes", settings.modes)]
    cases = [
        CaseParam(name, PruneConfig(ratio=ratio, global_pruning=mode == "global"))
        for name in names
        for ratio in ratios
        for mode in modes
    ]
    if settings.shard is not None:
        index, total = settings.shard
        cases = [case for position, case in enumerate(cases) if position % total == index - 1]
    return [
        pytest.param(case, id=case.case_id, marks=case_marks(specs[case.model], settings, case.config.config_id))
        for case in cases
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tprune_case" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    try:
        specs = state.selection(metafunc.config)
        params = case_params(specs, state.settings, _marker_values(metafunc))
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None
    if not params:
        reason = (
            "no pruning case selected for this test "
            "(check --tprune-models/-ratios/-modes, the tprune marker and --tprune-shard)"
        )
        params = [pytest.param(None, id="no-cases", marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize("tprune_case", params, indirect=True)


def _case_param(item: pytest.Item) -> CaseParam | None:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("tprune_case") if callspec else None
    return param if isinstance(param, CaseParam) else None


def _case_keys(items: Iterable[pytest.Item]) -> set[tuple[str, str]]:
    return {(p.model, p.config.config_id) for p in map(_case_param, items) if p is not None}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if STATE in config.stash:
        config.stash[STATE].generated |= _case_keys(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if STATE in session.config.stash:
        session.config.stash[STATE].selected |= _case_keys(session.items)


@pytest.fixture
def tprune_case(request: pytest.FixtureRequest) -> Generator[TpruneCase, None, None]:
    """One pruning case (model x config) of the run's selection, with its checks."""
    from pytest_tprune.case import CaseSettings, TpruneCase

    param = getattr(request, "param", None)
    if not isinstance(param, CaseParam):
        raise pytest.UsageError("tprune_case is parametrized by pytest-tprune: request it as a test argument")
    state = request.config.stash[STATE]
    settings = state.settings
    spec = state.selection(request.config)[param.model]
    case = TpruneCase(
        spec,
        param.config,
        CaseSettings(
            device=settings.device,
            golden_dir=settings.golden_dir,
            update_golden=settings.update_golden,
            seed=settings.seed,
            timeout=_timeout(spec, param, settings.timeout),
            checks=settings.checks,
        ),
    )
    node = request.node
    node.user_properties.append(
        (CASE_KEY, {"model": param.model, "config_id": param.config.config_id, "config": param.config.to_dict()})
    )
    _skip_if_too_big(spec)
    yield case
    if "pruned" in case.__dict__:
        node.user_properties.append((FIGURES_KEY, case.summary_row()))
    else:  # pruning failed or timed out: free what it left behind before the next case
        from pytest_tprune.case import release_memory

        release_memory()
        node.user_properties.append((FIGURES_KEY, case.resources_row()))
    node.user_properties.extend((WRITTEN_KEY, path) for path in case.golden_written)


_TOO_BIG: dict[str, str | None] = {}


def _skip_if_too_big(spec: ModelSpec) -> None:
    """Skip, with the reason, a model this worker cannot hold (checked once per model)."""
    from pytest_tprune.case import too_big_reason

    if spec.name not in _TOO_BIG:
        _TOO_BIG[spec.name] = too_big_reason(spec)
    reason = _TOO_BIG[spec.name]
    if reason:
        pytest.skip(reason)


def _timeout(spec: ModelSpec, param: CaseParam, configured: float | None) -> float | None:
    """A known hang gets a short limit; every other case the run's."""
    from pytest_tprune.known import HANG_LIMIT_S, is_hang

    if is_hang(spec.failure_reason(param.config.config_id)):
        return min(configured or HANG_LIMIT_S, HANG_LIMIT_S)
    return configured


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    if call.excinfo is not None and _case_param(item) is not None:
        item.user_properties.append((CHECK_KEY, _failed_check(call.excinfo.value)))
        _drop_frames_without_line_numbers(call.excinfo)
    return (yield)


def _drop_frames_without_line_numbers(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Unlink traceback entries that have no line number.

    A time limit raises from a signal handler, which on Python 3.11 can land
    on an instruction without a line number; pytest's traceback rendering then
    crashes the whole session (INTERNALERROR, and under xdist the worker)
    instead of failing the case. pytest rebuilds its traceback view from the
    raw ``tb_next`` chain, so the chain itself is relinked.
    """
    head = excinfo.tb
    node: TracebackType | None = head
    changed = False
    while node is not None:
        while node.tb_next is not None and node.tb_next.tb_lineno is None:
            node.tb_next = node.tb_next.tb_next
            changed = True
        node = node.tb_next
    if changed:
        excinfo.traceback = type(excinfo.traceback)(head)


def _failed_check(exc: BaseException) -> str:
    from pytest_tprune.errors import CaseTimeout, PruneStepError

    if isinstance(exc, PruneStepError):
        return f"prune:{exc.step}"
    if isinstance(exc, CaseTimeout):
        return "timeout"
    return str(getattr(exc, "check", type(exc).__name__))


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class RunReporter:
    """Registered per run: observes reports and finishes the run (summary, unused goldens, JSON)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_tprune.selection import observe_report

        observe_report(self.state, report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config, state = session.config, self.state
        if _is_worker(config):
            payload = {"generated": sorted(state.generated), "selected": sorted(state.selected)}
            config.workeroutput["tprune"] = json.dumps(payload)  # type: ignore[attr-defined]
            return
        from pytest_tprune.selection import finish_run

        if finish_run(state) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if _is_worker(config):
            return
        from pytest_tprune.selection import summary_lines

        lines = summary_lines(self.state)
        if lines:
            terminalreporter.write_sep("=", "tprune summary")
            for line in lines:
                terminalreporter.write_line(line)


class XdistController:
    """Registered only when xdist is loaded: merges what each worker collected."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        raw = getattr(node, "workeroutput", {}).get("tprune")
        if not raw:
            return
        payload = json.loads(raw)
        self.state.generated |= {tuple(key) for key in payload["generated"]}
        self.state.selected |= {tuple(key) for key in payload["selected"]}

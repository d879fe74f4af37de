"""The plugin's work for one run: configure it, start and finish each case, note why a case failed.

:mod:`pytest_tprune.plugin` calls these one line per hook; the observers that
fold reports and finish the run are registered here, the xdist controller
only when xdist is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.errors import UsageError
from pytest_tprune.session.cases import case_keys, case_param, run_models
from pytest_tprune.session.settings import check_report_path, parse_settings
from pytest_tprune.session.state import (
    CASE_KEY,
    CHECK_KEY,
    CRASH_ATTR,
    FIGURES_KEY,
    RUNTIME_KEY,
    STATE,
    WORKER_OUTPUT_KEY,
    WRITTEN_KEY,
    CaseParam,
    RunState,
    one_minute_load,
)
from pytest_tprune.session.transport import CaseTransport, add_junit_properties, record

if TYPE_CHECKING:
    from types import TracebackType

    from pytest_tprune.checks.case import TpruneCase
    from pytest_tprune.engine.models import ModelSpec
    from pytest_tprune.session.settings import Settings

MARKER_HELP = (
    "tprune(models=None, exclude=None, ratios=None, modes=None): narrow the pruning cases of one test "
    "(model names, fnmatch patterns or @families; ratios; 'local'/'global')"
)


def configure(config: pytest.Config) -> None:
    """Parse and check the settings (a bad value is a usage error), then register the run's observers."""
    config.addinivalue_line("markers", MARKER_HELP)
    if config.option.help:
        return
    try:
        settings = parse_settings(config)
        if settings.report is not None:
            check_report_path(settings.report)
        if settings.summary_md is not None:
            check_report_path(settings.summary_md, "--tprune-summary-md")
        if settings.device.startswith("cuda"):
            from pytest_tprune.engine.recipe import resolve_device

            resolve_device(settings.device)
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None
    state = RunState(settings, rootdir=str(config.rootpath), load_start=one_minute_load())
    config.stash[STATE] = state
    config.pluginmanager.register(RunReporter(state), "tprune-reporter")
    config.pluginmanager.register(CaseTransport(), "tprune-transport")
    from pytest_tprune.engine.resources import memory_at_start
    from pytest_tprune.session.usage import SelectionErrors

    config.pluginmanager.register(SelectionErrors(config), "tprune-selection-errors")  # bad selection: 1 line, exit 4
    memory_at_start()  # before any case, so the memory guard does not depend on what another worker has loaded
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(state), "tprune-xdist")


def note_collected(config: pytest.Config, items: list[pytest.Item], selected: bool) -> None:
    """Remember the cases generated (before deselection) or selected (after), for the unused-golden rule."""
    if STATE not in config.stash:
        return
    state = config.stash[STATE]
    if selected:
        state.selected |= case_keys(items)
    else:
        state.generated |= case_keys(items)


def start_case(request: pytest.FixtureRequest) -> TpruneCase:
    """The case a test asked for, its identity recorded for the report; skipped up front when too big."""
    from pytest_tprune.checks.case import CaseSettings, TpruneCase
    from pytest_tprune.engine.resources import too_big_reason

    param = getattr(request, "param", None)
    if not isinstance(param, CaseParam):
        raise pytest.UsageError("tprune_case is parametrized by pytest-tprune: request it as a test argument")
    state = request.config.stash[STATE]
    settings = state.settings
    spec = run_models(request.config, state)[param.model]
    limit, limit_option = _time_limit(spec, param, settings)
    case = TpruneCase(
        spec,
        param.config,
        CaseSettings(
            device=settings.device,
            golden_dir=settings.golden_dir,
            update_golden=settings.update_golden,
            seed=settings.seed,
            timeout=limit,
            timeout_option=limit_option,
            checks=settings.checks,
            latency=settings.latency,
        ),
    )
    identity = {"model": param.model, "config_id": param.config.config_id, "config": param.config.to_dict()}
    record(request.node, CASE_KEY, identity)
    add_junit_properties(request.node, CASE_KEY, identity)
    reason = too_big_reason(spec, settings.max_params)
    if reason:
        pytest.skip(reason)
    return case


def finish_case(request: pytest.FixtureRequest, case: TpruneCase) -> None:
    """Record the case's figures and the goldens it wrote; free what a failed prune left behind."""
    if not case.has_pruned:
        from pytest_tprune.engine.resources import release_memory

        release_memory()
    from pytest_tprune.engine.identity import runtime_facts

    node, row = request.node, case.report_row()
    record(node, FIGURES_KEY, row)
    record(node, RUNTIME_KEY, runtime_facts())
    add_junit_properties(node, FIGURES_KEY, row)
    for path in case.golden_written:
        shown = rootdir_relative(path, request.config.rootpath)
        record(node, WRITTEN_KEY, shown)
        add_junit_properties(node, WRITTEN_KEY, shown)


def rootdir_relative(path: str, rootdir: Path) -> str:
    """A written golden's path as reports show it: relative to the rootdir when under it, so a committed report
    names the same files on every checkout (absolute where the golden directory lies elsewhere)."""
    try:
        return Path(path).resolve().relative_to(rootdir.resolve()).as_posix()
    except ValueError:
        return path


def _time_limit(spec: ModelSpec, param: CaseParam, settings: Settings) -> tuple[float | None, str]:
    """The case's time limit and the option that sets it: a known hang or known-slow model runs under
    ``--tprune-slow-limit`` (never longer than ``--tprune-timeout``), every other case under the run's."""
    from pytest_tprune.engine.known import is_timed

    slow = settings.slow_limit if is_timed(spec.failure_reason(param.config.config_id)) else None
    if slow and (not settings.timeout or slow < settings.timeout):
        return slow, "--tprune-slow-limit"
    return settings.timeout, "--tprune-timeout"


def slow_timeouts_expected(item: pytest.Item) -> Generator[None, object, object]:
    """Wraps a test's call: a known-slow case that runs out of its limit is an expected failure claiming
    nothing broke (pytest's xfail, chained to the timeout so the report still says ``timeout``); every other
    outcome, a known-slow case's included, stands as it is."""
    from pytest_tprune.errors import CaseTimeout

    try:
        return (yield)
    except CaseTimeout as exc:
        reason = _slow_reason(item)
        if reason is None:
            raise
        raise pytest.xfail.Exception(
            f"known slow: {reason} [here: {exc}; --tprune-slow-limit=0 judges it under --tprune-timeout]"
        ) from exc


def _slow_reason(item: pytest.Item) -> str | None:
    """The cause of a known-slow model's case (after ``slow: ``), or None for any other item."""
    from pytest_tprune.engine.known import is_slow

    param = case_param(item)
    state = item.config.stash.get(STATE, None)
    if param is None or state is None:
        return None
    reason = run_models(item.config, state)[param.model].failure_reason(param.config.config_id)
    return str(reason).removeprefix("slow: ") if is_slow(reason) else None


def note_failure(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """A failed phase of a case: which check failed, for the report; a traceback pytest can render."""
    if call.excinfo is None or case_param(item) is None:
        return
    check = failed_check(call.excinfo.value)
    record(item, CHECK_KEY, check)
    add_junit_properties(item, CHECK_KEY, check)
    drop_frames_without_line_numbers(call.excinfo)


def failed_check(exc: BaseException) -> str:
    """A check's name, ``prune:<step>`` for the engine, ``timeout``, else the exception's type."""
    from pytest_tprune.errors import CaseTimeout, PruneStepError

    if isinstance(exc, PruneStepError):
        return f"prune:{exc.step}"
    if isinstance(exc, CaseTimeout) or isinstance(exc.__cause__, CaseTimeout):
        return "timeout"
    return str(getattr(exc, "check", type(exc).__name__))


def drop_frames_without_line_numbers(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Unlink traceback entries that have no line number, in the exception and every exception chained to it.

    A time limit raises from a signal handler, which on Python 3.11 can land
    on an instruction without a line number; pytest's traceback rendering then
    crashes the whole session (INTERNALERROR, and under xdist the worker)
    instead of failing the case. The entry can sit in the failing exception's
    own traceback or in one chained to it: a known-slow case's expected
    failure is raised ``from`` the timeout, and pytest renders the whole chain.
    pytest renders the failing exception from ``excinfo.traceback`` and each
    chained one from its ``__traceback__``, so those are rebuilt.
    """
    head, changed = _without_lineless(excinfo.tb)
    if changed and head is not None:
        excinfo.traceback = type(excinfo.traceback)(head)
    for exc in _chained(excinfo.value):
        exc.__traceback__ = _without_lineless(exc.__traceback__)[0]


def _chained(top: BaseException) -> list[BaseException]:
    """Every exception ``top`` chains to, through causes and contexts, each once."""
    found: list[BaseException] = []
    seen, pending = {id(top)}, [top.__cause__, top.__context__]
    while pending:
        exc = pending.pop()
        if exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            found.append(exc)
            pending += [exc.__cause__, exc.__context__]
    return found


def _without_lineless(head: TracebackType | None) -> tuple[TracebackType | None, bool]:
    """The traceback from ``head`` with its entries lacking a line number unlinked: its new head, and whether
    any was."""
    changed = False
    while head is not None and head.tb_lineno is None:
        head, changed = head.tb_next, True
    node = head
    while node is not None:
        while node.tb_next is not None and node.tb_next.tb_lineno is None:
            node.tb_next, changed = node.tb_next.tb_next, True
        node = node.tb_next
    return head, changed


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class RunReporter:
    """Registered per run: observes reports and finishes the run (summary, unused goldens, JSON).

    It also keeps what tells a whole run from a cut-short one, since the exit
    status does not (``-x`` exits 1 without xdist and 2 with it, exhausted
    worker restarts exit 1): the tests collected, started and finished, and
    what interrupted the run.
    """

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.config.pluginmanager.getplugin("dsession") is not None:
            return  # an xdist controller collects nothing: XdistController hears the workers' collections
        self.state.collected = {item.nodeid for item in session.items}
        self.state.collection_known = True

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.state.started.add(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.state.finished.add(nodeid)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        exc = excinfo.value
        kind = type(exc).__qualname__ if type(exc).__module__ == "builtins" else type(exc).__name__
        self.state.interrupt = f"{kind}: {exc}" if str(exc) else kind

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_tprune.session.outcomes import observe_report

        observe_report(self.state, report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config, state = session.config, self.state
        if is_worker(config):
            payload = {"generated": sorted(state.generated), "selected": sorted(state.selected)}
            config.workeroutput[WORKER_OUTPUT_KEY] = json.dumps(payload)  # type: ignore[attr-defined]
            return
        from pytest_tprune.session.outcomes import RunEnd, finish_run

        end = RunEnd(
            exitstatus=int(exitstatus),
            stopped=str(session.shouldfail or session.shouldstop or "") or None,
            collect_only=bool(config.option.collectonly),
        )
        if finish_run(state, end) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if is_worker(config):
            return
        from pytest_tprune.session.outcomes import summary_lines

        lines = summary_lines(self.state)
        if lines:
            terminalreporter.write_sep("=", "tprune summary")
            for line in lines:
                terminalreporter.write_line(line)


class XdistController:
    """Registered only when xdist is loaded: merges what each worker collected, and notes workers that died.

    A worker that dies (``os._exit``, a segfault in a forward) is reported by
    xdist as ``pytest_testnodedown`` with an error and no ``workeroutput``,
    then a synthesised failed report for the test it was running. The exit
    code or signal is only on execnet's private Popen handle, read with every
    step guarded (see :func:`pytest_tprune.session.outcomes.worker_down`).
    """

    def __init__(self, state: RunState) -> None:
        self.state = state

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.state.collected is None:
            self.state.collected = set(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        # Called twice for a worker stopped by KeyboardInterrupt (error None, then "keyboard-interrupt").
        if error is not None:
            from pytest_tprune.session.outcomes import worker_down

            info = worker_down(node, error)
            self.state.workers_down[info["worker_id"]] = info
        raw = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if not raw:
            return
        payload = json.loads(raw)
        self.state.generated |= {tuple(key) for key in payload["generated"]}
        self.state.selected |= {tuple(key) for key in payload["selected"]}
        self.state.collection_known = True

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """Attach how the worker went down to its crash report; return None (a firstresult hook: claim nothing).

        ``report.outcome`` stays ``failed``: rewriting it would turn the run green.
        """
        from pytest_tprune.session.outcomes import crash_info

        setattr(report, CRASH_ATTR, crash_info(self.state, getattr(report, "node", None)))

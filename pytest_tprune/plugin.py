"""pytest hooks, options and the fixture of pytest-tprune: each a one-line call into :mod:`pytest_tprune.session`.

Collection is deterministic (sorted models, ratios and modes; no randomness),
so every xdist worker collects the same cases in the same order. Per-case
figures travel in ``report.user_properties`` (serialised by xdist); the cases
each worker collected travel in ``workeroutput``; only the controller prints the
summary, decides about unused goldens and writes the JSON report.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.session import header, run
from pytest_tprune.session.settings import add_options
from pytest_tprune.session.state import STATE

if TYPE_CHECKING:
    from pytest_tprune.checks.case import TpruneCase


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_tprune import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    run.configure(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return header.report_header(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tprune_case" in metafunc.fixturenames:
        from pytest_tprune.session.cases import parametrize

        parametrize(metafunc, metafunc.config.stash[STATE])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run.note_collected(config, items, selected=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    run.note_collected(session.config, session.items, selected=True)


@pytest.fixture
def tprune_case(request: pytest.FixtureRequest) -> Generator[TpruneCase, None, None]:
    """One pruning case (model x config) of the run's selection, with its checks."""
    case = run.start_case(request)
    yield case
    run.finish_case(request, case)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    return (yield from run.slow_timeouts_expected(pyfuncitem))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    run.note_failure(item, call)
    return (yield)

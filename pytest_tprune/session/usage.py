"""A bad model selection, found while collecting, ends the run in one line with exit status 4.

The selection (``--tprune-models``, ``--tprune-exclude``, downstream models) is
resolved lazily, by the first test that asks for pruning cases, so that a
session without such a test never imports timm. That happens inside pytest's
collection, which turns any exception, a ``pytest.UsageError`` included, into
a collection error with a traceback through pluggy (exit status 2); under
xdist every worker reports its own copy and the run ends with status 1.

pytest prints a usage error as one ``ERROR:`` line with status 4 only when it
escapes the session, so :class:`SelectionErrors` raises it again from
``pytest_collectreport``, before the terminal reporter records the error: in
the process that collected (no xdist, ``-n 0``), or under xdist in the
controller, when the first worker's failed report arrives. The message
travels to the controller as an attribute of the report, which xdist
serialises with it.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_tprune.errors import UsageError

REPORT_ATTR = "tprune_usage_error"
"""The attribute of a failed collection report that carries the selection's usage error."""
PENDING = pytest.StashKey[str]()
"""The usage error the collector being reported raised, until its report is tagged."""
REPORTER = "tprune-reporter"
"""The name :func:`pytest_tprune.session.run.configure` registers the run's reporter under."""


def selection_failed(config: pytest.Config, err: UsageError) -> pytest.UsageError:
    """The exception to raise from collection for ``err``, remembered so its report can be tagged."""
    message = str(err)
    config.stash[PENDING] = message
    return pytest.UsageError(message)


class SelectionErrors:
    """Registered per run: turns a collection error from a bad selection into pytest's usage error."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        message = self.config.stash.get(PENDING, None)
        if message is not None and report.failed:
            del self.config.stash[PENDING]
            setattr(report, REPORT_ATTR, message)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        message = getattr(report, REPORT_ATTR, None)
        if message and not hasattr(self.config, "workerinput"):  # a worker sends it to the controller
            self.drop_reporter()
            raise pytest.UsageError(message)

    def drop_reporter(self) -> None:
        """A run stopped by a usage error never began: no tprune summary, and above all no JSON report.

        The reporter would write one that says ``complete`` with no cases, and
        it would replace the complete report of the last real run.
        """
        manager = self.config.pluginmanager
        if manager.get_plugin(REPORTER) is not None:
            manager.unregister(name=REPORTER)

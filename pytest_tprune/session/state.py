"""What the plugin knows about one run in one process, and the keys its per-case data travels under.

Per-case data goes from the process that ran a case to the one that reports
in a private attribute of each ``TestReport`` (xdist serialises it; see
:mod:`pytest_tprune.session.transport`), under the keys below, and as scalar
``user_properties`` of the same names for junit; each worker's collection
travels in ``workeroutput``. ``config.stash`` holds the :class:`RunState` and
is never sent anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.session.settings import Settings

if TYPE_CHECKING:
    from pytest_tprune.engine.models import ModelSpec
    from pytest_tprune.reports.schema import CaseRow

CASE_KEY = "tprune_case"
"""The case's identity: model, config id and config (appended when the fixture starts)."""
FIGURES_KEY = "tprune_figures"
"""The case's figures, or what it used when its prune did not finish."""
WRITTEN_KEY = "tprune_golden_written"
"""A golden file the case wrote (one entry per file)."""
CHECK_KEY = "tprune_check"
"""The check that failed: a check's name, ``prune:<step>`` or ``timeout``."""
RUNTIME_KEY = "tprune_runtime"
"""What the process that ran the case found: the engine guards' status and CUDA (:func:`identity.runtime_facts`)."""
WORKER_OUTPUT_KEY = "tprune"
"""The ``workeroutput`` entry holding what a worker collected."""
CRASH_ATTR = "_tprune_crash"
"""Attribute xdist's synthesised crash report carries on the controller: how its worker went down."""


@dataclass(frozen=True)
class CaseParam:
    """The parameter of one ``tprune_case``: a model and a config."""

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
    """The run's models by name, resolved when the first test asks for cases (``cases.run_models``)."""
    generated: set[tuple[str, str]] = field(default_factory=set)
    selected: set[tuple[str, str]] = field(default_factory=set)
    rows: dict[str, CaseRow] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    collection_known: bool = False
    """``generated``/``selected`` hold a whole collection: this process's, or at least one xdist worker's
    (every worker collects the same cases; a worker that crashed or was interrupted sends nothing)."""
    collected: set[str] | None = None
    """Every test the run was to run (cases or not); None until collection is known."""
    started: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    """Tests whose protocol ended: ``logfinish`` seen, or their worker's crash report."""
    workers_down: dict[str, dict[str, Any]] = field(default_factory=dict)
    """xdist worker id -> how it went down (crashed or interrupted, exit code or signal)."""
    crashes: list[dict[str, Any]] = field(default_factory=list)
    """Every test whose worker died under it, case or not: nodeid, worker id, exit code or signal."""
    interrupt: str | None = None
    """What interrupted the run (``pytest_keyboard_interrupt``), as type and message."""
    incomplete_reason: str | None = None
    """Set when the run finished: why it did not cover every collected test (None: complete)."""
    report_lines: list[str] = field(default_factory=list)
    """What the summary says about where the JSON report and the markdown summary went (and a complete one kept)."""
    rootdir: str | None = None
    """pytest's rootdir: failure messages in the report name paths relative to it."""
    load_start: float | None = None
    """The machine's 1-minute load average when the run started (None where the OS has none)."""
    runtime: dict[str, Any] | None = None
    """The guards and CUDA facts of the first process that ran a case (``RUNTIME_KEY``): what the summary and
    the report say, so an xdist controller never imports torch-pruning to find them out (None: no case ran)."""


def one_minute_load() -> float | None:
    """The 1-minute load average (``os.getloadavg``), None where unavailable: how busy the machine is right now."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows has no getloadavg; OSError when it cannot be read
        return None


STATE = pytest.StashKey[RunState]()

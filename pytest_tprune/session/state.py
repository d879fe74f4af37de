"""What the plugin knows about one run in one process, and the keys its per-case data travels under.

Per-case data goes from the process that ran a case to the one that reports
in ``report.user_properties`` (xdist serialises them), under the keys below;
each worker's collection travels in ``workeroutput``. ``config.stash`` holds
the :class:`RunState` and is never sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
WORKER_OUTPUT_KEY = "tprune"
"""The ``workeroutput`` entry holding what a worker collected."""


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


STATE = pytest.StashKey[RunState]()

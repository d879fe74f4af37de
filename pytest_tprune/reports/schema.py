"""The report schema, written and read in one place.

``pytest --tprune-report PATH`` writes :func:`report_document`;
``tprune compare``, ``merge`` and ``table`` read it back with
:func:`load_report`, which checks what they rely on and says in one line what
is wrong with a file that is not a usable report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error", "crashed", "interrupted")
"""A case's outcome. ``crashed``: its xdist worker died while running it (pytest counts it as failed);
``interrupted``: the run was stopped while it ran (Ctrl-C, ``-x`` under xdist), so it never finished."""
FAILING = frozenset({"failed", "error", "crashed"})
"""Outcomes that are a failure of the case: a regression when the case did not fail before."""
STOCK_VERDICTS = ("ok", "skips groups", "breaks the forward", "crashes", "hangs")
"""What stock torch-pruning (without the engine's fallbacks) does with a case, from best to worst: a case may
carry ``stock: {"verdict": V, "detail": "..."}``, and ``tprune compare`` ranks the verdicts in this order."""
MACHINE_LOAD_KEY = "load_1min"
"""The environment entry holding the machine's 1-minute load average at the run's start and end: it says
whether two runs' durations are comparable, and differs between any two runs, so it is never an
environment change to compare or to refuse a merge over."""
DETAIL_MAX_LINES = 80
DETAIL_MAX_CHARS = 8000
"""A failure's ``detail`` (its whole message) is cut to this: enough for a golden diff, not a log."""

Key = tuple[str, ...]
Case = dict[str, Any]


class ReportError(Exception):
    """Bad input: a file that cannot be read or is no usable report (exit status 2)."""


# --- writing --------------------------------------------------------------------------------------------------------


@dataclass
class CaseRow:
    nodeid: str
    model: str
    config_id: str
    config: dict[str, Any]
    outcome: str = "passed"
    failed_check: str | None = None
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    cpu_time: float | None = None
    """CPU seconds of the process that ran the case (all its threads), over the same phases as ``duration``."""
    detail: str | None = None
    """A failure's whole message when it has more lines than ``reason`` (a golden diff), paths relative."""
    crash: dict[str, Any] | None = None
    """For a ``crashed`` case: the worker id, its exit code or signal, xdist's error text."""

    def to_dict(self) -> dict[str, Any]:
        crash = {"crash": self.crash} if self.crash is not None else {}
        detail = {"detail": self.detail} if self.detail is not None else {}
        cpu = {"cpu_time": round(self.cpu_time, 4)} if self.cpu_time is not None else {}
        return {
            "nodeid": self.nodeid,
            "model": self.model,
            "config_id": self.config_id,
            "config": self.config,
            "outcome": self.outcome,
            "failed_check": self.failed_check,
            "reason": self.reason,
            **detail,
            "duration": round(self.duration, 4),
            **cpu,
            **crash,
            **self.figures,
        }


def report_document(
    rows: list[CaseRow],
    environment: dict[str, Any],
    extra: dict[str, Any],
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """The JSON report; ``finished`` (UTC) dates the run even after a clone resets the file's mtime.

    ``complete`` is false when the run stopped before every collected test
    finished (``incomplete_reason`` says why): such a report lists only the
    cases that finished, so a reader must not take it for the whole run.
    """
    return {
        "schema": REPORT_SCHEMA,
        "tool": "pytest-tprune",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": incomplete_reason is None,
        "incomplete_reason": incomplete_reason,
        "environment": environment,
        **extra,
        "cases": [row.to_dict() for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid))],
    }


# --- reading --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One run report, checked: its path, environment, settings and cases."""

    path: str
    document: dict[str, Any]

    @property
    def environment(self) -> dict[str, Any]:
        env = self.document.get("environment")
        return env if isinstance(env, dict) else {}

    @property
    def settings(self) -> dict[str, Any]:
        settings = self.document.get("settings")
        return settings if isinstance(settings, dict) else {}

    @property
    def cases(self) -> list[Case]:
        cases: list[Case] = self.document["cases"]
        return cases

    @property
    def complete(self) -> bool:
        return is_complete(self.document)

    @property
    def incomplete_reason(self) -> str:
        """Why the run is incomplete, as the report says (a generic text for a report that says nothing)."""
        reason = self.document.get("incomplete_reason")
        return str(reason) if reason else "the run stopped before every test finished"


def is_complete(document: dict[str, Any]) -> bool:
    """Whether a report covers its whole run.

    Reports written before ``complete`` existed have no such key; every one of
    them was written at the end of a run, so a missing key reads as complete.
    """
    return document.get("complete", True) is not False


def existing_complete_report(path: Path) -> bool:
    """Whether ``path`` holds a complete pytest-tprune report (one an interrupted run must not replace)."""
    try:
        document = read_json(str(path))
    except ReportError:
        return False
    return isinstance(document, dict) and document.get("tool") == "pytest-tprune" and is_complete(document)


def read_json(path: str) -> Any:
    """The JSON content of ``path``; a :class:`ReportError` saying why not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not JSON (not UTF-8 text)") from None
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise ReportError(f"{path} is not usable JSON ({type(err).__name__})") from None


def check_case(path: str, index: int, case: Any) -> None:
    """Raise a :class:`ReportError` unless ``case`` has what a comparison reads."""
    if not isinstance(case, dict):
        raise ReportError(f"{path} is not a valid pytest-tprune report: case {index} is not an object")
    for name in ("nodeid", "model", "config_id", "outcome"):
        if not isinstance(case.get(name), str):
            raise ReportError(f"{path} is not a valid pytest-tprune report: case {index} has no text '{name}'")
    if case["outcome"] not in OUTCOMES:
        raise ReportError(f"{path}: case {index} has an unknown outcome {case['outcome']!r}")
    check_stock(path, index, case.get("stock"))


def check_stock(path: str, index: int, stock: Any) -> None:
    """Raise a :class:`ReportError` unless a case's ``stock`` is absent or ``{"verdict": one of STOCK_VERDICTS}``."""
    if stock is None:
        return
    verdict = stock.get("verdict") if isinstance(stock, dict) else None
    if verdict not in STOCK_VERDICTS:
        found = repr(verdict) if isinstance(stock, dict) else "not an object"
        raise ReportError(
            f"{path}: case {index} has an unknown stock verdict ({found}): expected one of {', '.join(STOCK_VERDICTS)}"
        )


def load_report(path: str) -> Report:
    """Read and check one report; a :class:`ReportError` with one line for anything unusable."""
    document = read_json(path)
    if not isinstance(document, dict) or document.get("tool") != "pytest-tprune":
        raise ReportError(f"{path} is not a pytest-tprune report (write one with pytest --tprune-report PATH)")
    schema = document.get("schema")
    if schema != REPORT_SCHEMA:
        raise ReportError(
            f"{path} has report schema {schema!r}, this pytest-tprune reads schema {REPORT_SCHEMA}: "
            "compare reports written by the same pytest-tprune version"
        )
    if not isinstance(document.get("complete", True), bool):
        raise ReportError(f"{path} is not a valid pytest-tprune report: 'complete' is not true or false")
    cases = document.get("cases")
    if not isinstance(cases, list):
        raise ReportError(f"{path} is not a valid pytest-tprune report: 'cases' is not a list")
    for index, case in enumerate(cases):
        check_case(path, index, case)
    return Report(path, document)

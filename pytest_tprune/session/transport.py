"""How a case's data travels to the reporting process, and the scalar properties junit sees.

A case's identity, figures, failed check, written goldens and CPU time go
from the process that ran it (an xdist worker, or the only process) to the
one that reports in a private attribute of each phase's ``TestReport``
(:data:`TRANSPORT_ATTR`): pytest serialises a report's extra attributes for
xdist, and nothing else reads them. ``user_properties`` would carry them too,
but ``--junitxml`` writes every user property as ``str(value)``, so a dict
became a Python repr in the XML. There, the plugin puts only scalars: each
dict flattened into ``tprune_<name>_<key>`` properties of numbers and short
strings (:func:`scalar_properties`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from typing import Any

import pytest

TRANSPORT_ATTR = "_tprune_entries"
"""The ``TestReport`` attribute holding the case's (key, value) entries recorded up to that phase."""
CPU_KEY = "tprune_cpu_time"
"""The entry holding the CPU seconds of the case's phases so far, in the process that ran them."""
MAX_TEXT = 200
"""A junit property's text is cut to this many characters: properties are for filtering, not for logs."""

ENTRIES = pytest.StashKey[list[tuple[str, Any]]]()
CPU_SECONDS = pytest.StashKey[float]()


def record(item: pytest.Item, key: str, value: Any) -> None:
    """Send ``(key, value)`` with the item's next reports (the reporting process reads it with :func:`entries`)."""
    item.stash.setdefault(ENTRIES, []).append((key, value))


def entries(report: pytest.TestReport) -> list[tuple[str, Any]]:
    """The entries a phase's report carries (lists after xdist's round trip: each is unpacked as a pair)."""
    found = getattr(report, TRANSPORT_ATTR, None)
    return [(str(key), value) for key, value in found] if isinstance(found, list) else []


def _name(key: Any) -> str:
    """A dict key as a property-name part: letters, digits and underscores only."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(key)).strip("_") or "_"


def _scalar(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def scalar_properties(name: str, value: Any) -> list[tuple[str, str | int | float]]:
    """``value`` as junit-safe properties: a dict (or list) becomes one ``name_key`` property per scalar inside.

    ``None`` is left out (the property's absence says it); a list of scalars
    is one comma-separated property; bools read ``true``/``false``.
    """
    if value is None:
        return []
    if isinstance(value, dict):
        return [prop for key, inner in value.items() for prop in scalar_properties(f"{name}_{_name(key)}", inner)]
    if isinstance(value, list | tuple):
        if all(v is None or isinstance(v, str | int | float) for v in value):
            return [(name, _scalar(",".join(str(v) for v in value)))]
        return [prop for index, inner in enumerate(value) for prop in scalar_properties(f"{name}_{index}", inner)]
    return [(name, _scalar(value))]


def add_junit_properties(item: pytest.Item, name: str, value: Any) -> None:
    """Record ``value`` for the test's junit ``<properties>`` (and other readers of ``user_properties``), as scalars."""
    item.user_properties.extend(scalar_properties(name, value))


def _cpu_timed(item: pytest.Item) -> Generator[None, Any, Any]:
    """Run one phase, adding the CPU seconds it took (every thread of this process) to the item's total."""
    start = time.process_time()
    try:
        return (yield)
    finally:
        item.stash[CPU_SECONDS] = item.stash.get(CPU_SECONDS, 0.0) + time.process_time() - start


class CaseTransport:
    """Registered in every process: times each phase's CPU and attaches the entries to each phase's report.

    The CPU time sits next to the wall time in the report, so two runs'
    durations can be read against how busy their machines were.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from _cpu_timed(item))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from _cpu_timed(item))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from _cpu_timed(item))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report = yield
        found = item.stash.get(ENTRIES, None)
        if found:
            seconds: float = item.stash.get(CPU_SECONDS, 0.0)
            cpu = [(CPU_KEY, round(seconds, 4))]
            setattr(report, TRANSPORT_ATTR, [*found, *cpu])
        return report

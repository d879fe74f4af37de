"""Run reports: the session's rows, the terminal table and the JSON report.

Rows travel from the process that ran a case to the one that reports through
``report.user_properties``, which pytest serialises for xdist; the controller
(or the single process without xdist) is the only one that prints or writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "model": self.model,
            "config_id": self.config_id,
            "config": self.config,
            "outcome": self.outcome,
            "failed_check": self.failed_check,
            "reason": self.reason,
            "duration": round(self.duration, 4),
            **self.figures,
        }


NOT_ENGINE = frozenset({"__main__.py", "cli.py", "compare.py", "table.py"})
"""Modules that only read reports or front the command line: editing them changes no case's outcome,
so it does not change the fingerprint (re-rendering a table must not invalidate hours of zoo shards)."""


def engine_fingerprint(root: Path | None = None) -> str:
    """A short hash of this package's code and data: which revision of pytest-tprune made a report.

    Library versions say which torch, timm and torch-pruning ran; outcomes
    also depend on our own engine (adapters, groups left whole, the known
    failures table), which changes far more often than its version number.
    With it in the environment, ``tprune merge`` refuses shards of a zoo run
    made by two revisions, and ``tprune compare`` shows an engine change next
    to a library upgrade. Uncommitted edits count: they change outcomes too;
    the modules in :data:`NOT_ENGINE` do not.
    """
    root = root or Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts and path.name not in NOT_ENGINE:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:12]


def engine_version() -> str:
    """``0.1.0+<fingerprint>``: the package version with the engine's fingerprint as its local part."""
    from pytest_tprune import __version__

    return f"{__version__}+{engine_fingerprint()}"


def environment(device: str) -> dict[str, Any]:
    """Library versions, our engine's revision and the device: what a comparison between runs must show."""
    from pytest_tprune.golden import library_versions

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "device": device}
    env.update(library_versions())
    env["pytest-tprune"] = engine_version()
    try:
        import torch

        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def report_document(rows: list[CaseRow], device: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report; ``finished`` (UTC) dates the run even after a clone resets the file's mtime."""
    return {
        "schema": REPORT_SCHEMA,
        "tool": "pytest-tprune",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(device),
        **extra,
        "cases": [row.to_dict() for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid))],
    }


def _millions(value: Any, unit: float) -> str:
    return f"{value / unit:.2f}" if isinstance(value, int) else "-"


def summary_table(rows: list[CaseRow]) -> list[str]:
    """One line per case: model, config, params and MACs before -> after, kept %, outcome."""
    header = f"{'model':<28} {'config':<16} {'params M':>19} {'MACs G':>19} {'kept':>7}  outcome"
    lines = [header, "-" * len(header)]
    for row in sorted(rows, key=lambda r: (r.model, r.config_id, r.nodeid)):
        f = row.figures
        params = f"{_millions(f.get('params_before'), 1e6)} -> {_millions(f.get('params_after'), 1e6)}"
        macs = f"{_millions(f.get('macs_before'), 1e9)} -> {_millions(f.get('macs_after'), 1e9)}"
        kept = f"{f['kept_params']:.1%}" if "kept_params" in f else "-"
        outcome = row.outcome + (f" ({row.failed_check})" if row.failed_check else "")
        lines.append(f"{row.model:<28.28} {row.config_id:<16} {params:>19} {macs:>19} {kept:>7}  {outcome}")
    counts = {o: sum(r.outcome == o for r in rows) for o in OUTCOMES}
    lines.append(", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no cases")
    return lines

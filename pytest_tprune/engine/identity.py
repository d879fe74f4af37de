"""Which code made a result: library versions, the engine's fingerprint, the device.

Torch-free except :func:`runtime_facts` (guard status, CUDA), which :func:`environment` calls only
when no case's process sent them, so a
report reader, a benchmark driver or the pytest header can tell whether a
stored result is current (and whether a release was tested) without importing
torch.
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

VERSION = "0.1.0"
"""pytest-tprune's release (``pytest_tprune.__version__``); :func:`engine_version` adds the fingerprint."""

GUARDED_LIBRARIES = ("torch", "timm", "torch-pruning")
"""The libraries whose behaviour the suite guards: recorded in every golden and report."""

TESTED_RANGES: dict[str, tuple[str, str]] = {
    "torch": ("2.1.2", "2.15.0"),
    "timm": ("1.0.20", "1.0.31"),
    "torch-pruning": ("1.5.3", "1.6.1"),
}
"""The oldest and newest release of each guarded library the suite has been run on
(docs/upgrades.md, "Older releases", has the runs). A release outside its range runs like
any other and is reported as untested, never refused; widen the range after a run on it."""

EXPORTER_PACKAGES: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript", "onnxruntime")}
"""The packages an optional exporter runs on (the ``onnx`` extra). Their versions are recorded wherever that
exporter's outcomes are (the report's environment, a golden holding its status), so an export verdict that
changed after ``pip install -U onnxruntime`` is read next to the version that moved, not blamed on pruning."""
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
FINGERPRINTED = ("engine", "checks")
"""The folders whose code decides a case's outcome; the hook layer, the reports and the command line do not."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour a golden captures."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in GUARDED_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def untested_notes(versions: Mapping[str, str] | None = None) -> list[str]:
    """One note per guarded library installed outside :data:`TESTED_RANGES` (``versions``: by default the installed).

    ``torch-pruning 1.7.0 is newer than the newest tested 1.6.1``: the run goes
    on, and its verdicts are about an untested release, which the header and
    the report say.
    """
    notes = []
    for name, found in (library_versions() if versions is None else versions).items():
        tested, release = TESTED_RANGES.get(name), _release(found)
        if tested is None or release is None:
            continue
        oldest, newest = tested
        if release > (_release(newest) or release):
            notes.append(f"{name} {found} is newer than the newest tested {newest}")
        elif release < (_release(oldest) or release):
            notes.append(f"{name} {found} is older than the oldest tested {oldest}")
    return notes


def exporter_versions(exporters: Iterable[str] = EXPORTER_PACKAGES) -> dict[str, str]:
    """The installed versions of the packages of each of ``exporters`` that has every one of its packages.

    An exporter missing any package does not run (its status is ``not available``,
    never written to a golden), so it records nothing either: a machine without
    the ``onnx`` extra gives ``{}``, and reports and goldens made there are what
    they were before this field existed. Torch-free: package metadata only.
    """
    found: dict[str, str] = {}
    for exporter in exporters:
        installed: dict[str, str] = {}
        for package in EXPORTER_PACKAGES.get(exporter, ()):
            found_version = _installed_version(package)
            if found_version is None:
                break  # the exporter cannot run: record none of its packages
            installed[package] = found_version
        else:
            found.update(installed)
    return found


def _installed_version(package: str) -> str | None:
    """The version of the distribution that installs import name ``package`` (``onnxruntime`` may come from
    ``onnxruntime-gpu`` or another build of it), or None."""
    from importlib import metadata

    for distribution in (package, *metadata.packages_distributions().get(package, ())):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _release(version: str) -> tuple[int, ...] | None:
    """``2.15.0+cu128`` -> (2, 15, 0); None for ``absent`` or a version that does not start with a number."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else None


def engine_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """A short hash of the code and data that decide outcomes: which revision of pytest-tprune made a report.

    Library versions say which torch, timm and torch-pruning ran; outcomes
    also depend on our own engine and checks (adapters, groups left whole, the
    known failures table, the shape rule), which change far more often than
    the version number. With it in the environment, ``tprune merge`` refuses
    shards of a zoo run made by two revisions, and ``tprune compare`` shows an
    engine change next to a library upgrade. Uncommitted edits count: they
    change outcomes too. Only the folders in :data:`FINGERPRINTED` are hashed,
    so re-rendering a table or fixing a hook does not invalidate hours of zoo
    shards.
    """
    digest = hashlib.sha256()
    for folder in FINGERPRINTED:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:12]


def engine_version() -> str:
    """``0.1.0+<fingerprint>``: the package version with the engine's fingerprint as its local part."""
    return f"{VERSION}+{engine_fingerprint()}"


def run_identity() -> dict[str, Any]:
    """Python, the guarded libraries and the engine: what decides whether a stored result is current."""
    return {"python": platform.python_version(), **library_versions(), "pytest-tprune": engine_version()}


def runtime_facts() -> dict[str, Any]:
    """What only a process with torch and torch-pruning imported knows: the guards' status and line, and CUDA.

    The process that runs a case sends these with it (``RUNTIME_KEY``), so the
    reporting process (an xdist controller) says what the cases ran with, and
    does not import torch-pruning (and torch, about 5 s of CPU) to probe again.
    """
    from pytest_tprune.engine.tp_internals.guards import guard_status, guard_summary

    facts: dict[str, Any] = {"guards": guard_status(), "guards_line": guard_summary()}
    try:
        import torch

        available = torch.cuda.is_available()
        facts["cuda"] = torch.version.cuda if available else None
        facts["cudnn"] = torch.backends.cudnn.version() if available else None
    except ImportError:
        pass
    return facts


def environment(device: str, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`run_identity` plus the platform, device, CUDA and guards: what a comparison between runs must show.

    ``guards`` is each engine guard's status (active, or unavailable and why)
    for the installed torch-pruning: a guard that is off changes verdicts.
    Guards and CUDA come from ``runtime``, the :func:`runtime_facts` a case's
    process sent; without it (no case ran, or none reported) this process
    probes for itself, import-only.
    ``untested`` lists the libraries outside :data:`TESTED_RANGES`, when any.
    The optional exporters' packages (:func:`exporter_versions`) are listed where installed.
    """
    identity = run_identity()
    env: dict[str, Any] = {"python": identity.pop("python"), "platform": platform.platform(), "device": device}
    env.update(identity)
    env.update(exporter_versions())
    facts = runtime if runtime is not None else runtime_facts()
    env["guards"] = facts["guards"]
    notes = untested_notes({name: str(identity[name]) for name in GUARDED_LIBRARIES})
    if notes:
        env["untested"] = notes
    for key in ("cuda", "cudnn"):
        if key in facts:
            env[key] = facts[key]
    return env

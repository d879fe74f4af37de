"""Which code made a result: library versions, the engine's fingerprint, the device.

Torch-free except :func:`environment`'s CUDA entries, so a report reader or a
benchmark driver can tell whether a stored result is current without importing
torch.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

VERSION = "0.1.0"
"""pytest-tprune's release (``pytest_tprune.__version__``); :func:`engine_version` adds the fingerprint."""

GUARDED_LIBRARIES = ("torch", "timm", "torch-pruning")
"""The libraries whose behaviour the suite guards: recorded in every golden and report."""

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


def environment(device: str) -> dict[str, Any]:
    """:func:`run_identity` plus the platform, the device and CUDA: what a comparison between runs must show."""
    identity = run_identity()
    env: dict[str, Any] = {"python": identity.pop("python"), "platform": platform.platform(), "device": device}
    env.update(identity)
    try:
        import torch

        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env

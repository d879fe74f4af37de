"""What a run says once about its environment: the header line, and the guards line of the summary.

The rule (docs/upgrades.md, "Which guards ran"):

* **Header, always**: torch, timm and torch-pruning versions and the device,
  plus a note for any release outside the tested range. Versions come from the
  installed distributions (``importlib.metadata``), so ``pytest --help`` and a
  session that selects no pruning case import neither torch, timm nor
  torch-pruning; an ``auto`` device is shown as configured, because resolving
  it needs torch.
* **Guards line, once a pruning case ran**: whether each engine guard is active
  on this torch-pruning needs torch-pruning imported, so it comes after the
  cases, in the tprune summary (:func:`guards_line`), and in the JSON report's
  environment (``guards``): as the process that ran the first case found them,
  so an xdist controller does not import torch-pruning to tell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_tprune.session.state import STATE

if TYPE_CHECKING:
    import pytest

    from pytest_tprune.session.state import RunState


def report_header(config: pytest.Config) -> list[str]:
    """The header's tprune line; nothing before the plugin is configured (``--help``)."""
    if STATE not in config.stash:
        return []
    return [versions_line(config.stash[STATE].settings.device)]


def versions_line(device: str) -> str:
    """``tprune: torch 2.15.0, timm 1.0.31, torch-pruning 1.6.1, device cpu``, with any untested release named;
    the onnx exporter's packages come after torch-pruning where installed (``onnx 1.23.2, ...``)."""
    from pytest_tprune.engine.identity import exporter_versions, library_versions, untested_notes

    versions = library_versions()
    listed = {**versions, **exporter_versions()}
    shown = "auto (CUDA when torch finds one, else cpu)" if device == "auto" else device
    line = "tprune: " + ", ".join(f"{name} {version}" for name, version in listed.items()) + f", device {shown}"
    notes = untested_notes(versions)
    return line + (f" (untested: {'; '.join(notes)})" if notes else "")


def guards_line(state: RunState) -> str | None:
    """``tprune guards: ...`` for the summary once a pruning case ran in this run, else None (nothing is probed).

    The line is the one the first case's process sent (``RunState.runtime``);
    only when none did (every worker that ran a case crashed) does this
    process probe for itself, which imports torch-pruning.
    """
    if not state.rows:
        return None
    if state.runtime is not None:
        return f"tprune {state.runtime['guards_line']}"
    from pytest_tprune.engine.tp_internals.guards import guard_summary

    return f"tprune {guard_summary()}"

"""The documented home of :class:`CheckFailed` and :class:`TpruneCase` (``pytest_tprune.case.CheckFailed``).

They live in :mod:`pytest_tprune.errors` and :mod:`pytest_tprune.checks.case`;
this module keeps the documented import path working.
"""

from __future__ import annotations

from pytest_tprune.checks.case import CaseSettings, TpruneCase
from pytest_tprune.errors import CheckFailed

__all__ = ["CaseSettings", "CheckFailed", "TpruneCase"]

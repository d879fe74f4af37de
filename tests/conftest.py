"""Fixtures shared by the plugin's pytester tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An empty-ini project; child runs do not inherit the outer run's xdist identity.

    Test modules whose projects need more (an ini, goldens) define their own ``project``.
    """
    for name in list(os.environ):
        if name.startswith("PYTEST_XDIST_"):
            monkeypatch.delenv(name)
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    return pytester

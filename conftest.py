"""Project-wide test configuration: pytester for the plugin's own end-to-end tests."""

from __future__ import annotations

pytest_plugins = ["pytester"]

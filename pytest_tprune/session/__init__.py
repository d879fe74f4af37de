"""The run: settings from the option table, the run state, the case list, and what became of each case.

Modules here may import pytest, the engine and the checks, never the reverse;
:mod:`pytest_tprune.plugin` calls into them one line per hook.
"""

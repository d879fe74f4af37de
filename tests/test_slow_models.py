"""Known-slow models: running out of the slow-model limit claims nothing; finishing gets a real verdict.

A timm family representative that torch-pruning takes minutes over (``slow: ...`` in
``engine/data/known_zoo_failures.json``) runs under ``--tprune-slow-limit`` (10 s by default) so that the default
run stays within its budget. Such a case used to be a strict xfail that had to time out, which made its verdict
depend on the machine: a fast one finished it and failed the run with an unexpected pass. Now a timeout is an
expected failure that says the model is slow, and a case that finishes (a fast machine, an upgrade that speeds up
tracing, ``--tprune-slow-limit=0`` in a nightly job) is judged by every check, so a broken prune still fails.

The project's model sleeps in its forward for ``SLEEPY_DELAY`` seconds: a stand-in for the minutes of tracing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_pruning")

SLOW_PROJECT = """
import os
import time

from torch import nn

from pytest_tprune import register_model


class Sleepy(nn.Module):
    def forward(self, x):
        time.sleep(float(os.environ.get("SLEEPY_DELAY", "0")))
        return x


@register_model(input_size=(3, 16, 16), ignored_layers=lambda m: [m[-1]], known_failure={cause!r})
def small_cnn():
    return nn.Sequential(
        Sleepy(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 4)
    )
"""

ONE_CASE = ("-p", "no:xdist", "-p", "no:cacheprovider", "--tprune-ratios=0.5", "--tprune-modes=local")


def run_slow_project(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cause: str, delay: float, *args: str
) -> tuple[pytest.RunResult, dict[str, Any]]:
    """One case of the sleepy model, known by ``cause``; the result and the case's row of the JSON report."""
    monkeypatch.setenv("SLEEPY_DELAY", str(delay))
    project.makeconftest(SLOW_PROJECT.format(cause=cause))
    project.makepyfile(test_small="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    report = project.path / "report.json"
    result = project.runpytest_inprocess(*ONE_CASE, f"--tprune-report={report}", "--tprune-update-golden", *args)
    (case,) = json.loads(Path(report).read_text())["cases"]
    return result, case


def test_a_slow_model_that_runs_out_of_its_limit_is_an_expected_failure_that_says_it_is_slow(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, case = run_slow_project(project, monkeypatch, "slow: takes minutes", 1.0, "--tprune-slow-limit=0.2")
    result.assert_outcomes(xfailed=1)
    assert case["failed_check"] == "timeout"
    assert case["reason"].startswith(
        "known slow: takes minutes [here: pruning small_cnn-r0.50-local ran past the per-case time limit of 0.2 s "
        "(--tprune-slow-limit); --tprune-slow-limit=0 judges it under --tprune-timeout]"
    )


def test_a_slow_limit_of_zero_runs_a_slow_model_under_the_runs_timeout(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly job's setting: the slow model gets the run's limit, and the message names that option."""
    args = ("--tprune-slow-limit=0", "--tprune-timeout=0.3")
    result, case = run_slow_project(project, monkeypatch, "slow: takes minutes", 1.0, *args)
    result.assert_outcomes(xfailed=1)
    assert "ran past the per-case time limit of 0.3 s (--tprune-timeout)" in case["reason"]


def test_a_slow_model_that_finishes_is_a_plain_pass_not_an_unexpected_one(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, case = run_slow_project(project, monkeypatch, "slow: takes minutes", 0.0)
    result.assert_outcomes(passed=1)
    assert case["outcome"] == "passed"


def test_a_slow_model_that_finishes_with_a_broken_prune_fails_naming_the_group(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, one_group_dropped: None
) -> None:
    """Being known as slow hides nothing that shows once it finishes: torch-pruning dropping a group fails."""
    result, case = run_slow_project(project, monkeypatch, "slow: takes minutes", 0.0)
    result.assert_outcomes(failed=1)
    assert case["failed_check"] == "groups"
    result.stdout.fnmatch_lines(
        ["*[[]groups[]] torch-pruning offered * and silently skipped 1*", "*  1 (out-channels*"]
    )


@pytest.mark.parametrize(
    ("dropped", "outcome"), [(True, {"xfailed": 1}), (False, {"failed": 1})], ids=["check-fails", "check-passes"]
)
def test_a_slow_model_whose_cause_names_a_check_must_fail_that_check_when_it_finishes(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    dropped: bool,
    outcome: dict[str, int],
) -> None:
    """``slow: [groups] ...``: finishing and failing the groups check is the known failure; finishing and passing
    is an unexpected pass (the fix shows), like any strict known failure."""
    if dropped:
        request.getfixturevalue("one_group_dropped")
    result, _ = run_slow_project(project, monkeypatch, "slow: [groups] a group is dropped", 0.0)
    result.assert_outcomes(**outcome)
    if not dropped:
        result.stdout.fnmatch_lines(["*XPASS(strict)*known failure: slow: [[]groups[]] a group is dropped*"])


def test_a_slow_model_whose_cause_names_a_check_still_may_run_out_of_time(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, case = run_slow_project(project, monkeypatch, "slow: [shapes] breaks", 1.0, "--tprune-slow-limit=0.2")
    result.assert_outcomes(xfailed=1)
    assert case["reason"].startswith("known slow: [shapes] breaks [here: ")


def test_a_negative_slow_limit_is_refused_at_start_up(project: pytest.Pytester) -> None:
    result = project.runpytest_inprocess("-p", "no:xdist", "--tprune-slow-limit=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --tprune-slow-limit must be >= 0, got '-1'"])

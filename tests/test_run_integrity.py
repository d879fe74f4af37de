"""A run's record never calls a crash a pass, and an interrupted run says it is incomplete.

End to end with pytester on ``test_resnet`` cases whose test body crashes its
xdist worker (``os._exit``) or sleeps until the run is interrupted (SIGINT,
sent as FINDINGS-tested: own process group, SIGINT reset to the default in the
child, output to a file). The test bodies prune nothing except the one passing
case of the crash run (``--tprune-checks=forward``), so the runs stay short.
The rules underneath (how a worker went down, why a run is incomplete) are
also checked directly on fake xdist nodes, without a run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# In-process pytester runs forget modules imported during the run; torch cannot be
# imported twice in one process, so import it (and timm) before any run does.
import timm  # noqa: F401
import torch  # noqa: F401

from pytest_tprune.reports.schema import CaseRow
from pytest_tprune.reports.summary import summary_table
from pytest_tprune.session.outcomes import (
    RunEnd,
    describe_returncode,
    finish_run,
    incomplete_reason,
    worker_down,
)
from pytest_tprune.session.settings import Settings
from pytest_tprune.session.state import RunState

TWO_CASES = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local,global")
QUIET = ("-p", "no:cacheprovider")
LOCAL = "test_prune.py::test_prune[test_resnet-r0.50-local]"
GLOBAL = "test_prune.py::test_prune[test_resnet-r0.50-global]"

CRASHING = """
import os

def test_prune(tprune_case):
    if tprune_case.config.config_id == "r0.50-global":
        os._exit(3)  # what a segfault in a forward looks like to xdist: the worker is gone
    tprune_case.check_all()
"""

# The local case runs first (modes keep their order) and passes; the global one sleeps until interrupted.
SLEEPING = """
import os, pathlib, time

def test_prune(tprune_case):
    if tprune_case.config.config_id == "r0.50-global":
        pathlib.Path(os.environ["TPRUNE_TEST_MARKER"]).touch()
        time.sleep(60)

def test_z_late():
    pass
"""

INTERRUPTS_FIRST = """
def test_a_stop():
    raise KeyboardInterrupt

def test_prune(tprune_case):
    pass
"""


def complete_report(path: Path) -> bytes:
    """A complete report from an earlier run, as bytes to compare against after the interrupted run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema": 1, "tool": "pytest-tprune", "complete": True, "environment": {}, "cases": []}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path.read_bytes()


def cases_by_nodeid(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case["nodeid"]: case for case in report["cases"]}


# --- crashed workers ------------------------------------------------------------------------------------------------


def test_a_case_that_kills_its_worker_is_crashed_with_the_worker_and_exit_code(project: pytest.Pytester) -> None:
    project.makepyfile(test_prune=CRASHING)
    report = project.path / "report.json"
    result = project.runpytest_subprocess(
        *QUIET, *TWO_CASES, "-n", "2", "--tprune-checks=forward", f"--tprune-report={report}", timeout=300
    )
    assert result.ret == 1, result.stdout.str()  # pytest still counts the crash as a failure
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_resnet*r0.50-global*crashed (gw*, exit code 3)", "1 passed, 1 crashed"])
    data = json.loads(report.read_text())
    assert data["complete"] is True
    cases = cases_by_nodeid(data)
    crashed = cases[GLOBAL]
    assert crashed["outcome"] == "crashed" and "params_after" not in crashed
    assert crashed["crash"]["worker_id"].startswith("gw") and crashed["crash"]["exit_code"] == 3
    assert crashed["crash"]["signal"] is None and "exit code 3" in crashed["reason"]
    assert cases[LOCAL]["outcome"] == "passed" and cases[LOCAL]["params_after"] < cases[LOCAL]["params_before"]
    assert [c["nodeid"] for c in data["crashes"]] == [GLOBAL]


class FakePopen:
    """execnet's Popen handle of a dead worker: reaped at once, or only after a short wait."""

    def __init__(self, code: int, reaped: bool = True) -> None:
        self.code, self.reaped = code, reaped

    def poll(self) -> int | None:
        return self.code if self.reaped else None

    def wait(self, timeout: float) -> int:
        return self.code


class FakeNode:
    def __init__(self, popen: Any = None, workeroutput: dict[str, Any] | None = None) -> None:
        self.gateway = type("Gateway", (), {"id": "gw7", "_io": type("IO", (), {"popen": popen})()})()
        if workeroutput is not None:
            self.workeroutput = workeroutput


def test_how_a_worker_went_down_is_read_from_its_exit_status() -> None:
    segv = worker_down(FakeNode(FakePopen(-11, reaped=False)), "Not properly terminated")
    assert segv["kind"] == "crashed" and segv["worker_id"] == "gw7"
    assert (segv["signal"], segv["signal_name"], segv["exit_code"]) == (11, "SIGSEGV", None)
    exit1 = worker_down(FakeNode(FakePopen(1)), "Not properly terminated")
    assert (exit1["exit_code"], exit1["signal"]) == (1, None)
    unknown = worker_down(FakeNode(popen=None), "Not properly terminated")  # an ssh gateway: no Popen handle
    assert unknown["kind"] == "crashed" and unknown["returncode"] is None
    stopped = worker_down(FakeNode(FakePopen(0), {"exitstatus": 2}), "keyboard-interrupt")
    assert stopped["kind"] == "interrupted"  # a KeyboardInterrupt in a worker is no crash
    assert describe_returncode(-9)["signal_name"] == "SIGKILL"


def test_the_summary_table_names_the_crashed_worker_and_signal() -> None:
    row = CaseRow("t::x", "m", "r0.50-local", {}, outcome="crashed")
    row.crash = {"worker_id": "gw1", "signal": 11, "signal_name": "SIGSEGV", "exit_code": None}
    lines = summary_table([row, CaseRow("t::y", "m", "r0.50-global", {})])
    assert lines[3].startswith("m ") and lines[3].endswith("  crashed (gw1, signal 11 SIGSEGV)")
    assert lines[-1] == "1 passed, 1 crashed"


# --- incomplete runs ------------------------------------------------------------------------------------------------


def settings(tmp_path: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "models": None,
        "exclude": (),
        "ratios": (0.5,),
        "modes": ("local",),
        "device": "cpu",
        "golden_dir": tmp_path / "golden",
        "update_golden": False,
        "warn_unused": False,
        "max_params": None,
        "input_size": None,
        "report": None,
        "timeout": None,
        "shard": None,
        "seed": 0,
        "checks": ("forward",),
    }
    return Settings(**{**base, **changes})


def test_a_run_is_incomplete_when_tests_never_started_whatever_the_exit_status(tmp_path: Path) -> None:
    state = RunState(settings(tmp_path), collected={"a", "b", "c"}, started={"a", "b"}, finished={"a", "b"})
    # --max-worker-restart exhausted: exit status 1, no interrupt, yet "c" never ran
    assert incomplete_reason(state, RunEnd(exitstatus=1)) == "1 collected test(s) never started"
    # -x without xdist: pytest says why it stopped
    stopped = incomplete_reason(state, RunEnd(exitstatus=1, stopped="stopping after 1 failures"))
    assert stopped == "stopped (stopping after 1 failures); 1 collected test(s) never started"
    state.started.add("c")
    assert incomplete_reason(state, RunEnd(exitstatus=1)) == "1 test(s) cut off while running"
    state.finished.add("c")
    assert incomplete_reason(state, RunEnd(exitstatus=1)) is None
    assert incomplete_reason(state, RunEnd(exitstatus=0, stopped="stopping after 1 failures")) is None
    state.interrupt = "KeyboardInterrupt"
    assert incomplete_reason(state, RunEnd(exitstatus=2)) == "interrupted (KeyboardInterrupt)"


def test_an_incomplete_run_judges_no_golden_unused(tmp_path: Path) -> None:
    """An interrupted xdist run gets no worker's collection: judging against nothing would flag every golden."""
    golden = tmp_path / "golden" / "m" / "r0.50-local.json"
    golden.parent.mkdir(parents=True)
    golden.write_text("{}")
    state = RunState(settings(tmp_path), collected={"t::x", "t::y"}, started={"t::x"}, finished={"t::x"})
    state.rows["t::x"] = CaseRow("t::x", "m", "r0.50-global", {})
    state.collection_known = True
    assert finish_run(state, RunEnd(exitstatus=2)) is False and state.unused == []
    state.collected = {"t::x"}  # the same run, complete: the golden no case uses is reported
    assert finish_run(state, RunEnd(exitstatus=0)) is True and state.unused == [str(golden)]


def run_and_interrupt(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, group: bool
) -> tuple[int, str]:
    """Start pytest on SLEEPING, wait until the global case sleeps, send SIGINT; (exit status, output)."""
    marker = project.path / "sleeping"
    log_path = project.path / "child.log"
    monkeypatch.setenv("TPRUNE_TEST_MARKER", str(marker))  # pytester.popen builds the child's env from os.environ
    with log_path.open("w", encoding="utf-8") as log:  # a file, not a pipe nobody drains
        proc = project.popen(
            [sys.executable, "-m", "pytest", *QUIET, *TWO_CASES, f"--basetemp={project.path / 'basetemp'}", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg cannot reach this run
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # an outer SIG_IGN would be inherited
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the child never reached the sleeping case"
                time.sleep(0.05)
            time.sleep(0.3)
            if group:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            else:
                os.kill(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, log_path.read_text()


def test_sigint_writes_an_incomplete_report_without_the_cut_off_case_as_passed(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_prune=SLEEPING)
    report = project.path / "out" / "report.json"
    code, output = run_and_interrupt(project, monkeypatch, "-p", "no:xdist", f"--tprune-report={report}", group=False)
    assert code == 2, output
    data = json.loads(report.read_text())
    assert data["complete"] is False
    assert "interrupted (KeyboardInterrupt)" in data["incomplete_reason"]
    cases = cases_by_nodeid(data)
    assert cases[LOCAL]["outcome"] == "passed"  # finished before the interrupt: kept
    assert cases[GLOBAL]["outcome"] == "interrupted"  # only its setup had reported: not a pass
    assert "tprune: INCOMPLETE run: interrupted (KeyboardInterrupt)" in output
    assert f'incomplete JSON report ("complete": false) written to {report}' in output


def test_ctrl_c_under_xdist_keeps_a_complete_report_and_flags_no_golden(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_prune=SLEEPING)
    (project.path / "golden" / "test_resnet").mkdir(parents=True)
    (project.path / "golden" / "test_resnet" / "r0.50-local.json").write_text("{}")
    report = project.path / "report.json"
    before = complete_report(report)
    code, output = run_and_interrupt(project, monkeypatch, "-n", "2", f"--tprune-report={report}", group=True)
    assert code == 2, output
    assert report.read_bytes() == before
    data = json.loads((project.path / "report.incomplete.json").read_text())
    assert data["complete"] is False and data["unused_goldens"] == []
    assert cases_by_nodeid(data)[GLOBAL]["outcome"] == "interrupted"
    assert "unused golden file(s)" not in output
    assert f"kept the complete report at {report}" in output


def test_an_interrupt_before_any_case_keeps_the_complete_report_unless_asked(project: pytest.Pytester) -> None:
    project.makepyfile(test_prune=INTERRUPTS_FIRST)
    report = project.path / "report.json"
    before = complete_report(report)
    args = (*QUIET, *TWO_CASES, "-p", "no:xdist", f"--tprune-report={report}")
    result = project.runpytest_inprocess(*args, no_reraise_ctrlc=True)  # the child's Ctrl-C is not ours
    assert result.ret == 2
    assert report.read_bytes() == before
    kept = json.loads((project.path / "report.incomplete.json").read_text())
    assert kept["complete"] is False and kept["cases"] == []
    assert "2 collected test(s) never started" in kept["incomplete_reason"]
    replaced = project.runpytest_inprocess(*args, "--tprune-report-replace-complete", no_reraise_ctrlc=True)
    assert replaced.ret == 2
    assert json.loads(report.read_text())["complete"] is False


def test_a_complete_run_says_so(project: pytest.Pytester) -> None:
    project.makepyfile(test_prune="def test_prune(tprune_case):\n    pass\n")
    report = project.path / "report.json"
    result = project.runpytest(*QUIET, *TWO_CASES, "-p", "no:xdist", f"--tprune-report={report}")
    assert result.ret == 0
    data = json.loads(report.read_text())
    assert data["complete"] is True and data["incomplete_reason"] is None and len(data["cases"]) == 2
    assert "INCOMPLETE" not in result.stdout.str()


# --- the report's path, checked before any test runs ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_a_report_path_that_cannot_be_written_is_a_usage_error_up_front(project: pytest.Pytester, where: str) -> None:
    project.makepyfile(test_prune="def test_prune(tprune_case):\n    raise AssertionError('must not run')\n")
    folder = project.path / "reports"
    folder.mkdir()
    (folder / "keep.json").write_text("{}")
    blocker = project.path / "notes.txt"
    blocker.write_text("notes")
    target = folder if where == "directory" else blocker / "report.json"
    result = project.runpytest(*QUIET, *TWO_CASES, f"--tprune-report={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and f"--tprune-report {target}" in errors[0]
    assert ("is a directory" if where == "directory" else "is not a directory") in errors[0]
    assert "must not run" not in result.stdout.str()
    assert sorted(p.name for p in folder.iterdir()) == ["keep.json"] and blocker.read_text() == "notes"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_report_path_in_a_read_only_folder_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(test_prune="def test_prune(tprune_case):\n    pass\n")
    locked = project.path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = project.runpytest(*QUIET, *TWO_CASES, f"--tprune-report={locked / 'sub' / 'report.json'}")
    finally:
        locked.chmod(0o700)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --tprune-report *: cannot write in {locked} (permission denied)"])
    assert not (locked / "sub").exists()


def test_a_folder_this_process_cannot_write_in_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The permission rule itself, also where the tests run as root (who may write anywhere)."""
    from pytest_tprune.errors import UsageError
    from pytest_tprune.session import settings as settings_module

    monkeypatch.setattr(settings_module.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UsageError, match=r"cannot write in .* \(permission denied\)"):
        settings_module.check_report_path(tmp_path / "new" / "report.json")
    monkeypatch.undo()
    settings_module.check_report_path(tmp_path / "new" / "report.json")  # writable: accepted, nothing created
    assert not (tmp_path / "new").exists()


def test_a_time_limit_that_fires_in_a_gc_callback_still_stops_the_case_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hypothesis keeps a garbage-collector callback installed for the whole run, and the per-case limit's
    signal can land in it: raised there, the timeout was printed as "Exception ignored" (a pytest warning) and
    the case ran on until the signal fired again a second later. Now it fires again at once, in the case.
    The periodic re-fire is widened to 30 s here, so "at once" and "the next periodic fire" are told apart by
    far more than a loaded machine's scheduling delay."""
    import gc

    from pytest_tprune.engine import resources
    from pytest_tprune.engine.resources import time_limit
    from pytest_tprune.errors import CaseTimeout

    ignored: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    monkeypatch.setattr(resources, "REFIRE_S", 30.0)
    slow_once = [True]

    def slow_gc_callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and slow_once[0]:
            slow_once[0] = False
            deadline = time.perf_counter() + 0.3  # the limit (0.1 s) expires in here
            while time.perf_counter() < deadline:
                pass

    gc.callbacks.append(slow_gc_callback)
    start = time.perf_counter()
    try:
        with (
            pytest.raises(CaseTimeout, match=r"pruning a case ran past the per-case time limit of 0\.1 s"),
            time_limit(0.1, "pruning a case"),
        ):
            gc.collect()  # the slow callback runs: the limit expires in it
            while True:
                pass
    finally:
        gc.callbacks.remove(slow_gc_callback)
    assert not slow_once[0], "the callback ran"
    assert ignored == [], [str(u.exc_value) for u in ignored]
    assert time.perf_counter() - start < 10, "stopped right after the callback, not at the periodic re-fire (30 s)"


LINELESS = """
import types

import pytest

from pytest_tprune.errors import CaseTimeout


def lineless(exc):
    '''``exc`` raised, its traceback replaced by one entry without a line number: what a time limit's signal
    can leave on Python 3.11 when it lands on an instruction that has none.'''
    try:
        raise exc
    except BaseException as caught:
        return caught.with_traceback(types.TracebackType(None, caught.__traceback__.tb_frame, 1 << 20, -1))


def test_prune(tprune_case):
    timeout = lineless(CaseTimeout("pruning ran past the per-case time limit of 10 s (--tprune-timeout)"))
    if tprune_case.config.global_pruning:
        raise timeout  # the entry without a line is in the failing exception's own traceback
    raise pytest.xfail.Exception("known slow: takes minutes") from timeout  # in the one it is chained to


def test_z_after():
    pass
"""


def test_a_traceback_entry_without_a_line_number_fails_the_case_not_the_session(project: pytest.Pytester) -> None:
    """A timeout that landed on an instruction without a line number once took a whole README run down
    (``INTERNALERROR``, exit 3, the rest of the suite never run): pytest cannot render such an entry, and a
    known-slow case's expected failure is chained to the timeout. Both cases now get their verdicts (the
    timeout fails, the known-slow one is an expected failure), and the test after them runs."""
    project.makepyfile(test_prune=LINELESS)
    report = project.path / "report.json"
    result = project.runpytest(*QUIET, *TWO_CASES, "-p", "no:xdist", "-rxf", f"--tprune-report={report}")
    output = result.stdout.str()
    assert "INTERNALERROR" not in output, output[-3000:]
    result.assert_outcomes(passed=1, failed=1, xfailed=1)
    assert "CaseTimeout: pruning ran past the per-case time limit of 10 s" in output
    assert "XFAIL test_prune.py::test_prune[test_resnet-r0.50-local] - known slow: takes minutes" in output
    rows = {row["config_id"]: row for row in json.loads(report.read_text())["cases"]}
    assert rows["r0.50-global"]["failed_check"] == "timeout"
    assert rows["r0.50-local"]["outcome"] == "xfailed"

"""Bad model selections and models too big for memory fail early, in one clear line.

An unknown name or pattern in ``--tprune-models`` is found while collecting (the
selection is resolved lazily, so a session without a pruning test never imports
timm); it must still end the run like any other usage error: one ``ERROR:``
line with the closest names, exit status 4, no traceback, with and without
xdist. The memory guard's arithmetic is tested on fake ``/proc/meminfo`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_tprune.engine import resources
from pytest_tprune.engine.models import closest_names_hint, match_patterns
from pytest_tprune.engine.resources import MemoryBudget, memory_budget, over_budget_reason, read_meminfo_available
from pytest_tprune.errors import UsageError
from pytest_tprune.reports.table import skip_cause

POOL = ("resnet18", "resnet50", "resnet50d", "vit_base_patch16_224", "test_vit")


def test_an_unknown_name_suggests_the_closest_names() -> None:
    with pytest.raises(UsageError) as info:
        match_patterns(POOL, ["test_vit", "resnet5o"])
    assert str(info.value) == "unknown model 'resnet5o': did you mean: resnet50, resnet50d, resnet18?"


def test_a_pattern_matching_nothing_says_so_and_suggests_names() -> None:
    with pytest.raises(UsageError) as info:
        match_patterns(POOL, ["resnt50*"])
    assert str(info.value) == "model pattern 'resnt50*' matches no model: did you mean: resnet50, resnet50d, resnet18?"


def test_without_close_names_the_hint_says_how_to_search() -> None:
    assert closest_names_hint("qqqq", POOL) == "run 'tprune --list_models PATTERN' to search"
    assert match_patterns(POOL, ["resnet5*", "test_vit"]) == ["resnet50", "resnet50d", "test_vit"]


# --- end to end -----------------------------------------------------------------------------------

PRUNING_TEST = "def test_prune(tprune_case):\n    tprune_case.check_all()\n"


@pytest.fixture(scope="module")
def torch_loaded() -> None:
    """Import torch and timm before pytester snapshots ``sys.modules`` (module scope: set up first).

    In-process runs forget the modules imported during them, and torch cannot
    be imported twice in one process; importing here keeps the unit tests of
    this module torch-free.
    """
    import timm  # noqa: F401
    import torch  # noqa: F401


@pytest.fixture
def project(torch_loaded: None, pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_a=PRUNING_TEST, test_b=PRUNING_TEST)  # two modules: still one line
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    base = ("-p", "no:cacheprovider", *args)
    return pytester.runpytest_subprocess(*base, timeout=300) if "-n" in args else pytester.runpytest(*base)


def assert_one_usage_line(result: pytest.RunResult, start: str, suggested: str) -> None:
    """Exit 4, and stderr is one line: ``start``, then timm's closest names (``suggested`` among them)."""
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    (line,) = [text for text in result.stderr.lines if text.strip()]
    assert line.startswith(start) and line.endswith("?"), line
    assert suggested in line[len(start) :].rstrip("?").split(", "), line
    for noise in ("Traceback", "INTERNALERROR", "site-packages/pluggy", "ERROR collecting", "during collection"):
        assert noise not in output


@pytest.mark.parametrize("mode", [("-n", "0"), ("-n", "2"), ("-p", "no:xdist")], ids=" ".join)
def test_an_unknown_model_is_one_usage_line_with_exit_4(project: pytest.Pytester, mode: tuple[str, str]) -> None:
    kept = project.path / "report.json"
    kept.write_text('{"complete": true, "cases": ["the last real run"]}')
    result = run(project, "--tprune-models=test_vit,resnet5o", f"--tprune-report={kept}", *mode)
    assert_one_usage_line(result, "ERROR: --tprune-models: unknown model 'resnet5o': did you mean: ", "resnet50")
    assert "tprune summary" not in result.stdout.str()
    assert kept.read_text() == '{"complete": true, "cases": ["the last real run"]}'  # no run: no report
    assert sorted(p.name for p in project.path.glob("report*")) == ["report.json"]


def test_an_unknown_pattern_or_exclusion_names_its_option(project: pytest.Pytester) -> None:
    result = run(project, "--tprune-models=resnt50*", "--collect-only")
    start = "ERROR: --tprune-models: model pattern 'resnt50*' matches no model: did you mean: "
    assert_one_usage_line(result, start, "resnet50")
    result = run(project, "--tprune-models=test_vit", "--tprune-exclude=test_vitt")
    assert_one_usage_line(result, "ERROR: --tprune-exclude: unknown model 'test_vitt': did you mean: ", "test_vit")


def test_other_collection_errors_stay_collection_errors(pytester: pytest.Pytester) -> None:
    """Only the selection's error becomes a usage error: a broken test module is reported as pytest does."""
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_broken="import no_such_module_here\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_broken.py*", "*No module named 'no_such_module_here'*"])


def test_a_session_without_pruning_tests_imports_no_torch(pytester: pytest.Pytester) -> None:
    """The lazy selection, the selection-error hook and the memory reading at start import nothing heavy."""
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(
        test_plain="import sys\n\ndef test_nothing_imported():\n"
        "    assert not {'torch', 'timm', 'torch_pruning'} & set(sys.modules)\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--tprune-models=nope", timeout=300)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()  # no test asks for cases: the bad name is unused


def test_the_memory_budget_is_read_when_the_run_is_configured(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    resources.memory_at_start.cache_clear()
    assert pytester.runpytest("-p", "no:cacheprovider", "--collect-only").ret == pytest.ExitCode.OK
    assert resources.memory_at_start.cache_info().currsize == 1  # read before any case could run


# --- the memory guard -----------------------------------------------------------------------------

MEMINFO = "MemTotal:       24684092 kB\nMemFree:        20227184 kB\nMemAvailable:   10485760 kB\nBuffers: 1 kB\n"


def meminfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(text)
    return path


def test_the_budget_is_available_memory_shared_by_the_workers(tmp_path: Path) -> None:
    budget = memory_budget(meminfo(tmp_path, MEMINFO), {"PYTEST_XDIST_WORKER_COUNT": "2"})
    assert budget == MemoryBudget(available=10 * 2**30, source="available", workers=2)
    assert budget.per_worker == 5 * 2**30
    assert memory_budget(meminfo(tmp_path, MEMINFO), {}) == MemoryBudget(10 * 2**30, "available", 1)
    assert memory_budget(meminfo(tmp_path, MEMINFO), {"PYTEST_XDIST_WORKER_COUNT": "x"}).workers == 1  # type: ignore[union-attr]


def test_without_memavailable_the_budget_falls_back_to_total_ram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "total_memory", lambda: 8 * 2**30)
    old_kernel = meminfo(tmp_path, "MemTotal: 8388608 kB\nMemFree: 100 kB\n")
    assert read_meminfo_available(old_kernel) is None
    assert memory_budget(old_kernel, {"PYTEST_XDIST_WORKER_COUNT": "4"}) == MemoryBudget(8 * 2**30, "total", 4)
    assert memory_budget(tmp_path / "absent", {}) == MemoryBudget(8 * 2**30, "total", 1)
    monkeypatch.setattr(resources, "total_memory", lambda: None)
    assert memory_budget(tmp_path / "absent", {}) is None


def test_a_model_over_the_share_is_skipped_with_a_reason_naming_available_memory() -> None:
    two_workers = MemoryBudget(20 * 2**30, "available", 2)
    assert over_budget_reason("small", 400_000_000, two_workers) is None  # 8.9 GiB <= 10 GiB
    reason = over_budget_reason("vit_giant_patch14_224", 1_012_000_000, two_workers)
    assert reason == (
        "vit_giant_patch14_224: 1012 M parameters need about 22.6 GiB, over this worker's share of memory "
        "(10.0 GiB): 20.0 GiB available at start / 2 worker(s); run it with fewer workers (-n)"
    )
    # the zoo table groups these skips by reading the reason
    cause = skip_cause({"model": "vit_giant_patch14_224", "config_id": "r0.50-local", "reason": reason})
    assert (cause.label, cause.detail) == ("memory guard (over a worker's 10.0 GiB)", "22.6 GiB")
    alone = over_budget_reason("vit_giant_patch14_224", 1_012_000_000, MemoryBudget(20 * 2**30, "available", 1))
    assert alone is not None and alone.endswith(
        "(20.0 GiB): 20.0 GiB available at start / 1 worker(s); free memory or run it on a larger machine"
    )
    total = over_budget_reason("big", 1_012_000_000, MemoryBudget(16 * 2**30, "total", 1))
    assert total is not None and "16.0 GiB of RAM in total (MemAvailable unreadable)" in total
    assert over_budget_reason("big", 10**12, None) is None  # nothing known: no guess


def test_the_budget_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = iter([MemoryBudget(2**30, "available", 1), MemoryBudget(2**40, "available", 1)])
    monkeypatch.setattr(resources, "memory_budget", lambda: next(reads))
    resources.memory_at_start.cache_clear()
    try:
        assert resources.memory_budget_bytes() == 2**30
        assert resources.memory_budget_bytes() == 2**30  # later free memory does not change the decision
    finally:
        resources.memory_at_start.cache_clear()


def test_the_real_meminfo_is_readable_here() -> None:
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo on this platform")
    available = read_meminfo_available()
    assert available is not None and 0 < available <= (resources.total_memory() or available)

"""``benchmarks/zoo_run.py``: which shards count as done, and the figures the docs quote.

The full-zoo run spans sessions by trusting committed shard reports; a report
from another engine or library version counted as done would silently mix two
engines in one map, so that decision is tested here (no model is pruned).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_run.py"
ENV = {
    "python": "3.11.7",
    "device": "cpu",
    "torch": "2.15.0",
    "timm": "1.0.31",
    "torch-pruning": "1.6.1",
    "pytest-tprune": "0.1.0+0123456789ab",
}


@pytest.fixture
def zoo_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module, its reports folder moved to a temporary one."""
    spec = importlib.util.spec_from_file_location("zoo_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REPORTS", tmp_path / "zoo-run")
    return module


def write_report(
    module: ModuleType, shard: int, cases: list[dict[str, Any]], document: dict[str, Any] | None = None, /, **env: Any
) -> Path:
    path: Path = module.report_path(shard, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": {**ENV, "platform": "Linux", **env}, "cases": cases, **(document or {})}
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def case(model: str, outcome: str = "passed", failed_check: str | None = None) -> dict[str, Any]:
    return {"model": model, "outcome": outcome, "failed_check": failed_check}


def test_a_report_from_this_engine_and_libraries_counts_as_done(zoo_run: ModuleType) -> None:
    path = write_report(zoo_run, 1, [case("resnet18")], platform="another kernel")
    assert zoo_run.stale_because(path, ENV) is None


def test_a_report_from_another_engine_or_library_is_run_again(zoo_run: ModuleType) -> None:
    engine = write_report(zoo_run, 1, [], **{"pytest-tprune": "0.1.0+ffffffffffff"})
    upgraded = write_report(zoo_run, 2, [], timm="1.0.32")
    assert "pytest-tprune 0.1.0+ffffffffffff != 0.1.0+0123456789ab" in zoo_run.stale_because(engine, ENV)
    assert zoo_run.stale_because(upgraded, ENV) == "timm 1.0.32 != 1.0.31"


def test_an_incomplete_report_is_run_again(zoo_run: ModuleType) -> None:
    """An interrupted shard lists only the cases that finished: counting it as done would drop the rest."""
    reason = "interrupted (KeyboardInterrupt); 1 test(s) cut off while running"
    cut = write_report(zoo_run, 1, [case("resnet18")], {"complete": False, "incomplete_reason": reason})
    whole = write_report(zoo_run, 2, [case("resnet18")], {"complete": True})
    assert zoo_run.stale_because(cut, ENV) == f"incomplete report ({reason})"
    assert zoo_run.stale_because(whole, ENV) is None


def test_a_missing_or_unreadable_report_is_run_again(zoo_run: ModuleType) -> None:
    assert zoo_run.stale_because(zoo_run.report_path(3, 4), ENV) == "no report"
    broken = zoo_run.report_path(4, 4)
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text('{"environment": ', encoding="utf-8")
    assert zoo_run.stale_because(broken, ENV).startswith("unreadable report")


def test_status_lists_done_and_missing_shards(zoo_run: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(zoo_run, 1, [case("resnet18")], **ENV)
    zoo_run.current_environment = lambda: dict(ENV)
    assert zoo_run.main(["--shards", "4", "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["shard 1/4: done", "shard 2/4: no report", "shard 3/4: no report", "shard 4/4: no report"]


def test_summary_counts_outcomes_and_pass_rates_over_the_reports_present(
    zoo_run: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    first = [case("resnet18"), case("vit_giant", "skipped"), case("cspresnet50", "failed", "reduction")]
    write_report(zoo_run, 1, first)
    write_report(zoo_run, 3, [case("deit_tiny"), case("maxvit_large", "failed", "timeout")])
    assert zoo_run.main(["--shards", "4", "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "2 of 4 shards, engine 0.1.0+0123456789ab: 5 models"
    assert "   2 pass every check: deit_tiny, resnet18" in out
    assert "   1 timeouts: maxvit_large" in out
    assert "   1 prune nothing (reduction check): cspresnet50" in out
    assert "pass rate of all: 2/5 = 40%" in out
    assert "pass rate of those run: 2/4 = 50%" in out
    assert "pass rate of those finished: 2/3 = 67%" in out


def test_only_rejects_shards_outside_the_split(zoo_run: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        zoo_run.main(["--shards", "4", "--only", "5"])
    assert exit_info.value.code == 2
    assert "--only: shard numbers run from 1 to 4" in capsys.readouterr().err

"""``tprune table`` on hand-made run reports: the zoo map users read (no model is pruned here)."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_tprune.cli.commands import table_main
from pytest_tprune.reports.schema import REPORT_SCHEMA

ENV = {
    "python": "3.11.7",
    "platform": "Linux-6.8.0",
    "device": "cpu",
    "torch": "2.15.0",
    "timm": "1.0.31",
    "torch-pruning": "1.6.1",
    "cuda": None,
    "cudnn": None,
}
FAMILIES = {
    "vit_small": "vision_transformer",
    "vit_huge": "vision_transformer",
    "vit_giant": "vision_transformer",
    "vit_xp": "vision_transformer",
    "vit_xp_large": "vision_transformer",
    "cspdarknet53": "cspnet",
    "cspresnet50": "cspnet",
    "halonet_h1": "byoanet",
}
RUN_DAY = "2026-03-14"
MEMORY_SKIP = (
    "vit_giant: 1011 M parameters need about 22.6 GiB, over this worker's share of memory (11.8 GiB); "
    "run it with fewer workers"
)


def case(model: str, outcome: str = "passed", config_id: str = "r0.50-local", **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "nodeid": f"tests/test_zoo.py::test_model[{model}-{config_id}]",
        "model": model,
        "config_id": config_id,
        "config": {"ratio": 0.5, "global_pruning": False},
        "outcome": outcome,
        "failed_check": None,
        "reason": None,
        "duration": 1.0,
        "groups_pruned": 10,
        "groups_left_whole": 0,
    }
    row.update(extra)
    return row


def timeout(model: str) -> dict[str, Any]:
    reason = (
        f"pytest_tprune.errors.CaseTimeout: pruning {model}-r0.50-local ran past the per-case time limit of 60 s "
        "(--tprune-timeout)"
    )
    return case(model, "failed", failed_check="prune", reason=reason)


def fused_qkv_failure(model: str) -> dict[str, Any]:
    reason = (
        f"pytest_tprune.errors.PruneStepError: forward failed for {model} in module 'blocks.0': "
        "RuntimeError: shape '[1, 197, 384]' is invalid | for input of size 151296\nTraceback line"
    )
    return case(model, "failed", failed_check="forward", reason=reason)


def stock(verdict: str) -> dict[str, Any]:
    """A case's stock torch-pruning verdict, as the report has it."""
    return {"stock": {"verdict": verdict, "detail": f"{verdict} (detail)"}}


SHARD_1 = [
    case("vit_small", groups_pruned=10, groups_left_whole=2, **stock("ok")),
    timeout("vit_huge"),
    case("vit_giant", "skipped", reason=MEMORY_SKIP),
    case("cspresnet50", **stock("ok")),
]
SHARD_2 = [
    case(
        "cspdarknet53",
        "failed",
        failed_check="reduction",
        reason="pytest_tprune.case.CheckFailed: [reduction] params did not decrease: 27642184 => 27642184",
        groups_pruned=0,
        groups_left_whole=44,
        **stock("crashes"),
    ),
    case("halonet_h1", "xfailed", reason="known failure: hang: prune() does not finish within 60 s on CPU"),
    {**fused_qkv_failure("vit_xp"), **stock("breaks the forward")},
    {**fused_qkv_failure("vit_xp_large"), **stock("breaks the forward")},
]


def write_report(path: Path, cases: list[dict[str, Any]], shard: tuple[int, int] | None) -> str:
    document = {
        "schema": REPORT_SCHEMA,
        "tool": "pytest-tprune",
        "environment": ENV,
        "settings": {"ratios": [0.5], "modes": ["local"], "shard": list(shard) if shard else None},
        "unused_goldens": [],
        "golden_written": [],
        "cases": cases,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    stamp = calendar.timegm((2026, 3, 14, 12, 0, 0))
    os.utime(path, (stamp, stamp))
    return str(path)


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    return [
        write_report(tmp_path / "zoo-1.json", SHARD_1, (1, 2)),
        write_report(tmp_path / "zoo-2.json", SHARD_2, (2, 2)),
    ]


def render(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert table_main(list(argv), families=FAMILIES) == 0
    return capsys.readouterr().out


def row_of(page: str, family: str) -> str:
    (line,) = [line for line in page.splitlines() if line.startswith(f"| {family} |")]
    return line


def test_the_page_says_when_and_with_what_the_run_was_made(
    shards: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    page = render(capsys, *shards, "--title", "Zoo")
    assert page.startswith(
        "# Zoo\n\n"
        f"Run on {RUN_DAY} with python 3.11.7, torch 2.15.0, timm 1.0.31, torch-pruning 1.6.1; device cpu; "
        "2 shards merged. Rendered by `tprune table`.\n\n"
        "**2 of 8 cases pass every check (25%)**, in 3 families; in 0 of them every case passes. "
        "2 passed, 1 xfailed, 4 failed, 1 skipped.\n"
    )


def test_causes_are_grouped_by_kind_across_models(shards: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    page = render(capsys, *shards)
    assert (
        "- **Failed: 4.** 2 forward failed in module 'blocks.0': RuntimeError: shape '[1, 197, 384]' is invalid | "
        "for input of size 151296; 1 nothing pruned: every group left whole; 1 timeout at 60 s\n"
    ) in page
    assert "- **Skipped: 1.** 1 memory guard (over a worker's 11.8 GiB)\n" in page
    assert "- **Known failures and slow models (xfail): 1.** 1 hang (time limit)\n" in page


def test_each_family_row_names_the_models_behind_each_cause(
    shards: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    page = render(capsys, *shards)
    assert row_of(page, "vision_transformer") == (
        "| vision_transformer | 5 | 1 | 2 / 12 | 2x breaks the forward, 1x ok |  | "
        "2x forward failed in module 'blocks.0': RuntimeError: shape '[1, 197, 384]' is invalid \\| "
        "for input of size 151296: `vit_xp`, `vit_xp_large`; 1x timeout at 60 s: `vit_huge` | "
        "1x memory guard (over a worker's 11.8 GiB): `vit_giant` (22.6 GiB) |"
    )
    assert row_of(page, "cspnet") == (
        "| cspnet | 2 | 1 |  | 1x crashes, 1x ok |  | "
        "1x nothing pruned: every group left whole: `cspdarknet53` (44 groups) |  |"
    )
    assert row_of(page, "byoanet") == "| byoanet | 1 | 0 |  |  | 1x hang (time limit): `halonet_h1` |  |  |"


def test_the_stock_column_is_one_verdict_when_the_cases_agree_else_counts_worst_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        case("vit_small", **stock("crashes")),
        case("vit_small", config_id="r0.30-local", **stock("crashes")),
        case("cspresnet50", **stock("ok")),
        case("cspresnet50", config_id="r0.30-local", **stock("hangs")),
        case("cspresnet50", config_id="r0.70-local", **stock("crashes")),
        case("cspdarknet53", **stock("skips groups")),
        case("cspdarknet53", config_id="r0.30-local", **stock("crashes")),
        case("halonet_h1", "xfailed", reason="known failure: hang: prune() does not finish within 60 s on CPU"),
    ]
    page = render(capsys, write_report(tmp_path / "r.json", cases, None))
    assert row_of(page, "vision_transformer").startswith("| vision_transformer | 2 | 2 |  | crashes |")
    # tprune compare's order, best to worst: ok, skips groups, breaks the forward, crashes, hangs
    assert row_of(page, "cspnet").startswith("| cspnet | 5 | 5 |  | 1x hangs, 2x crashes, 1x skips groups, 1x ok |")
    assert row_of(page, "byoanet").startswith("| byoanet | 1 | 0 |  |  |")
    assert "| family | cases | passed | left whole | stock | known failures (cause) |" in page
    assert "*stock* is what plain torch-pruning, without the engine's fallbacks, does" in page


def test_a_model_with_several_cases_is_named_with_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [timeout("vit_huge"), case("vit_huge", config_id="r0.30-local"), case("mystery_net", "failed")]
    page = render(capsys, write_report(tmp_path / "grid.json", cases, None))
    assert "1x timeout at 60 s: `vit_huge r0.50-local`" in row_of(page, "vision_transformer")
    assert (
        row_of(page, "(not a timm model)")
        == "| (not a timm model) | 1 | 0 |  |  |  | 1x no reason recorded: `mystery_net` |  |"
    )
    assert "Partial run" not in page


def test_shape_rule_failures_are_one_cause_whatever_their_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        case(model, "failed", failed_check="shapes", reason=f"CheckFailed: [shapes] {n} group(s) break the shape rule:")
        for model, n in (("vit_xp", 1), ("vit_huge", 3))
    ]
    page = render(capsys, write_report(tmp_path / "r.json", cases, None))
    assert "2x CheckFailed: [shapes] groups break the shape rule: `vit_huge`, `vit_xp`" in row_of(
        page, "vision_transformer"
    )


def test_a_cause_shared_by_many_models_names_a_dozen_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [f"vit_{n:02d}" for n in range(15)]
    page = render(capsys, write_report(tmp_path / "r.json", [timeout(m) for m in models], None))
    named = ", ".join(f"`{m}`" for m in models[:12])
    assert f"| 15x timeout at 60 s: {named} and 3 more |" in page


@pytest.mark.parametrize(
    "reason",
    [
        "known slow: the whole case takes about 107 s on CPU [here: pruning ran past ...]",
        "known failure: hang: slow, not broken: the whole case takes about 107 s on CPU",  # reports before 2026-12-03
    ],
    ids=["known-slow", "older-report"],
)
def test_a_slow_pass_under_the_hang_limit_is_not_called_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reason: str
) -> None:
    page = render(capsys, write_report(tmp_path / "r.json", [case("vit_huge", "xfailed", reason=reason)], None))
    assert "1x slow pass, over the hang time limit: `vit_huge`" in row_of(page, "vision_transformer")


def test_a_slow_model_known_to_fail_a_check_when_let_finish_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "known slow: [shapes] the gated MLP loses 5630 of 5632 channels [here: pruning ran past ...]"
    page = render(capsys, write_report(tmp_path / "r.json", [case("vit_huge", "xfailed", reason=reason)], None))
    cell = "1x slow, over the hang time limit; fails shapes when let finish: `vit_huge`"
    assert cell in row_of(page, "vision_transformer")


def test_a_missing_shard_is_said_on_the_page(shards: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main([shards[1]], families=FAMILIES) == 0
    out, err = capsys.readouterr()
    assert "**Partial run:** shard(s) 1/2 missing: the merged report covers part of the run.\n" in out
    assert err == "tprune table: warning: shard(s) 1/2 missing: the merged report covers part of the run\n"


def test_rendering_again_gives_the_same_page(
    shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "docs" / "zoo.md"
    assert render(capsys, *shards, "--out", str(page)) == f"tprune table: 8 case(s) -> {page}\n"
    first = page.read_bytes()
    render(capsys, *shards, "--out", str(page))
    assert page.read_bytes() == first
    assert sorted(p.name for p in page.parent.iterdir()) == ["zoo.md"]


def test_a_committed_report_is_dated_by_its_run_not_its_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clone gives every file today's mtime; the report's own ``finished`` keeps the page's date."""
    path = tmp_path / "zoo-1.json"
    write_report(path, SHARD_1, None)
    path.write_text(json.dumps({**json.loads(path.read_text()), "finished": "2026-02-01T08:00:00Z"}))
    assert "Run on 2026-02-01 with" in render(capsys, str(path))


def test_the_page_names_the_engine_revision_when_the_report_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "zoo-1.json"
    write_report(path, SHARD_1, None)
    data = json.loads(path.read_text())
    data["environment"]["pytest-tprune"] = "0.1.0+0123456789ab"
    path.write_text(json.dumps(data))
    assert "torch-pruning 1.6.1, pytest-tprune 0.1.0+0123456789ab; device cpu" in render(capsys, str(path))


def bad_input(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert table_main(list(argv), families=FAMILIES) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_leaves_an_existing_page_alone(
    shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "zoo.md"
    page.write_text("the committed table\n")
    junk = tmp_path / "junk.json"
    junk.write_text("<html>502</html>")
    err = bad_input(capsys, str(junk), "--out", str(page))
    assert err == f"tprune table: error: {junk} is not JSON (Expecting value at line 1, column 1)\n"
    other_split = write_report(tmp_path / "zoo-1-of-3.json", [case("vit_small", config_id="r0.30-local")], (1, 3))
    assert "shards of different splits" in bad_input(capsys, shards[0], other_split, "--out", str(page))
    assert page.read_text() == "the committed table\n"
    assert "the following arguments are required: REPORT.json" in bad_input(capsys)


def test_an_unwritable_page_is_one_line(shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    err = bad_input(capsys, *shards, "--out", str(tmp_path / "taken"))
    assert err.startswith(f"tprune table: error: cannot write {tmp_path / 'taken'}: ")


def test_the_command_line_dispatches_to_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tprune", "table", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: tprune table" in done.stdout


def test_a_crashed_case_and_an_incomplete_run_are_marked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crash = {"worker_id": "gw1", "returncode": -11, "exit_code": None, "signal": 11, "signal_name": "SIGSEGV"}
    cases = [
        case("vit_small"),
        case("vit_huge", "crashed", crash=crash, reason="its xdist worker crashed while running it"),
        case("cspresnet50", "interrupted", reason="the run was interrupted while this case ran"),
    ]
    path = Path(write_report(tmp_path / "cut.json", cases, None))
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "complete": False, "incomplete_reason": "interrupted (KeyboardInterrupt)"}))
    assert table_main([str(path)], families=FAMILIES) == 0
    page, err = capsys.readouterr()
    assert "**Incomplete run:** interrupted (KeyboardInterrupt); only the cases that finished are counted." in page
    assert "1 passed, 1 crashed, 1 interrupted." in page
    assert (
        "| vision_transformer | 2 | 1 |  |  |  | 1x crashed its worker (signal 11 SIGSEGV): `vit_huge` (gw1) |  |"
        in page
    )
    assert "1x interrupted: the run stopped before the case finished: `cspresnet50`" in page
    assert err == (
        "tprune table: warning: incomplete run (interrupted (KeyboardInterrupt)): "
        "only the cases that finished are in it\n"
    )


def test_a_complete_report_has_no_incomplete_line(shards: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "Incomplete run" not in render(capsys, *shards)

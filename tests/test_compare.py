"""``tprune compare`` and ``tprune merge`` on hand-made run reports (no model is pruned here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_tprune.cli.commands import compare_main, merge_main
from pytest_tprune.engine.identity import engine_fingerprint
from pytest_tprune.reports.compare import compare_reports
from pytest_tprune.reports.schema import REPORT_SCHEMA, load_report

OLD_ENV = {
    "python": "3.11.9",
    "platform": "Linux-6.5.0-x86_64-with-glibc2.35",
    "device": "cpu",
    "torch": "2.15.0",
    "timm": "1.0.29",
    "torch-pruning": "1.6.0",
    "cuda": None,
    "cudnn": None,
}
NEW_ENV = {**OLD_ENV, "timm": "1.0.31", "torch-pruning": "1.6.1"}
SETTINGS = {"ratios": [0.5], "modes": ["local", "global"], "shard": None}


def case(model: str, config_id: str = "r0.5-local", outcome: str = "passed", **extra: Any) -> dict[str, Any]:
    """One report row; a passed or failed-at-a-check case has figures, as a pruned case does."""
    row: dict[str, Any] = {
        "nodeid": f"tests/test_prune.py::test_prune[{model}-{config_id}]",
        "model": model,
        "config_id": config_id,
        "config": {
            "ratio": 0.5,
            "global_pruning": "global" in config_id,
            "importance": "l2",
            "round_to": None,
            "iterative_steps": 1,
            "isomorphic": False,
        },
        "outcome": outcome,
        "failed_check": None,
        "reason": None,
        "duration": 0.5,
    }
    row.update(extra)
    return row


def kept(before: float, after: float) -> float:
    return round(after / before, 6) if before else 1.0


def figures(params: tuple[int, int], macs: tuple[int, int], flops: tuple[int, int] | None = None) -> dict[str, Any]:
    flops = flops or macs
    return {
        "params_before": params[0],
        "params_after": params[1],
        "macs_before": macs[0],
        "macs_after": macs[1],
        "flop_macs_before": flops[0],
        "flop_macs_after": flops[1],
        "kept_params": kept(*params),
        "kept_macs": kept(*macs),
        "kept_flop_macs": kept(*flops),
        "counter_disagreement": round(kept(*macs) - kept(*flops), 6),
        "device": "cpu",
    }


def document(env: dict[str, Any], cases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "tool": "pytest-tprune",
        "environment": env,
        "settings": SETTINGS,
        "unused_goldens": [],
        "golden_written": [],
        "cases": cases,
        **extra,
    }


def write(path: Path, data: Any) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


RESNET50 = figures((25_557_032, 6_400_000), (4_130_000_000, 1_050_000_000))
RESNET50_NEW = figures((25_557_032, 6_100_000), (4_130_000_000, 990_000_000), (4_130_000_000, 1_010_000_000))
VIT_MACS = (4_250_000_000, 1_000_000_000)
DEIT = figures((5_717_416, 1_500_000), (1_260_000_000, 330_000_000))
DEIT_NEW = figures((5_717_800, 1_500_100), (1_260_000_000, 330_000_000))
# vit_tiny still passes in NEW, but the engine leaves 6 of its 13 groups whole: it keeps twice the parameters.
VIT_TINY = figures((5_717_416, 1_720_000), (1_260_000_000, 380_000_000))
VIT_TINY_NEW = figures((5_717_416, 3_550_000), (1_260_000_000, 760_000_000))


def accounting(pruned: int, left_whole: int, skipped: int = 0) -> dict[str, Any]:
    """A case's ``group_accounting``, as the report has it."""
    offered = pruned + left_whole + skipped
    counts = {"pruned": pruned, "left_whole": left_whole, "refused": 0, "minimum_width": 0, "skipped": skipped}
    return {"group_accounting": {"offered": offered, **counts, "ignored": 1}}


def upgrade_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """A timm + torch-pruning bump with one case in every group (the sample in docs/upgrades.md)."""
    old = [
        case("convnext_tiny", outcome="failed", failed_check="forward", duration=3.1),
        case("deit_tiny_patch16_224", **DEIT),
        case("efficientnet_b0", **figures((5_288_548, 1_400_000), (400_000_000, 110_000_000))),
        case(
            "mobilenetv3_small_100",
            "r0.5-global",
            outcome="xfailed",
            failed_check="prune:trace",
            reason="known failure: hard-swish gate is not traced",
        ),
        case("regnetx_002"),
        case("resnet18", duration=0.2),
        case(
            "resnet50",
            duration=2.0,
            cpu_time=1.9,
            durations={"build": 0.3, "prune": 1.2, "forward": 0.4},
            **RESNET50,
        ),
        case("vit_small_patch16_224", "r0.5-global", **figures((22_050_664, 5_600_000), VIT_MACS)),
        case("vit_tiny_patch16_224", **VIT_TINY, **accounting(13, 0)),
    ]
    new = [
        case("convnext_tiny", duration=3.3),
        case("deit_tiny_patch16_224", **DEIT_NEW),
        case(
            "efficientnet_b0",
            outcome="error",
            failed_check="prune:trace",
            reason="torch-pruning could not trace SqueezeExcite: KeyError 'conv_reduce'",
        ),
        case("fastvit_t8"),
        case("levit_128", outcome="failed", failed_check="shapes"),
        case("mobilenetv3_small_100", "r0.5-global", outcome="xpassed"),
        case("resnet18", duration=0.9),
        case(
            "resnet50",
            duration=9.5,
            cpu_time=9.1,
            durations={"build": 0.3, "prune": 8.4, "forward": 0.5},
            **RESNET50_NEW,
        ),
        case(
            "vit_small_patch16_224",
            "r0.5-global",
            outcome="failed",
            failed_check="golden",
            **figures((22_050_664, 5_590_000), VIT_MACS),
        ),
        case("vit_tiny_patch16_224", **VIT_TINY_NEW, **accounting(7, 6)),
    ]
    old_env = {**OLD_ENV, "load_1min": {"start": 0.41, "end": 0.63}}
    return document(old_env, old), document({**NEW_ENV, "load_1min": {"start": 0.52, "end": 0.7}}, new)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    old, new = upgrade_pair()
    return write(tmp_path / "pinned.json", old), write(tmp_path / "latest.json", new)


def labels(items: list[Any]) -> list[str]:
    return [getattr(item, "case", item).label for item in items]


# --- the groups ---------------------------------------------------------------------------------------------------


def test_every_difference_lands_in_its_group(pair: tuple[str, str]) -> None:
    result = compare_reports(load_report(pair[0]), load_report(pair[1]))
    assert labels(result.regressions) == ["efficientnet_b0 [r0.5-local]", "vit_small_patch16_224 [r0.5-global]"]
    assert labels(result.absorbed) == ["vit_tiny_patch16_224 [r0.5-local]"]  # still passes, prunes half as much
    assert labels(result.disappeared) == ["regnetx_002 [r0.5-local]"]
    assert labels(result.fixed) == ["convnext_tiny [r0.5-local]"]
    assert labels(result.changed) == ["mobilenetv3_small_100 [r0.5-global]"]
    assert labels(result.appeared) == ["levit_128 [r0.5-local]", "fastvit_t8 [r0.5-local]"]  # failing first
    # resnet50 lost 4.7% of its kept params, deit gained a few: largest relative change first
    assert labels(result.figures) == [
        "vit_tiny_patch16_224 [r0.5-local]",
        "resnet50 [r0.5-local]",
        "vit_small_patch16_224 [r0.5-global]",
        "deit_tiny_patch16_224 [r0.5-local]",
    ]
    # resnet18 went 0.2 s -> 0.9 s: 4.5x, but under a second, so it is noise
    assert labels(result.durations) == ["resnet50 [r0.5-local]"]
    # the machine's load differs between any two runs: shown with the durations, never an environment change
    assert result.environment == [("timm", "1.0.29", "1.0.31"), ("torch-pruning", "1.6.0", "1.6.1")]
    assert result.compared == 8  # regnetx_002 is in OLD only
    assert result.regressed and result.exit_status == 1


def test_text_output_reads_as_a_review(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main(list(pair)) == 1
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[1] == "environment: timm 1.0.29 -> 1.0.31, torch-pruning 1.6.0 -> 1.6.1"
    assert "  unchanged: torch 2.15.0, python 3.11.9, cuda none, cudnn none, device cpu" in lines
    assert "Regressions: newly failing (2)" in lines
    assert "  vit_small_patch16_224 [r0.5-global]: passed -> failed (golden)" in lines
    assert "  efficientnet_b0 [r0.5-local]: passed -> error (prune:trace)" in lines
    assert "      reason: torch-pruning could not trace SqueezeExcite: KeyError 'conv_reduce'" in lines
    assert "  regnetx_002 [r0.5-local]: was passed" in lines
    assert "  convnext_tiny [r0.5-local]: failed (forward) -> passed" in lines
    assert "  mobilenetv3_small_100 [r0.5-global]: xfailed (prune:trace) -> xpassed" in lines
    assert "      note: a known failure now passes: drop its known_failure" in lines
    assert "  levit_128 [r0.5-local]: failed (shapes)" in lines
    assert "      params after                  6,400,000 -> 6,100,000 (-4.69%)" in lines
    assert "      MACs after (torch-pruning)    1,050,000,000 -> 990,000,000 (-5.71%)" in lines
    assert "      MACs after (FlopCounterMode)  1,050,000,000 -> 1,010,000,000 (-3.81%)" in lines
    assert "      params before  5,717,416 -> 5,717,800 (+0.01%)" in lines
    assert "Duration changes: >= 2x and >= 1 s (1)" in lines
    assert (
        "  resnet50 [r0.5-local]: 2.00 s -> 9.50 s (4.75x slower; most in prune: +7.20 s; CPU 1.90 s -> 9.10 s)"
        in lines
    )
    assert "  machine load (1-min average, start -> end): old run 0.41 -> 0.63, new run 0.52 -> 0.70" in lines
    assert lines[-1] == (
        "REGRESSED: 2 newly failing, 1 absorbed by fallbacks, 1 disappeared, 1 fixed, 1 changed behaviour, "
        "4 with changed figures, 2 appeared, 1 with a duration change (8 cases in both reports)"
    )
    # groups come in a fixed order: what blocks the upgrade first
    order = [
        "Regressions: newly",
        "Regressions: absorbed",
        "Disappeared",
        "Fixed",
        "Changed behaviour",
        "Figures changed",
        "Appeared",
        "Duration",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(title)) for title in order]
    assert positions == sorted(positions)


def test_fixed_changed_appeared_and_figures_alone_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = upgrade_pair()
    new["cases"] = [c for c in new["cases"] if c["outcome"] not in ("failed", "error") or c["model"] == "levit_128"]
    gone = ("regnetx_002", "efficientnet_b0", "vit_small_patch16_224", "vit_tiny_patch16_224")
    old["cases"] = [c for c in old["cases"] if c["model"] not in gone]
    new["cases"] = [c for c in new["cases"] if c["model"] != "vit_tiny_patch16_224"]
    assert compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]) == 0
    out = capsys.readouterr().out
    assert "xfailed (prune:trace) -> xpassed" in out  # a strict xfail that passes is to review, not a regression
    assert "levit_128 [r0.5-local]: failed (shapes)" in out  # appeared failing: shown, but no past to regress from
    assert out.splitlines()[-1].startswith("OK: 1 fixed, 1 changed behaviour, 2 with changed figures, 2 appeared")
    assert "absorbed" not in out


def test_a_disappeared_case_alone_is_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(OLD_ENV, [case("resnet18"), case("resnet18", "r0.5-global")])
    new = document(OLD_ENV, [case("resnet18")])
    assert compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]) == 1
    out = capsys.readouterr().out
    assert "environment: unchanged" in out
    assert "Disappeared: counted as regressions (1)\n  resnet18 [r0.5-global]: was passed\n" in out
    assert out.endswith("REGRESSED: 1 disappeared (1 cases in both reports)\n")


def test_identical_reports_say_so(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main([pair[1], pair[1]]) == 0
    assert capsys.readouterr().out.endswith("\nOK: no differences (10 cases in both reports)\n")


def test_still_failing_at_another_check_is_changed_not_regressed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = document(OLD_ENV, [case("resnet18", outcome="failed", failed_check="forward")])
    new = document(OLD_ENV, [case("resnet18", outcome="failed", failed_check="golden")])
    assert compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]) == 0
    out = capsys.readouterr().out
    assert "  resnet18 [r0.5-local]: failed (forward) -> failed (golden)\n" in out
    assert "      note: still failing, at another check\n" in out


def test_cases_match_by_model_and_config_not_nodeid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(OLD_ENV, [case("resnet18", nodeid="tests/test_prune.py::test_prune[resnet18-r0.5-local]")])
    new = document(OLD_ENV, [case("resnet18", nodeid="tests/test_timm.py::test_timm[resnet18-r0.5-local]")])
    assert compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]) == 0
    assert capsys.readouterr().out.endswith("OK: no differences (1 cases in both reports)\n")


def test_a_pair_in_several_tests_is_keyed_by_nodeid_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shapes, forward = "tests/test_a.py::test_shapes[resnet18]", "tests/test_a.py::test_forward[resnet18]"
    old = document(OLD_ENV, [case("resnet18", nodeid=shapes), case("resnet18", nodeid=forward)])
    new = document(
        OLD_ENV,
        [case("resnet18", nodeid=shapes), case("resnet18", nodeid=forward, outcome="failed", failed_check="forward")],
    )
    assert compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]) == 1
    out = capsys.readouterr().out
    assert f"  resnet18 [r0.5-local] ({forward}): passed -> failed (forward)" in out
    assert shapes not in out


def test_duration_threshold_is_an_option(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    compare_main([*pair, "--duration-threshold", "5"])
    out = capsys.readouterr().out
    assert "Duration changes" not in out and "resnet50 [r0.5-local]: 2.00 s" not in out
    compare_main([*pair, "--duration-threshold", "1.5"])
    assert "Duration changes: >= 1.5x and >= 1 s (1)" in capsys.readouterr().out


def test_the_sample_in_the_docs_is_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "upgrades.md"
    if not docs.is_file():
        pytest.skip("docs/upgrades.md is not part of this checkout")
    blocks = [part.split("```", 1)[0] for part in docs.read_text(encoding="utf-8").split("```text\n")[1:]]
    (sample,) = [b for b in blocks if b.startswith("tprune compare: reports/pinned.json")]
    (tmp_path / "reports").mkdir()
    old, new = upgrade_pair()
    write(tmp_path / "reports" / "pinned.json", old)
    write(tmp_path / "reports" / "latest.json", new)
    monkeypatch.chdir(tmp_path)
    assert compare_main(["reports/pinned.json", "reports/latest.json"]) == 1
    assert capsys.readouterr().out == sample


# --- markdown and json ----------------------------------------------------------------------------------------------


def test_markdown_is_a_pull_request_comment(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main([*pair, "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "## tprune compare: regressed"
    assert "**Environment:** timm `1.0.29` -> `1.0.31`, torch-pruning `1.6.0` -> `1.6.1`" in lines
    assert "### Regressions: newly failing (2)" in lines
    assert "| case | before | after | reason / note |" in lines
    assert "| `vit_small_patch16_224` r0.5-global | passed | failed (golden) |  |" in lines
    assert (
        "| `mobilenetv3_small_100` r0.5-global | xfailed (prune:trace) | xpassed | "
        "(a known failure now passes: drop its known_failure) |"
    ) in lines
    assert "### Figures changed: largest relative change first (4)" in lines
    assert "| `resnet50` r0.5-local | params after | 6,400,000 | 6,100,000 | -4.69% |" in lines
    assert "|  | MACs after (FlopCounterMode) | 1,050,000,000 | 1,010,000,000 | -3.81% |" in lines
    assert (
        "| `resnet50` r0.5-local | 2.00 s | 9.50 s | 4.75x slower | most in prune: +7.20 s | 1.90 s -> 9.10 s |"
        in lines
    )
    assert "Machine load (1-min average, start -> end): old run 0.41 -> 0.63, new run 0.52 -> 0.70" in lines


def test_markdown_escapes_pipes_in_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(OLD_ENV, [case("resnet18")])
    new = document(OLD_ENV, [case("resnet18", outcome="skipped", reason="needs a | b\nsecond line")])
    compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new), "--format", "markdown"])
    assert "| `resnet18` r0.5-local | passed | skipped | needs a \\| b second line " in capsys.readouterr().out


def test_json_has_the_same_groups(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main([*pair, "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "regressed" and data["exit_status"] == 1
    assert data["counts"] == {
        "regressions": 2,
        "absorbed": 1,
        "disappeared": 1,
        "fixed": 1,
        "stock_better": 0,
        "changed": 1,
        "figures": 4,
        "appeared": 2,
        "durations": 1,
    }
    assert data["environment"]["changed"] == {
        "timm": {"old": "1.0.29", "new": "1.0.31"},
        "torch-pruning": {"old": "1.6.0", "new": "1.6.1"},
    }
    vit = data["regressions"][1]
    assert (vit["model"], vit["config_id"]) == ("vit_small_patch16_224", "r0.5-global")
    assert vit["old"]["outcome"] == "passed" and vit["new"]["failed_check"] == "golden"
    assert data["disappeared"][0]["new"] is None
    resnet = data["figures"][1]
    assert resnet["model"] == "resnet50"
    assert resnet["figures"]["flop_macs_after"] == {"old": 1.05e9, "new": 1.01e9, "relative": -0.038095}
    assert data["durations"][0]["step"] == "prune" and data["durations"][0]["factor"] == 4.75
    assert (data["durations"][0]["old_cpu_seconds"], data["durations"][0]["new_cpu_seconds"]) == (1.9, 9.1)
    assert data["load"] == {"old": {"start": 0.41, "end": 0.63}, "new": {"start": 0.52, "end": 0.7}}
    (tiny,) = data["absorbed"]
    assert tiny["model"] == "vit_tiny_patch16_224" and data["kept_tolerance"] == 0.01
    assert [(f["kind"], f["old"], f["new"]) for f in tiny["findings"]] == [
        ("groups", 0, 6),
        ("kept", 0.300835, 0.62091),
        ("kept", 0.301587, 0.603175),
    ]


def test_json_from_zero_has_no_infinity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = document(OLD_ENV, [case("resnet18", duration=0, **figures((10, 5), (0, 0)))])
    new = document(OLD_ENV, [case("resnet18", duration=3, **figures((10, 5), (0, 7)))])
    compare_main([write(tmp_path / "a.json", old), write(tmp_path / "b.json", new), "--format", "json"])
    text = capsys.readouterr().out
    assert "Infinity" not in text
    assert json.loads(text)["figures"][0]["figures"]["macs_after"]["relative"] is None


# --- what the fallbacks absorb: cases that still pass but prune less -----------------------------------------------


def compare_cases(tmp_path: Path, old: list[dict[str, Any]], new: list[dict[str, Any]], *argv: str) -> Any:
    """Run ``compare_main`` on two one-environment reports; (exit status, the JSON document)."""
    paths = [write(tmp_path / "a.json", document(OLD_ENV, old)), write(tmp_path / "b.json", document(OLD_ENV, new))]
    return compare_main([*paths, *argv, "--format", "json"]), paths


def absorbed(capsys: pytest.CaptureFixture[str]) -> dict[str, list[tuple[str, Any, Any]]]:
    """label -> (what, old, new) of each finding of the absorbed group, from the JSON just printed."""
    data = json.loads(capsys.readouterr().out)
    return {c["label"]: [(f["what"], f["old"], f["new"]) for f in c["findings"]] for c in data["absorbed"]}


def test_a_passing_case_that_leaves_attention_whole_is_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case the fallbacks hide: still passed, 2x the parameters kept, groups left whole."""
    old = [case("vit_tiny_patch16_224", **VIT_TINY, **accounting(13, 0))]
    new = [case("vit_tiny_patch16_224", **VIT_TINY_NEW, **accounting(7, 6))]
    paths = [write(tmp_path / "a.json", document(OLD_ENV, old)), write(tmp_path / "b.json", document(OLD_ENV, new))]
    assert compare_main(paths) == 1
    out = capsys.readouterr().out
    assert (
        "Regressions: absorbed by fallbacks (pruned less, or stock torch-pruning worse) (1)\n"
        "  vit_tiny_patch16_224 [r0.5-local]: passed -> passed\n"
        "      groups left whole or skipped 0 -> 6 (left whole 0 -> 6)\n"
        "      kept params 30.08% -> 62.09% (+32.01 points; --kept-tolerance 0.01)\n"
    ) in out
    assert out.endswith("REGRESSED: 1 absorbed by fallbacks, 1 with changed figures (1 cases in both reports)\n")
    assert compare_main([*paths, "--format", "markdown"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("## tprune compare: regressed\n")
    assert "| `vit_tiny_patch16_224` r0.5-local (passed) | groups left whole or skipped | 0 | 6 |" in md


def test_groups_left_whole_or_skipped_are_counted_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = figures((100, 50), (1000, 500))
    old = [
        case("a", **same, **accounting(10, 0, skipped=0)),
        case("b", **same, **accounting(10, 2, skipped=0)),  # one group moves from left whole to skipped
        case("c", **same, groups_left_whole=1),  # an older report: no group_accounting
        case("d", **same),  # no counts at all: nothing to compare, not an error
        case("e", **same, **accounting(10, 3)),
    ]
    new = [
        case("a", **same, **accounting(9, 0, skipped=1)),
        case("b", **same, **accounting(10, 1, skipped=1)),
        case("c", **same, **accounting(8, 3)),
        case("d", **same, **accounting(5, 5)),
        case("e", **same, **accounting(12, 1)),  # fewer left whole: better, not listed
    ]
    status, _ = compare_cases(tmp_path, old, new)
    assert status == 1
    assert absorbed(capsys) == {
        "a [r0.5-local]": [("groups left whole or skipped", 0, 1)],
        "c [r0.5-local]": [("groups left whole", 1, 3)],  # compared on what both reports have
    }


def test_a_kept_fraction_may_grow_by_the_tolerance_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def kept_case(model: str, params: float, macs: float) -> dict[str, Any]:
        return case(model, kept_params=params, kept_macs=macs)

    old = [kept_case("a", 0.30, 0.30), kept_case("b", 0.30, 0.30), kept_case("c", 0.30, 0.30), case("d")]
    new = [kept_case("a", 0.32, 0.30), kept_case("b", 0.305, 0.20), kept_case("c", 0.30, 0.33), case("d")]
    status, paths = compare_cases(tmp_path, old, new)
    assert status == 1
    # a: +2 points of params; b: +0.5 point (within) and fewer MACs (better); c: +3 points of MACs; d: no fractions
    assert absorbed(capsys) == {
        "a [r0.5-local]": [("kept params", 0.30, 0.32)],
        "c [r0.5-local]": [("kept MACs (torch-pruning)", 0.30, 0.33)],
    }
    assert compare_main([*paths, "--kept-tolerance", "0.05"]) == 0
    assert "absorbed" not in capsys.readouterr().out
    assert compare_main([*paths, "--kept-tolerance", "0"]) == 1
    assert "  b [r0.5-local]: passed -> passed\n      kept params 30.00% -> 30.50%" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-0.1", "1", "nan"])
def test_a_kept_tolerance_outside_0_1_is_bad_input(
    value: str, pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = bad_input(capsys, *pair, "--kept-tolerance", value)
    assert f"--kept-tolerance must be a fraction in [0, 1), e.g. 0.01 for one percentage point, got {value}" in err


def test_the_help_states_the_kept_tolerance(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--kept-tolerance FRACTION" in text and "default 0.01, i.e. one percentage point" in text


def stock(verdict: str, detail: str = "") -> dict[str, Any]:
    return {"stock": {"verdict": verdict, "detail": detail}}


def test_a_worse_stock_verdict_is_a_regression_a_better_one_good_news(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = [
        case("a", **stock("ok")),
        case("b", **stock("crashes", "IndexError in importance")),
        case("c", **stock("skips groups")),
        case("d", **stock("hangs")),
        case("e"),  # no stock verdict on one side: not compared
    ]
    new = [
        case("a", **stock("breaks the forward", "shape '[1, 101, 64]' is invalid")),
        case("b", **stock("skips groups", "2 groups")),
        case("c", **stock("skips groups")),
        case("d"),
        case("e", **stock("hangs")),
    ]
    status, paths = compare_cases(tmp_path, old, new)
    assert status == 1
    data = json.loads(capsys.readouterr().out)
    assert [(c["label"], [(f["old"], f["new"], f["note"]) for f in c["findings"]]) for c in data["absorbed"]] == [
        ("a [r0.5-local]", [("ok", "breaks the forward", "shape '[1, 101, 64]' is invalid")])
    ]
    assert [c["label"] for c in data["stock_better"]] == ["b [r0.5-local]"]
    assert compare_main(paths) == 1
    out = capsys.readouterr().out
    assert "      stock torch-pruning ok -> breaks the forward (shape '[1, 101, 64]' is invalid)\n" in out
    assert "Better: stock torch-pruning improved (1)\n  b [r0.5-local]: passed -> passed\n" in out
    assert "      stock torch-pruning crashes -> skips groups (2 groups)\n" in out
    assert out.endswith("REGRESSED: 1 absorbed by fallbacks, 1 with a better stock verdict (5 cases in both reports)\n")


def test_a_better_stock_verdict_alone_does_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = compare_cases(tmp_path, [case("a", **stock("hangs"))], [case("a", **stock("ok"))])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["counts"]["stock_better"] == 1


@pytest.mark.parametrize("value", [{"verdict": "explodes"}, "ok", {"detail": "no verdict"}])
def test_an_unknown_stock_verdict_is_bad_input(
    value: Any, pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "s.json", document(OLD_ENV, [case("a", stock=value)]))
    err = bad_input(capsys, pair[0], path)
    assert f"{path}: case 0 has an unknown stock verdict" in err
    assert "expected one of ok, skips groups, breaks the forward, crashes, hangs" in err


GOLDEN_DETAIL = "\n".join(
    [
        "pytest_tprune.errors.CheckFailed: [golden] test_vit-r0.50-local differs from "
        "golden/test_vit/r0.50-local.json:",
        "golden made with timm 1.0.29, torch 2.15.0; running timm 1.0.31, torch 2.15.0; upgrade: timm 1.0.29 -> 1.0.31",
        "modules that changed (1), golden => obtained:",
        "  (blocks.0.attn.qkv): Linear(64, 96) => (blocks.0.attn.qkv): Linear(64, 192)",
        "if the change is intended, rewrite it with --tprune-update-golden and review the diff",
    ]
)


def test_a_golden_failure_shows_its_whole_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first line says only that the golden differs; the versions and module lines say how."""
    first = GOLDEN_DETAIL.splitlines()[0]
    old = [case("test_vit", "r0.50-local")]
    new = [case("test_vit", "r0.50-local", outcome="failed", failed_check="golden", reason=first, detail=GOLDEN_DETAIL)]
    paths = [write(tmp_path / "a.json", document(OLD_ENV, old)), write(tmp_path / "b.json", document(OLD_ENV, new))]
    assert compare_main([*paths, "--format", "markdown"]) == 1
    md = capsys.readouterr().out
    assert "<details><summary>test_vit [r0.50-local]: failed (golden), the whole message</summary>" in md
    block = md.split("```text\n", 1)[1].split("\n```\n", 1)[0]
    assert block == GOLDEN_DETAIL
    assert compare_main(paths) == 1
    out = capsys.readouterr().out
    assert "        (blocks.0.attn.qkv): Linear(64, 96) => (blocks.0.attn.qkv): Linear(64, 192)\n" in out
    assert "        golden made with timm 1.0.29" in out
    assert compare_main([*paths, "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["regressions"][0]["new"]["detail"] == GOLDEN_DETAIL


def test_a_detail_of_a_case_that_no_longer_fails_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = case("a", outcome="failed", failed_check="golden", reason="x", detail=GOLDEN_DETAIL)
    paths = [
        write(tmp_path / "a.json", document(OLD_ENV, [failing])),
        write(tmp_path / "b.json", document(OLD_ENV, [case("a")])),
    ]
    assert compare_main([*paths, "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "### Fixed: newly passing (1)" in md and "<details>" not in md
    assert compare_main([paths[1], paths[0], "--format", "markdown"]) == 1  # the other way round: shown
    assert "<details>" in capsys.readouterr().out


# --- bad input: exit 2, one line, no traceback ----------------------------------------------------------------------


def bad_input(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert compare_main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_missing_file(pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.json")
    assert bad_input(capsys, pair[0], missing) == f"tprune compare: error: {missing}: no such file\n"


def test_not_json(pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "junk.json", "<html>502 Bad Gateway</html>")
    err = bad_input(capsys, path, pair[1])
    assert err == f"tprune compare: error: {path} is not JSON (Expecting value at line 1, column 1)\n"
    binary = tmp_path / "report.json.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    assert "is not JSON (not UTF-8 text)" in bad_input(capsys, str(binary), pair[1])


@pytest.mark.parametrize("content", [[1, 2], {"cases": []}, {"tool": "pytest-benchmark", "schema": 1}])
def test_not_a_tprune_report(
    content: Any, pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "other.json", content)
    err = bad_input(capsys, pair[0], path)
    assert err == (
        f"tprune compare: error: {path} is not a pytest-tprune report (write one with pytest --tprune-report PATH)\n"
    )


def test_schema_mismatch_names_both_versions(
    pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    future = {**json.loads(Path(pair[1]).read_text()), "schema": REPORT_SCHEMA + 1}
    path = write(tmp_path / "future.json", future)
    err = bad_input(capsys, pair[0], path)
    assert f"has report schema {REPORT_SCHEMA + 1}, this pytest-tprune reads schema {REPORT_SCHEMA}" in err


def test_malformed_cases(pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "a.json", document(OLD_ENV, [{"model": "resnet18"}]))
    assert "case 0 has no text 'nodeid'" in bad_input(capsys, path, pair[1])
    path = write(tmp_path / "b.json", document(OLD_ENV, [case("resnet18", outcome="exploded")]))
    assert "case 0 has an unknown outcome 'exploded'" in bad_input(capsys, path, pair[1])
    path = write(tmp_path / "c.json", document(OLD_ENV, [case("resnet18"), case("resnet18")]))
    assert "has case tests/test_prune.py::test_prune[resnet18-r0.5-local] twice" in bad_input(capsys, path, pair[1])


def test_usage_errors(pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "the following arguments are required: NEW.json" in bad_input(capsys, pair[0])
    assert "invalid choice: 'html'" in bad_input(capsys, *pair, "--format", "html")
    assert "--duration-threshold must be a factor above 1, got 0.5" in bad_input(
        capsys, *pair, "--duration-threshold", "0.5"
    )
    assert compare_main(["--help"]) == 0
    assert "OLD.json NEW.json" in capsys.readouterr().out


def test_the_command_line(pair: tuple[str, str]) -> None:
    """``python -m pytest_tprune compare``: what CI runs (needs the cli to dispatch to its compare command)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tprune", "compare", *pair, "--format", "markdown"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("## tprune compare: regressed\n")
    assert "Traceback" not in done.stderr


# --- merge ----------------------------------------------------------------------------------------------------------


def shard(k: int, cases: list[dict[str, Any]], env: dict[str, Any] = OLD_ENV, total: int = 3) -> dict[str, Any]:
    doc = document(env, cases)
    doc["settings"] = {**SETTINGS, "shard": [k, total]}
    return doc


def test_merge_concatenates_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [
        write(tmp_path / "s1.json", shard(1, [case("resnet50"), case("deit_tiny_patch16_224")])),
        write(tmp_path / "s2.json", shard(2, [case("convnext_tiny")], {**OLD_ENV, "platform": "Linux-6.8.0"})),
        write(tmp_path / "s3.json", shard(3, [])),
    ]
    out = tmp_path / "merged" / "pinned.json"
    assert merge_main([str(out), *paths]) == 0
    assert capsys.readouterr().out == f"tprune merge: 3 report(s), 3 case(s) -> {out}\n"
    merged = load_report(str(out)).document
    assert [c["model"] for c in merged["cases"]] == ["convnext_tiny", "deit_tiny_patch16_224", "resnet50"]
    assert merged["settings"] == {
        "ratios": [0.5],
        "modes": ["local", "global"],
        "shard": None,
        "merged_shards": [[1, 3], [2, 3], [3, 3]],
    }
    assert merged["environment"]["platform"] == "Linux-6.5.0-x86_64-with-glibc2.35 | Linux-6.8.0"
    assert merged["environment"]["timm"] == "1.0.29"


def test_merge_keeps_the_busiest_shard_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each shard's machine has its own load: merging never refuses over it, and keeps the highest."""
    loads = [{"start": 0.5, "end": 2.5}, {"start": 1.5, "end": 0.9}, None]
    paths = [
        write(tmp_path / f"s{k}.json", shard(k, [case(f"m{k}")], {**OLD_ENV, "load_1min": load} if load else OLD_ENV))
        for k, load in enumerate(loads, start=1)
    ]
    out = tmp_path / "m.json"
    assert merge_main([str(out), *paths]) == 0
    assert load_report(str(out)).environment["load_1min"] == {"start": 1.5, "end": 2.5, "shards": 2}
    busier = write(tmp_path / "busier.json", shard(1, [case("m1")], {**OLD_ENV, "load_1min": {"start": 3, "end": 3}}))
    capsys.readouterr()
    assert compare_main([paths[0], busier]) == 0
    assert "environment: unchanged" in capsys.readouterr().out


def test_merge_warns_about_a_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [write(tmp_path / "s1.json", shard(1, [case("a")])), write(tmp_path / "s3.json", shard(3, [case("b")]))]
    assert merge_main([str(tmp_path / "m.json"), *paths]) == 0
    warning = "tprune merge: warning: shard(s) 2/3 missing: the merged report covers part of the run\n"
    assert capsys.readouterr().err == warning


def test_merge_refuses_inconsistent_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m.json")
    one = write(tmp_path / "s1.json", shard(1, [case("resnet50")]))
    dup = write(tmp_path / "s2.json", shard(2, [case("resnet50")]))
    assert merge_main([out, one, dup]) == 2
    err = capsys.readouterr().err
    nodeid = "tests/test_prune.py::test_prune[resnet50-r0.5-local]"
    assert err == f"tprune merge: error: case {nodeid} is in both {one} and {dup}\n"
    other = write(tmp_path / "s3.json", shard(3, [case("deit")], NEW_ENV))
    assert merge_main([out, one, other]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"tprune merge: error: {other} ran with timm 1.0.31, {one} with 1.0.29: merge only the shards of one run\n"
    )
    onnx = write(tmp_path / "s4.json", shard(2, [case("deit")], {**OLD_ENV, "onnxruntime": "1.32.0"}))
    assert merge_main([out, one, onnx]) == 2  # its export verdicts are not the other shards' kind
    assert capsys.readouterr().err == (
        f"tprune merge: error: {onnx} ran with onnxruntime 1.32.0, {one} with none: merge only the shards of one run\n"
    )
    ratios = shard(2, [case("deit")])
    ratios["settings"]["ratios"] = [0.3]
    assert merge_main([out, one, write(tmp_path / "r.json", ratios)]) == 2
    assert "ran with ratios 0.3" in capsys.readouterr().err
    assert merge_main([out, one, str(tmp_path / "absent.json")]) == 2
    assert "absent.json: no such file" in capsys.readouterr().err
    assert not Path(out).exists()


def test_merge_folds_runs_of_missing_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A zoo run done in part over several sessions misses long runs of its 32 shards."""
    paths = [write(tmp_path / f"s{k}.json", shard(k, [case(f"m{k}")], total=32)) for k in (1, 3, 4)]
    assert merge_main([str(tmp_path / "m.json"), *paths]) == 0
    assert "shard(s) 2/32, 5-32/32 missing" in capsys.readouterr().err


def test_merge_dates_the_run_by_its_last_shard(tmp_path: Path) -> None:
    early = write(tmp_path / "s1.json", {**shard(1, [case("a")]), "finished": "2026-03-13T23:50:00Z"})
    late = write(tmp_path / "s2.json", {**shard(2, [case("b")]), "finished": "2026-03-14T00:20:00Z"})
    out = tmp_path / "m.json"
    assert merge_main([str(out), late, early]) == 0
    assert load_report(str(out)).document["finished"] == "2026-03-14T00:20:00Z"


def test_merge_refuses_shards_of_two_engine_revisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Outcomes depend on our engine as much as on the libraries: one table, one revision."""
    one = write(tmp_path / "s1.json", shard(1, [case("a")], {**OLD_ENV, "pytest-tprune": "0.1.0+aaaaaaaaaaaa"}))
    two = write(tmp_path / "s2.json", shard(2, [case("b")], {**OLD_ENV, "pytest-tprune": "0.1.0+bbbbbbbbbbbb"}))
    assert merge_main([str(tmp_path / "m.json"), one, two]) == 2
    assert "ran with pytest-tprune 0.1.0+bbbbbbbbbbbb" in capsys.readouterr().err


def copy_package(into: Path) -> Path:
    source = Path(engine_fingerprint.__code__.co_filename).parent.parent
    target = into / "pytest_tprune"
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def test_engine_fingerprint_follows_the_engine_not_the_report_readers(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    original = engine_fingerprint(package)
    assert original == engine_fingerprint()  # the copy hashes like the installed package
    for reader in ("reports/table.py", "cli/commands.py", "plugin.py"):
        (package / reader).write_text("# rendering changed\n", encoding="utf-8")
    assert engine_fingerprint(package) == original
    (package / "engine" / "data" / "known_zoo_failures.json").write_text("{}\n", encoding="utf-8")
    changed = engine_fingerprint(package)
    assert changed != original
    adapters = package / "engine" / "adapters.py"
    adapters.write_text(adapters.read_text(encoding="utf-8") + "\n# one more adapter\n", encoding="utf-8")
    checked = engine_fingerprint(package)
    assert checked not in (original, changed)
    shape_rule = package / "checks" / "expectations.py"
    shape_rule.write_text(shape_rule.read_text(encoding="utf-8") + "\n# the shape rule changed\n", encoding="utf-8")
    assert engine_fingerprint(package) not in (original, changed, checked)


# --- crashed cases and incomplete reports ---------------------------------------------------------------------------

CRASH = {"worker_id": "gw1", "returncode": -11, "exit_code": None, "signal": 11, "signal_name": "SIGSEGV"}


def test_a_crashed_case_is_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker that died under a case is a regression where the case passed, and a pass after it is a fix."""
    crashed = case("resnet50", outcome="crashed", crash=CRASH, reason="its xdist worker crashed while running it")
    old = document(OLD_ENV, [case("resnet50"), case("resnet18", outcome="crashed", crash=CRASH)])
    new = document(OLD_ENV, [crashed, case("resnet18")])
    paths = [write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]
    assert compare_main(paths) == 1
    out = capsys.readouterr().out
    assert "Regressions: newly failing (1)\n  resnet50 [r0.5-local]: passed -> crashed\n" in out
    assert "Fixed: newly passing (1)\n  resnet18 [r0.5-local]: crashed -> passed\n" in out
    assert out.endswith("REGRESSED: 1 newly failing, 1 fixed (2 cases in both reports)\n")


def test_an_incomplete_report_makes_the_comparison_untrusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = document(OLD_ENV, [case("resnet18"), case("resnet50")])  # no "complete" key: an older, complete report
    new = document(
        OLD_ENV,
        [case("resnet18"), case("resnet50", outcome="interrupted")],
        complete=False,
        incomplete_reason="interrupted (KeyboardInterrupt); 1 test(s) cut off while running",
    )
    paths = [write(tmp_path / "a.json", old), write(tmp_path / "b.json", new)]
    assert compare_main(paths) == 1  # nothing regressed, but the comparison cannot be trusted
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        f"INCOMPLETE report: {paths[1]} (interrupted (KeyboardInterrupt); 1 test(s) cut off while running): "
        "it lists only the cases that finished, so this comparison cannot be trusted (exit status 1)"
    )
    assert "  resnet50 [r0.5-local]: passed -> interrupted" in lines
    assert lines[-1] == "INCOMPLETE: 1 changed behaviour (2 cases in both reports)"
    assert compare_main([*paths, "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "incomplete" and data["exit_status"] == 1
    assert [i["report"] for i in data["incomplete"]] == [paths[1]]
    assert compare_main([*paths, "--format", "markdown"]) == 1
    assert capsys.readouterr().out.startswith("## tprune compare: incomplete report\n")
    assert compare_main([paths[0], paths[0]]) == 0  # a report without the key is complete


def test_a_complete_flag_that_is_not_a_boolean_is_bad_input(
    pair: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "bad.json", document(OLD_ENV, [], complete="yes"))
    message = f"{bad} is not a valid pytest-tprune report: 'complete' is not true or false"
    assert bad_input(capsys, pair[0], bad) == f"tprune compare: error: {message}\n"


def test_merge_of_an_incomplete_shard_is_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = {**shard(2, [case("b")]), "complete": False, "incomplete_reason": "interrupted (KeyboardInterrupt)"}
    crashed = {**shard(1, [case("a", outcome="crashed", crash=CRASH)]), "crashes": [{"nodeid": "x", **CRASH}]}
    paths = [
        write(tmp_path / "s1.json", crashed),
        write(tmp_path / "s2.json", cut),
        write(tmp_path / "s3.json", shard(3, [])),
    ]
    out = tmp_path / "m.json"
    assert merge_main([str(out), *paths]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"tprune merge: warning: incomplete run ({paths[1]}: interrupted (KeyboardInterrupt)): "
        "only the cases that finished are in it\n"
    )
    merged = load_report(str(out))
    assert not merged.complete and merged.incomplete_reason == f"{paths[1]}: interrupted (KeyboardInterrupt)"
    assert merged.document["crashes"] == [{"nodeid": "x", **CRASH}]
    assert [c["outcome"] for c in merged.cases] == ["crashed", "passed"]

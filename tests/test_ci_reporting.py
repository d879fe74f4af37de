"""What CI reads of a run: junit properties that are scalars, the markdown summary, a golden mismatch in full.

End to end with pytester on the one ``test_resnet`` case at 0.5, uniform, so
every run takes seconds: ``--junitxml`` parsed as XML (with and without
xdist), ``--tprune-summary-md`` written by the controller of an ``-n 2`` run,
and a golden mismatch whose report row keeps the diff (versions, modules
golden => obtained) with paths relative to the rootdir, as ``tprune compare
--format markdown`` then shows it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

# In-process pytester runs forget modules imported during the run; torch cannot be
# imported twice in one process, so import it (and timm, torch-pruning) before any run does.
import timm  # noqa: F401
import torch  # noqa: F401
import torch_pruning  # noqa: F401 - and torch-pruning, whose classes the engine caches

from pytest_tprune.cli.commands import compare_main
from pytest_tprune.session.transport import scalar_properties

ONE_CASE = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local", "-p", "no:cacheprovider")
CASE_ID = "test_resnet-r0.50-local"

PASSING = """
def test_prune(tprune_case):
    tprune_case.check_forward()
"""

# Two tests of the same case: one prunes and passes, one fails at a check at once (no pruning).
ONE_FAILS = """
from pytest_tprune.case import CheckFailed

def test_prune(tprune_case):
    tprune_case.check_forward()

def test_shapes(tprune_case):
    raise CheckFailed("shapes", "group layer1.0.conv1 kept 5 channels, the rule says 4\\nsecond line")
"""

GOLDEN = """
def test_prune(tprune_case):
    tprune_case.check_golden()
"""


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """testcase name -> its properties, from a junit XML file."""
    root = ET.parse(path).getroot()
    found = {}
    for testcase in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in testcase.iter("property")}
        found[testcase.get("name", "")] = props
    return found


# --- junit ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", [("-p", "no:xdist"), ("-n", "1")], ids=["single", "xdist"])
def test_junit_properties_are_scalars_and_the_report_keeps_its_figures(
    project: pytest.Pytester, dist: tuple[str, ...]
) -> None:
    project.makepyfile(test_prune=PASSING)
    xml, report = project.path / "junit.xml", project.path / "report.json"
    args = (*ONE_CASE, *dist, f"--junitxml={xml}", f"--tprune-report={report}")
    # -n 1 starts a real worker (one case: a second one would idle); the single-process run stays in this process
    result = project.runpytest_subprocess(*args, timeout=300) if "-n" in dist else project.runpytest(*args)
    assert result.ret == 0, result.stdout.str()
    props = junit_properties(xml)[f"test_prune[{CASE_ID}]"]
    reprs = {name: value for name, value in props.items() if value[:1] in "{[(" or "': " in value}
    assert not reprs, f"Python reprs in junit properties: {reprs}"
    assert props["tprune_case_model"] == "test_resnet" and props["tprune_case_config_id"] == "r0.50-local"
    assert props["tprune_case_config_ratio"] == "0.5" and props["tprune_case_config_global_pruning"] == "false"
    assert int(props["tprune_figures_group_accounting_offered"]) > 0
    assert 0 < float(props["tprune_figures_kept_params"]) < 1
    assert float(props["tprune_figures_durations_prune"]) >= 0
    assert "tprune_case" not in props and "tprune_figures" not in props
    # the plugin's own report still gets the case's figures, through its private channel
    (row,) = json.loads(report.read_text())["cases"]
    assert row["params_after"] < row["params_before"] and row["group_accounting"]["offered"] > 0
    assert isinstance(row["cpu_time"], float) and row["cpu_time"] > 0
    load = json.loads(report.read_text())["environment"]["load_1min"]
    assert set(load) == {"start", "end"} and all(isinstance(v, float) for v in load.values())


def test_scalar_properties_flatten_every_dict() -> None:
    value = {"a": 1, "b": {"c d": True, "e": None, "f": [1, "x"]}, "g": [{"h": 2.5}], "long": "y" * 500}
    assert scalar_properties("tprune_figures", value) == [
        ("tprune_figures_a", 1),
        ("tprune_figures_b_c_d", "true"),
        ("tprune_figures_b_f", "1,x"),
        ("tprune_figures_g_0_h", 2.5),
        ("tprune_figures_long", "y" * 197 + "..."),
    ]


# --- the markdown summary -------------------------------------------------------------------------------------------


def test_the_markdown_summary_is_written_by_the_controller_under_xdist(project: pytest.Pytester) -> None:
    project.makepyfile(test_prune=ONE_FAILS)
    summary = project.path / "ci" / "summary.md"
    result = project.runpytest_subprocess(*ONE_CASE, "-n", "2", f"--tprune-summary-md={summary}", timeout=300)
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([f"tprune: markdown summary written to {summary}"])
    text = summary.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "## tprune: 1 passed, 1 failed"
    assert any(line.startswith("tprune: torch ") and ", device " in line for line in lines)
    assert any(line.startswith("tprune guards: ") for line in lines)
    assert "| passed | 1 |" in lines and "| failed | 1 |" in lines and "| **all** | 2 |" in lines
    assert "### Failing cases (1)" in lines
    (row,) = [line for line in lines if line.startswith("| `test_resnet` r0.50-local | failed |")]
    assert "| shapes |" in row and "[shapes] group layer1.0.conv1 kept 5 channels, the rule says 4 |" in row
    assert "second line" not in text
    assert sorted(p.name for p in summary.parent.iterdir()) == ["summary.md"]  # atomic: no temporary file left


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_a_summary_path_that_cannot_be_written_is_a_usage_error_up_front(project: pytest.Pytester, where: str) -> None:
    project.makepyfile(test_prune="def test_prune(tprune_case):\n    raise AssertionError('must not run')\n")
    folder = project.path / "ci"
    folder.mkdir()
    blocker = project.path / "notes.txt"
    blocker.write_text("notes")
    target = folder if where == "directory" else blocker / "summary.md"
    result = project.runpytest(*ONE_CASE, f"--tprune-summary-md={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and f"--tprune-summary-md {target}" in errors[0], result.stderr.str()
    assert ("is a directory" if where == "directory" else "is not a directory") in errors[0]
    assert "must not run" not in result.stdout.str()
    assert list(folder.iterdir()) == [] and blocker.read_text() == "notes"


# --- a golden mismatch, in full -------------------------------------------------------------------------------------


def tamper(golden: Path) -> dict[str, Any]:
    """Change one module line and the recorded timm version of a golden: a mismatch with a version upgrade."""
    content = json.loads(golden.read_text(encoding="utf-8"))
    name = next(iter(content["modules"]))
    content["modules"][name] = "Conv2d(3, 999, kernel_size=(3, 3))"
    content["versions"]["timm"] = "0.0.1"
    golden.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return {"module": name}


def test_a_golden_mismatch_keeps_its_diff_with_relative_paths(
    project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    project.makepyfile(test_prune=GOLDEN)
    old, new = project.path / "old.json", project.path / "new.json"
    written = project.runpytest(*ONE_CASE, "--tprune-update-golden", f"--tprune-report={old}")
    assert written.ret == 0, written.stdout.str()
    assert json.loads(old.read_text())["golden_written"] == ["golden/test_resnet/r0.50-local.json"]
    golden = project.path / "golden" / "test_resnet" / "r0.50-local.json"
    module = tamper(golden)["module"]
    failed = project.runpytest(*ONE_CASE, f"--tprune-report={new}")
    assert failed.ret == 1
    (row,) = json.loads(new.read_text())["cases"]
    assert row["outcome"] == "failed" and row["failed_check"] == "golden"
    assert "differs from golden/test_resnet/r0.50-local.json:" in row["reason"]
    detail = row["detail"]
    assert str(project.path) not in detail and detail.splitlines()[0] == row["reason"]
    assert "golden made with " in detail and "upgrade: timm 0.0.1 -> " in detail
    assert "modules that changed (1), golden => obtained:" in detail
    assert f"  ({module}): Conv2d(3, 999, kernel_size=(3, 3)) => ({module}): " in detail
    capsys.readouterr()
    assert compare_main([str(old), str(new), "--format", "markdown"]) == 1
    md = capsys.readouterr().out
    assert "<details><summary>test_resnet [r0.50-local]: failed (golden), the whole message</summary>" in md
    assert "modules that changed (1), golden => obtained:" in md.split("<details>", 1)[1]


def test_compare_ranks_stock_verdicts_as_the_engine_names_them() -> None:
    """reports/ may not import the engine, so the verdicts are spelled twice: they must stay one list."""
    from pytest_tprune.engine.stock import VERDICTS
    from pytest_tprune.reports.schema import STOCK_VERDICTS

    assert STOCK_VERDICTS == VERDICTS

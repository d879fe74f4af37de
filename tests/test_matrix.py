"""``tprune matrix`` on hand-made run reports, and on the committed ones of docs/compatibility/ (nothing is pruned)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_table import ENV, FAMILIES, case, stock

from pytest_tprune.cli.commands import matrix_main
from pytest_tprune.reports.schema import REPORT_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "docs" / "compatibility").glob("*.json"))
DOCS_TITLE = "Compatibility matrix: torch-pruning and timm releases"
"""The --title docs/compatibility.md is rendered with (its first line)."""


def report(path: Path, cases: list[dict[str, Any]], **env: str) -> str:
    """Write a report of ``cases`` run with ENV, some versions replaced (``torch_pruning="1.6.0"``)."""
    environment = {**ENV, **{name.replace("_", "-"): version for name, version in env.items()}}
    document = {
        "schema": REPORT_SCHEMA,
        "tool": "pytest-tprune",
        "finished": "2026-03-14T12:00:00Z",
        "complete": True,
        "incomplete_reason": None,
        "environment": environment,
        "settings": {"ratios": [0.5], "modes": ["local"], "shard": None},
        "cases": cases,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def passing(model: str, verdict: str = "ok", **extra: Any) -> dict[str, Any]:
    return case(model, **stock(verdict), **extra)


def broken(model: str, verdict: str = "crashes") -> dict[str, Any]:
    return case(model, "failed", failed_check="forward", reason="forward failed", **stock(verdict))


def matrix(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> tuple[str, str]:
    assert matrix_main(list(argv), families=FAMILIES) == status
    out, err = capsys.readouterr()
    return out, err


def row_of(page: str, family: str) -> list[str]:
    """The cells of a family's row (the family's name, bold or not, dropped)."""
    (line,) = [line for line in page.splitlines() if line.startswith((f"| {family} |", f"| **{family}** |"))]
    return [cell.strip() for cell in line.strip("|").split(" | ")[1:]]


def header_of(page: str) -> list[str]:
    (line,) = [line for line in page.splitlines() if line.startswith("| family |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.fixture
def upgrade(tmp_path: Path) -> list[str]:
    """torch-pruning 1.6.0 -> 1.6.1 on one timm: cspnet breaks, vision_transformer gets better."""
    old = [passing("cspresnet50"), broken("vit_small"), passing("vit_huge", groups_pruned=9, groups_left_whole=3)]
    new = [
        broken("cspresnet50", "hangs"),
        passing("vit_small"),
        passing("vit_huge", groups_pruned=9, groups_left_whole=3),
    ]
    return [
        report(tmp_path / "tp161.json", new, torch_pruning="1.6.1"),
        report(tmp_path / "tp160.json", old, torch_pruning="1.6.0"),
    ]


def test_columns_are_headed_by_the_versions_that_differ_oldest_first(
    upgrade: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    page, err = matrix(capsys, *upgrade)
    assert header_of(page) == ["family", "cases", "tp 1.6.0", "tp 1.6.1"]
    assert "Common to every run: python 3.11.7, torch 2.15.0, timm 1.0.31, device cpu. " in page
    assert "The runs differ in torch-pruning." in page
    assert err == ""


def test_timm_heads_the_columns_too_when_it_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [
        report(tmp_path / "a.json", [passing("vit_small")], torch_pruning="1.10.0", timm="1.0.31"),
        report(tmp_path / "b.json", [passing("vit_small")], torch_pruning="1.6.1", timm="1.0.29"),
    ]
    page, _ = matrix(capsys, *paths)
    assert header_of(page) == ["family", "cases", "tp 1.6.1 / timm 1.0.29", "tp 1.10.0 / timm 1.0.31"]
    assert "Common to every run: python 3.11.7, torch 2.15.0, device cpu." in page


def test_reports_of_one_library_set_are_told_apart_by_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two engine revisions on the same libraries: the headers would read the same, so they name the files."""
    paths = [report(tmp_path / f"{name}.json", [passing("vit_small")]) for name in ("before", "after")]
    page, _ = matrix(capsys, *paths)
    assert header_of(page) == [
        "family",
        "cases",
        "tp 1.6.1 / timm 1.0.31 (after.json)",
        "tp 1.6.1 / timm 1.0.31 (before.json)",
    ]


def test_a_family_that_breaks_in_one_version_shows_both(upgrade: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    page, _ = matrix(capsys, *upgrade)
    assert row_of(page, "cspnet") == ["1", "pass; stock ok", "fail (forward); stock hangs"]
    assert row_of(page, "vision_transformer") == [
        "2",
        "1 pass, 1 fail (forward); stock crashes (1 of 2); 25% left whole",
        "pass; stock ok; 14% left whole",
    ]
    assert "| **cspnet** | 1 |" in page and "| **vision_transformer** | 2 |" in page
    assert "2 of 2 families read differently between the columns: cspnet, vision_transformer." in page
    assert row_of(page, "*all families*") == [
        "3",
        "2 pass, 1 fail, 0 xfail; stock ok 2 of 3",
        "2 pass, 1 fail, 0 xfail; stock ok 2 of 3",
    ]


def test_cells_name_known_failures_and_families_that_read_the_same_are_not_bold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        case("halonet_h1", "xfailed", failed_check="timeout", reason="known failure: hang: prune() is slow"),
        passing("cspresnet50", "skips groups", groups_pruned=1, groups_left_whole=199),
        passing("cspdarknet53", "breaks the forward", groups_pruned=999, groups_left_whole=1),
    ]
    paths = [report(tmp_path / f"{v}.json", cases, torch_pruning=v) for v in ("1.5.3", "1.6.1")]
    page, _ = matrix(capsys, *paths)
    assert row_of(page, "byoanet") == ["1", "xfail (timeout)", "xfail (timeout)"]
    assert row_of(page, "cspnet")[1] == "pass; stock breaks the forward (1 of 2); 17% left whole"
    assert "| byoanet | 1 |" in page and "| cspnet | 2 |" in page
    assert "Every one of the 2 families reads the same in every column." in page


def test_a_share_left_whole_is_of_the_groups_offered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accounting = {"offered": 40, "pruned": 9, "left_whole": 1, "refused": 30, "minimum_width": 0, "skipped": 0}
    tiny = passing("vit_small", groups_pruned=9, groups_left_whole=1, group_accounting=accounting)
    whole = passing("cspresnet50", groups_pruned=999, groups_left_whole=1)
    page, _ = matrix(capsys, report(tmp_path / "r.json", [tiny, whole]))
    assert row_of(page, "vision_transformer") == ["1", "pass; stock ok; 2% left whole"]
    assert row_of(page, "cspnet") == ["1", "pass; stock ok; <1% left whole"]
    assert header_of(page) == ["family", "cases", "tp 1.6.1 / timm 1.0.31"]


def test_an_incomplete_report_is_rendered_marked_and_exits_1(
    upgrade: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = Path(upgrade[0])
    document = json.loads(cut.read_text())
    document.update(complete=False, incomplete_reason="interrupted (KeyboardInterrupt)", cases=document["cases"][1:])
    cut.write_text(json.dumps(document))
    page, err = matrix(capsys, *upgrade, status=1)
    assert header_of(page) == ["family", "cases", "tp 1.6.0", "tp 1.6.1 (incomplete)"]
    assert f"**Incomplete run:** `{cut}` (interrupted (KeyboardInterrupt))" in page
    assert row_of(page, "cspnet") == ["1", "pass; stock ok", "missing"]
    assert err == (
        f"tprune matrix: warning: {cut} is an incomplete run (interrupted (KeyboardInterrupt)): "
        "only the cases that finished are in its column\n"
    )


def test_cases_one_report_lacks_are_missing_and_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = [passing("vit_small"), passing("halonet_h1")]
    new = [passing("vit_small"), passing("vit_huge"), passing("cspresnet50")]
    paths = [
        report(tmp_path / "old.json", old, torch_pruning="1.6.0"),
        report(tmp_path / "new.json", new, torch_pruning="1.6.1"),
    ]
    page, _ = matrix(capsys, *paths)
    assert row_of(page, "vision_transformer") == ["2", "1 pass, 1 missing; stock ok", "pass; stock ok"]
    assert row_of(page, "cspnet") == ["1", "missing", "pass; stock ok"]
    assert row_of(page, "byoanet") == ["1", "pass; stock ok", "missing"]
    assert "**Different selections:** 3 of 4 cases are not in every report;" in page
    assert row_of(page, "*all families*") == [
        "4",
        "2 pass, 0 fail, 0 xfail, 2 missing; stock ok 2 of 2",
        "3 pass, 0 fail, 0 xfail, 1 missing; stock ok 3 of 3",
    ]


def test_the_same_selection_has_no_selection_note(upgrade: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    page, _ = matrix(capsys, *upgrade)
    assert "Different selections" not in page and "missing" not in page.split("Each cell")[0]


def test_output_is_written_atomically_and_regenerates_byte_identically(
    upgrade: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "docs" / "compatibility.md"
    out, _ = matrix(capsys, *upgrade, "--output", str(page), "--title", "Upgrades")
    assert out == f"tprune matrix: 2 report(s) -> {page}\n"
    first = page.read_bytes()
    assert sorted(p.name for p in page.parent.iterdir()) == ["compatibility.md"]
    text = first.decode()
    assert text.startswith("# Upgrades\n\nRendered by `tprune matrix` from 2 run report(s); regenerate with ")
    assert f"`tprune matrix {upgrade[1]} {upgrade[0]} --output {page} --title Upgrades`." in text
    matrix(capsys, *reversed(upgrade), "--output", str(page), "--title", "Upgrades")
    assert page.read_bytes() == first
    stdout_page, _ = matrix(capsys, *upgrade, "--title", "Upgrades")
    assert stdout_page.splitlines()[3:] == text.splitlines()[3:]  # only the regenerate line names --output


def test_the_legend_and_the_runs_are_under_the_table(upgrade: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    page, _ = matrix(capsys, *upgrade)
    table_end = page.index("| **vision_transformer** |")
    assert page.index("Each cell sums up the family's cases") > table_end
    assert page.index("`stock crashes (4 of 16)`") > table_end
    assert f"- **tp 1.6.0**: `{upgrade[1]}`, finished 2026-03-14, python 3.11.7, torch 2.15.0, " in page
    assert page.startswith("# Compatibility matrix\n")


def bad_input(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert matrix_main(list(argv), families=FAMILIES) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_leaves_the_page_alone(
    upgrade: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "compatibility.md"
    page.write_text("the committed matrix\n")
    missing = tmp_path / "nope.json"
    assert bad_input(capsys, upgrade[0], str(missing), "--output", str(page)) == (
        f"tprune matrix: error: {missing}: no such file\n"
    )
    junk = tmp_path / "junk.json"
    junk.write_text("<html>502</html>")
    assert f"tprune matrix: error: {junk} is not JSON" in bad_input(capsys, str(junk), "--output", str(page))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tool": "something else"}))
    assert "is not a pytest-tprune report (write one with pytest --tprune-report PATH)" in bad_input(capsys, str(other))
    assert f"{upgrade[0]} is given twice" in bad_input(capsys, upgrade[0], upgrade[0])
    assert "the following arguments are required: REPORT.json" in bad_input(capsys)
    assert "--output" in bad_input(capsys, *upgrade, "--output")
    assert page.read_text() == "the committed matrix\n"


def test_an_unwritable_output_is_one_line(
    upgrade: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    err = bad_input(capsys, *upgrade, "--output", str(tmp_path / "taken"))
    assert err.startswith(f"tprune matrix: error: cannot write {tmp_path / 'taken'}: ")
    assert err.endswith("; choose another --output\n")
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_command_line_dispatches_to_matrix() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tprune", "matrix", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: tprune matrix" in done.stdout and "--output" in done.stdout and "--title" in done.stdout


def committed_families() -> set[str]:
    """The families of the committed reports' models, as the installed timm groups them."""
    from pytest_tprune.engine.zoo import family_of

    models = {c["model"] for path in COMMITTED for c in json.loads(path.read_text())["cases"]}
    mapping = family_of(models)
    return {mapping.get(model, "(not a timm model)") for model in models}


def test_the_committed_reports_render_every_family(tmp_path: Path) -> None:
    assert len(COMMITTED) == 5  # torch-pruning 1.5.3, 1.6.0, 1.6.1 on timm 1.0.31; timm 1.0.20, 1.0.26
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tprune", "matrix", *map(str, COMMITTED)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    page = done.stdout
    families = committed_families()
    assert len(families) > 50
    for family in families:
        cells = row_of(page, family)
        assert len(cells) == 6 and all(cells[1:]), (family, cells)
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| family |")]
    assert len(rows) == len(families) + 1  # and the totals row
    assert header_of(page) == [
        "family", "cases", "tp 1.5.3 / timm 1.0.31", "tp 1.6.0 / timm 1.0.31", "tp 1.6.1 / timm 1.0.20",
        "tp 1.6.1 / timm 1.0.26", "tp 1.6.1 / timm 1.0.31",
    ]  # fmt: skip


PAGES = {
    "compatibility.md": ("compatibility", DOCS_TITLE),
    "compatibility-slow.md": ("compatibility/slow", "Known-slow families, judged: torch-pruning and timm releases"),
}
"""Each committed matrix page: the folder of its reports (under docs/) and its title. compatibility-slow.md
judges the known-slow family representatives, run with ``--tprune-slow-limit=0`` (docs/upgrades.md)."""


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_committed_matrix_page_is_what_the_command_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    """docs/PAGE is exactly ``tprune matrix docs/FOLDER/*.json --output docs/PAGE --title TITLE``."""
    folder, title = PAGES[page]
    reports = sorted((ROOT / "docs" / folder).glob("*.json"))
    assert len(reports) == 5
    (tmp_path / "docs" / folder).mkdir(parents=True)
    for path in reports:
        shutil.copy(path, tmp_path / "docs" / folder / path.name)
    monkeypatch.chdir(tmp_path)
    argv = [f"docs/{folder}/{path.name}" for path in reports]
    assert matrix_main([*argv, "--output", f"docs/{page}", "--title", title]) == 0
    assert (tmp_path / "docs" / page).read_text() == (ROOT / "docs" / page).read_text()

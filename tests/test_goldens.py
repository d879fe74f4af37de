"""Golden files that are not usable goldens: each fails its case in one line that says how to fix it.

The unit tests read crafted files with :mod:`pytest_tprune.checks.golden` alone
(no torch); the pytester tests corrupt a real golden of ``test_resnet`` (one
case, seconds) and check what a user sees: a ``[golden]`` failure naming the
file, what is wrong and the command that rewrites it, no parser traceback, and
``golden`` as the failed check in the JSON report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_tprune.checks import golden
from pytest_tprune.checks.golden import GoldenError, broken_message, read_golden, same_content

GOOD: dict[str, Any] = {
    "schema": golden.SCHEMA,
    "model": "m",
    "config": {"ratio": 0.5},
    "config_id": "r0.50-local",
    "input_size": [3, 32, 32],
    "device_note": "n",
    "made_on": "cpu",
    "versions": {"torch": "2"},
    "figures": {"params_after": 1},
    "output_shape": [2, 10],
    "modules": {"fc": "Linear"},
    "shapes": {"fc.weight": [10, 4]},
}


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "m" / "r0.50-local.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def with_changes(**changes: Any) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


GOOD_TEXT = golden.dumps(GOOD)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GOOD_TEXT[: len(GOOD_TEXT) // 2], "is truncated ("),
        (GOOD_TEXT[: GOOD_TEXT.index('"modules"') + 4], "is truncated (Unterminated string"),
        ("", "is empty"),
        ("schema: 1\n", "is not valid JSON (Expecting value at line 1 column 1)"),
        (b'{"schema": 1, "model": "\xff"}', "is not UTF-8 text (byte 24: invalid start byte)"),
        ("[]", "holds an array, not a golden (a JSON object)"),
        ('"golden"', "holds a string, not a golden (a JSON object)"),
        ("null", "holds null, not a golden (a JSON object)"),
        (with_changes(schema=...), "has no 'schema' key"),
        (with_changes(schema="1"), 'has schema "1", not an integer'),
        (with_changes(schema=True), "has schema true, not an integer"),
        (with_changes(schema=0), "has schema 0, which no pytest-tprune writes (this version reads 1)"),
        (with_changes(modules=..., shapes=...), "lacks required key(s) 'modules', 'shapes'"),
        (with_changes(modules=[]), "has an array under 'modules', not an object"),
        (with_changes(left_whole="x"), "has a string under 'left_whole', not an object"),
    ],
)
def test_unusable_goldens_name_what_is_wrong(tmp_path: Path, text: str | bytes, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(GoldenError) as info:
        read_golden(path)
    assert str(info.value).startswith(f"golden file {path} {reason}")
    assert "\n" not in str(info.value) and not info.value.newer
    assert same_content(path, GOOD) is False  # --tprune-update-golden rewrites it instead of raising


def test_a_newer_schema_says_to_upgrade(tmp_path: Path) -> None:
    path = write(tmp_path, with_changes(schema=golden.SCHEMA + 98))
    with pytest.raises(GoldenError) as info:
        read_golden(path)
    assert info.value.newer
    message = broken_message(info.value, "m-r0.50-local")
    assert message == (
        f"golden file {path} was written by a newer pytest-tprune (schema {golden.SCHEMA + 98}; this version "
        f"reads schema {golden.SCHEMA}): upgrade pytest-tprune to compare with it, or rewrite it with this "
        "version: 'pytest --tprune-update-golden -k \"m-r0.50-local\"'"
    )


def test_an_unreadable_golden_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TEXT)
    path.unlink()
    path.mkdir()  # exists, but is no file: reading it fails on every platform and user
    with pytest.raises(GoldenError, match=r"cannot be read \(IsADirectoryError: Is a directory\)$"):
        read_golden(path)
    assert same_content(path, GOOD) is False


def test_a_broken_golden_message_gives_the_rewrite_command(tmp_path: Path) -> None:
    path = write(tmp_path, "[]")
    with pytest.raises(GoldenError) as info:
        read_golden(path)
    assert broken_message(info.value, "m-r0.50-local") == (
        f"golden file {path} holds an array, not a golden (a JSON object): rewrite it with "
        "'pytest --tprune-update-golden -k \"m-r0.50-local\"' and review it before committing"
    )


def test_a_good_golden_reads_back_and_matches(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TEXT + "\n")
    assert read_golden(path) == GOOD and same_content(path, GOOD)
    assert not same_content(path, {**GOOD, "model": "other"})
    assert not same_content(tmp_path / "absent.json", GOOD)


def test_reading_goldens_needs_no_torch() -> None:
    code = "import sys, pytest_tprune.checks.golden; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- end to end: a real golden, corrupted ---------------------------------------------------------

ONE_CASE = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local", "-p", "no:cacheprovider")
CASE_ID = "test_resnet-r0.50-local"
CORRUPTIONS = {
    "truncated": (lambda text: text[: len(text) // 2], "is truncated ("),
    "array": (lambda text: "[]\n", "holds an array, not a golden (a JSON object)"),
    "newer-schema": (
        lambda text: text.replace('"schema": 1,', '"schema": 99,'),
        "was written by a newer pytest-tprune (schema 99; this version reads schema 1): upgrade pytest-tprune",
    ),
}


@pytest.fixture(scope="module")
def torch_loaded() -> None:
    """Import torch, timm and torch-pruning before pytester snapshots ``sys.modules`` (module scope: first).

    Pytester forgets the modules imported during a test, and torch cannot be
    imported twice in one process. torch-pruning must survive too: the
    plugin's configure imports pytest_tprune's engine into this process, and
    its per-process caches (the guarded pruner class, the guards' probe) keep
    the torch-pruning of the first run, which a re-imported one does not
    match (the next run would prune nothing). Importing here rather than at
    module level keeps the unit tests above torch-free.
    """
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torch_pruning  # noqa: F401


@pytest.fixture
def project(torch_loaded: None, pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    return pytester


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_golden_fails_in_one_line_and_update_rewrites_it(project: pytest.Pytester, corruption: str) -> None:
    corrupt, reason = CORRUPTIONS[corruption]
    path = project.path / "golden" / "test_resnet" / "r0.50-local.json"
    assert project.runpytest(*ONE_CASE, "--tprune-update-golden").ret == 0
    made = path.read_text(encoding="utf-8")
    broken = corrupt(made)
    assert broken != made
    path.write_text(broken, encoding="utf-8")

    report = project.path / "report.json"
    result = project.runpytest(*ONE_CASE, f"--tprune-report={report}", "-rf")
    assert result.ret == 1
    output = result.stdout.str()
    error_lines = [line for line in result.stdout.lines if line.startswith("E ")]
    (line,) = error_lines  # one line: no parser traceback, no continuation
    assert f"[golden] golden file {path} {reason}" in line
    assert f"'pytest --tprune-update-golden -k \"{CASE_ID}\"'" in line
    assert "JSONDecodeError" not in output and "AttributeError" not in output and "Traceback" not in output
    (case,) = json.loads(report.read_text())["cases"]
    assert case["outcome"] == "failed" and case["failed_check"] == "golden"
    assert path.read_text(encoding="utf-8") == broken  # a failing check leaves the file as it was

    assert project.runpytest(*ONE_CASE, "--tprune-update-golden").ret == 0
    assert path.read_text(encoding="utf-8") == made  # rewritten, byte for byte what this version makes


LAYERNORM_2_1 = "LayerNorm((96,), eps=1e-06, elementwise_affine=True)"
LAYERNORM_LATER = "LayerNorm((96,), eps=1e-06, elementwise_affine=True, bias=True)"


@pytest.mark.parametrize(
    ("expected", "obtained", "same"),
    [
        (LAYERNORM_LATER, LAYERNORM_2_1, True),  # torch 2.1 does not print bias=True
        (LAYERNORM_2_1, LAYERNORM_LATER, True),
        (LAYERNORM_LATER, LAYERNORM_2_1.replace("96", "48"), False),  # a width change stays a mismatch
        (LAYERNORM_LATER, LAYERNORM_LATER.replace("1e-06", "1e-05"), False),  # so does a changed value
        ("Conv2d(3, 8, kernel_size=(3, 3))", "Conv2d(3, 4, kernel_size=(3, 3))", False),
        ("BatchNorm2d(8, eps=1e-05)", "BatchNormAct2d(8, eps=1e-05)", False),  # a renamed type
        (LAYERNORM_LATER, None, False),  # a module that disappeared
    ],
)
def test_only_a_print_out_change_of_a_module_line_is_tolerated(expected: str, obtained: str | None, same: bool) -> None:
    assert golden.print_only(expected, obtained) is same


def test_a_golden_made_under_another_torch_print_out_still_fails_on_a_real_width_change() -> None:
    expected = {"figures": {}, "modules": {"norm": LAYERNORM_LATER, "fc": "Linear(in_features=96, out_features=48)"}}
    obtained = {
        "figures": {},
        "modules": {"norm": LAYERNORM_2_1, "fc": "Linear(in_features=96, out_features=40)"},
        "shapes": {},
        "output_shape": None,
        "input_size": None,
        "config": None,
    }
    expected.update({"shapes": {}, "output_shape": None, "input_size": None, "config": None})
    diff = golden.diff_golden(expected, obtained)
    assert [name for name, _, _ in diff.modules] == ["fc"]


def test_a_changed_head_count_is_a_golden_mismatch_naming_the_attention_module() -> None:
    """Attention modules hold no tensors: only the ``heads`` block shows 6 heads became 4 at the same widths."""
    base = {"figures": {}, "modules": {}, "shapes": {}, "output_shape": None, "input_size": None, "config": None}
    expected = {**base, "heads": {"blocks.0.attn": [12, 6, 32], "blocks.1.attn": [12, 6, 32]}}
    obtained = {**base, "heads": {"blocks.0.attn": [12, 6, 32], "blocks.1.attn": [12, 4, 48]}}
    diff = golden.diff_golden(expected, obtained)
    assert diff.figures == [("heads blocks.1.attn [before, after, head_dim]", [12, 6, 32], [12, 4, 48])]
    assert not golden.diff_golden(expected, expected)

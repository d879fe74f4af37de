"""The seed's command line: output format, exit codes, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from pytest_tprune.cli import main
from pytest_tprune.cli.prune import tree_diff


def test_prune_prints_seed_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "test_vit", "--pruning_ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pruning test_vit...\n\nVisionTransformer(\n")
    assert re.search(r"\(qkv\): Linear\(in_features=\d+, out_features=\d+, bias=True\) => \(qkv\): Linear", out)
    assert re.search(r"^MACs: \d+\.\d{4} G => \d+\.\d{4} G$", out, re.M)
    assert re.search(r"^Params: \d+\.\d{4} M => \d+\.\d{4} M$", out, re.M)


def test_dashed_flags_and_global_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "test_vit", "--pruning-ratio", "0.5", "--global-pruning"]) == 0
    assert "Params:" in capsys.readouterr().out


def test_list_models_prints_every_timm_name(capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    assert main(["--list_models"]) == 0
    names = eval(capsys.readouterr().out)  # the seed prints a Python list
    assert names == timm.list_models() and len(names) > 1000
    assert main(["--list-models", "test_vit*"]) == 0
    assert "test_vit2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "vit_base_patch32_22"],
            "unknown timm model 'vit_base_patch32_22': did you mean: vit_base_patch32_224",
        ),
        (["--model", "test_vit", "--pruning_ratio", "1.5"], "pruning ratio must be in [0, 1), got 1.5"),
        (["--model", "test_vit", "--pruning_ratio", "abc"], "invalid float value: 'abc'"),
        (["--list_models", "no_such_*"], "no timm model matches 'no_such_*'"),
        ([], "nothing to do"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit from inside parse_args
        code = int(exit_.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "test_vit", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_pretrained_offline_fails_fast_and_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_tprune.cli import prune as cli

    monkeypatch.setattr(cli, "weights_cached", lambda name: False)
    monkeypatch.setattr(cli, "weights_reachable", lambda: False)
    assert main(["--model", "test_vit", "--pretrained"]) == 2
    assert "drop --pretrained" in capsys.readouterr().err


def test_module_entry_point_runs_the_same_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_tprune", "--model", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("tprune: error: unknown timm model 'nope'")


def test_tree_diff_marks_only_changed_lines() -> None:
    before = "M(\n  (a): Linear(4, 8)\n  (b): ReLU()\n)"
    after = "M(\n  (a): Linear(4, 4)\n  (b): ReLU()\n)"
    assert tree_diff(before, after).splitlines()[1] == "  (a): Linear(4, 8) => (a): Linear(4, 4)"
    assert tree_diff(before, after).splitlines()[2] == "  (b): ReLU()"


def test_the_heads_line_says_what_the_module_tree_cannot() -> None:
    from pytest_tprune.cli.prune import heads_line

    same = {f"blocks.{i}.attn": [12, 6, 32] for i in range(12)}
    assert heads_line(same) == "Heads: 12 => 6 (head_dim 32) in 12 attention module(s)"
    mixed = {**same, "blocks.11.attn": [12, 12, 32]}
    assert heads_line(mixed) == (
        "Heads: 12 => 6 (head_dim 32) in 11 attention module(s); 12 => 12 (head_dim 32) in 1 attention module(s)"
    )

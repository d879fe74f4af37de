"""The seed's published figures, reproduced by the command line.

ViT-B/32 runs by default; ConvNeXt-XXLarge needs about 10 GB of RAM and a
minute, so it is opt-in: ``pytest -m big tests/test_seed.py``.
"""

from __future__ import annotations

import pytest

from pytest_tprune.cli import main


def test_vit_base_patch32_matches_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "vit_base_patch32_224", "--pruning_ratio", "0.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (
        "(qkv): Linear(in_features=768, out_features=2304, bias=True) => "
        "(qkv): Linear(in_features=384, out_features=1152, bias=True)"
    ) in out
    assert "Params: 88.2242 M => 22.8790 M" in out


@pytest.mark.big
def test_convnext_xxlarge_matches_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "convnext_xxlarge", "--pruning_ratio", "0.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MACs: 197.9920 G => 49.7716 G" in out
    assert "Params: 846.4710 M => 213.2587 M" in out

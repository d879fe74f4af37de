"""Groups torch-pruning cannot prune consistently are left whole, not fatal.

Two small models reproduce the two mechanisms seen across the timm zoo: a
partial convolution over a channel split (FasterNet), whose index mapping
runs past the convolution's width, and a residual added to a slice of a
wider output (ReXNet), whose index propagation cycles without end.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from pytest_tprune.config import PruneConfig  # noqa: E402
from pytest_tprune.models import ModelSpec  # noqa: E402
from pytest_tprune.pruning import prune  # noqa: E402


class _PartialConvBlock(nn.Module):
    """FasterNet's block: a conv over the first quarter of the channels, then an MLP and a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.part = dim // 4
        self.partial = nn.Conv2d(self.part, self.part, 3, padding=1, bias=False)
        self.fc1 = nn.Conv2d(dim, dim * 2, 1)
        self.fc2 = nn.Conv2d(dim * 2, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, rest = torch.split(x, [self.part, x.shape[1] - self.part], dim=1)
        mixed = torch.cat((self.partial(head), rest), 1)
        return x + self.fc2(torch.relu(self.fc1(mixed)))


class _PartialConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.block = _PartialConvBlock(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class _SliceResidual(nn.Module):
    """ReXNet's block: the output is wider than the input and the residual joins its first channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin = cin
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, : self.cin] + x, y[:, self.cin :]], dim=1)


class _SliceResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(_SliceResidual(16, 20), _SliceResidual(20, 24), _SliceResidual(24, 28))
        self.mid = nn.Conv2d(28, 64, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.blocks(self.stem(x)))).mean((2, 3)))


def _spec(name: str, factory: type[nn.Module]) -> ModelSpec:
    return ModelSpec(name, factory, (3, 16, 16), ignored_layers=lambda m: [m.head])


def test_group_mapped_past_a_width_is_left_whole_and_the_rest_is_pruned() -> None:
    result = prune(_spec("partial_conv", _PartialConvNet), PruneConfig(ratio=0.5), device="cpu")
    out = result.outcome
    assert [lw.root for lw in out.left_whole] == ["stem"], out.left_whole
    assert "block.partial, which has 8 channels" in out.left_whole[0].reason
    assert out.shapes_after["stem.weight"] == out.shapes_before["stem.weight"]  # the stream is untouched
    assert out.shapes_after["block.fc1.weight"][0] == 32  # the MLP's hidden width is halved
    assert list(result.output.shape) == [1, 10]


def test_cyclic_index_propagation_is_cut_and_left_whole() -> None:
    result = prune(_spec("slice_residual", _SliceResidualNet), PruneConfig(ratio=0.5), device="cpu")
    out = result.outcome
    cyclic = [lw for lw in out.left_whole if "mapping cycle" in lw.reason]
    assert cyclic, out.left_whole
    assert out.shapes_after["mid.weight"][0] == 32  # a group outside the cycle is still pruned
    assert list(result.output.shape) == [1, 10]


def test_golden_lists_groups_left_whole_and_flags_one_that_becomes_pruned() -> None:
    from pytest_tprune.golden import diff_golden, golden_content, render_diff

    result = prune(_spec("partial_conv", _PartialConvNet), PruneConfig(ratio=0.5), device="cpu")
    golden = golden_content(result.outcome, {"torch-pruning": "x"})
    assert list(golden["left_whole"]) == ["stem (out)"]
    upgraded = {key: value for key, value in golden.items() if key != "left_whole"}  # the mapping got fixed
    diff = diff_golden(golden, upgraded)
    assert diff
    assert "stem (out): index" in render_diff(diff, golden, {"torch-pruning": "x"})
    assert "=> pruned" in render_diff(diff, golden, {"torch-pruning": "x"})

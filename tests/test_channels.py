"""The right channels on a real model: ``check_all()``'s equivalence check catches a wrong-channel pruner.

``mobilenetv3_small_050`` is the mobilenetv3 family's representative in the
default selection: BatchNorm after every conv, depthwise convolutions, SE
blocks. Each test breaks one of torch-pruning's pruning functions the way a
real bug would (kept channels get another channel's BatchNorm statistics; a
consumer drops the wrong input columns) and shows that the shapes, the shape
rule and the reductions still pass while the equivalence check fails, naming
the group.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

tp = pytest.importorskip("torch_pruning")

from pytest_tprune.checks.case import CaseSettings, TpruneCase  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import timm_spec  # noqa: E402
from pytest_tprune.engine.resources import STORE  # noqa: E402
from pytest_tprune.errors import CheckFailed  # noqa: E402

FAMILY_REPRESENTATIVE = "mobilenetv3_small_050"


def case(checks: tuple[str, ...]) -> TpruneCase:
    STORE.clear()  # a mutated pruner must meet a fresh pristine copy, not one cached by another test
    return TpruneCase(timm_spec(FAMILY_REPRESENTATIVE), PruneConfig(0.5), CaseSettings(checks=checks))


def kept(count: int, removed: Sequence[int]) -> list[int]:
    gone = {int(i) for i in removed}
    return [i for i in range(count) if i not in gone]


@pytest.fixture
def wrong_batchnorm_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning's BatchNorm pruner, except that kept channels get the running statistics of others."""
    original = tp.pruner.function.BatchnormPruner.prune_out_channels

    def wrong(self: Any, layer: Any, idxs: Sequence[int]) -> Any:
        keep = kept(int(layer.num_features), idxs)
        mean, var = layer.running_mean.clone(), layer.running_var.clone()
        layer = original(self, layer, idxs)
        layer.running_mean, layer.running_var = mean[keep[::-1]], var[keep[::-1]]
        return layer

    monkeypatch.setattr(tp.pruner.function.BatchnormPruner, "prune_out_channels", wrong)
    monkeypatch.setattr(tp.pruner.function.BatchnormPruner, "prune_in_channels", wrong)


@pytest.fixture
def wrong_input_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning's conv pruner, except that a consumer drops the input columns next to the removed ones."""
    original = tp.pruner.function.ConvPruner.prune_in_channels

    def shifted(self: Any, layer: Any, idxs: Sequence[int]) -> Any:
        width = int(layer.in_channels)
        return original(self, layer, sorted({(int(i) + 1) % width for i in idxs}))

    monkeypatch.setattr(tp.pruner.function.ConvPruner, "prune_in_channels", shifted)


def test_the_family_representative_keeps_the_right_channels() -> None:
    checked = case(("forward", "shapes", "groups", "equivalence", "reduction"))
    checked.check_all()
    assert checked.channels is not None
    summary = checked.channels.summary()
    assert summary["groups_checked"] > 0 and summary["max_error"] <= summary["tolerance"]
    assert summary["save_load"] == {"torch.save(model)": "ok", "torch_pruning.state_dict": "ok"}


def test_other_channels_batchnorm_statistics_fail_equivalence(wrong_batchnorm_statistics: None) -> None:
    case(("forward", "shapes", "groups", "reduction")).check_all()  # widths are all right
    with pytest.raises(CheckFailed, match=r"\[equivalence\] equivalence: group [\w.]+ \(out-channels\): pruned output"):
        case(("equivalence",)).check_all()


def test_wrong_input_columns_fail_equivalence(wrong_input_columns: None) -> None:
    case(("shapes", "groups", "reduction")).check_all()
    with pytest.raises(CheckFailed, match=r"\[equivalence\] equivalence: group [\w.]+ \(out-channels\)"):
        case(("equivalence",)).check_all()


DEFAULT_CASE = ("--tprune-models=mobilenetv3_small_050", "--tprune-ratios=0.5", "--tprune-modes=local")
ROOT = Path(__file__).resolve().parents[1]


def _default_input_size() -> str:
    """The input cap pyproject.toml gives the default selection: the committed goldens were written at it."""
    found = re.search(r'^tprune_input_size = "(\d+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml sets no tprune_input_size"
    return found[1]


@pytest.fixture
def default_selection_case(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project holding the representative's committed golden, run with the default checks and input size."""
    pytester.makefile(".toml", pyproject=f'[tool.pytest.ini_options]\ntprune_input_size = "{_default_input_size()}"\n')
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    target = pytester.path / "golden" / FAMILY_REPRESENTATIVE
    target.mkdir(parents=True)
    shutil.copy(ROOT / "golden" / FAMILY_REPRESENTATIVE / "r0.50-local.json", target / "r0.50-local.json")
    return pytester


def test_the_default_checks_fail_the_committed_case_when_a_consumer_drops_the_wrong_columns(
    default_selection_case: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case as ``pytest -n auto`` runs it, golden included: it passes, then fails under the mutation."""
    STORE.clear()
    default_selection_case.runpytest_inprocess(*DEFAULT_CASE, "-p", "no:cacheprovider").assert_outcomes(passed=1)
    original = tp.pruner.function.ConvPruner.prune_in_channels

    def shifted(self: Any, layer: Any, idxs: Sequence[int]) -> Any:
        return original(self, layer, sorted({(int(i) + 1) % int(layer.in_channels) for i in idxs}))

    monkeypatch.setattr(tp.pruner.function.ConvPruner, "prune_in_channels", shifted)
    STORE.clear()
    result = default_selection_case.runpytest_inprocess(*DEFAULT_CASE, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [r".*\[equivalence\] equivalence: group [\w.]+ \(out-channels\): pruned output differs.*"]
    )


def _cached_positions_spec() -> Any:
    """A conv stem plus a position term computed from a tensor the module keeps as a plain attribute and
    rebuilds in the default dtype when stale, as timm 1.0.20's ConViT keeps ``rel_indices``: neither parameter
    nor buffer, so ``Module.double()`` misses it, and a fresh copy rebuilds it in float32."""
    from torch import nn

    from pytest_tprune.engine.models import ModelSpec

    class CachedPositions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pos_proj = nn.Linear(3, 8)
            self.grid_proj = nn.Linear(3, 8)
            self.rel = torch.zeros(1, 1)  # a plain float32 attribute, rebuilt when stale
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.rel.shape[1] != 3:
                self.rel = torch.linspace(0, 1, 3).view(1, 3)
            grid = torch.linspace(-1, 1, 3).view(1, 3)  # made by every forward, in the default dtype
            position = self.pos_proj(self.rel) + self.grid_proj(grid)
            return self.head(torch.relu(self.stem(x) + position.view(1, -1, 1, 1)).mean((2, 3)))

    return ModelSpec("cached_positions", CachedPositions, (3, 8, 8), ignored_layers=lambda m: [m.head])


torch = pytest.importorskip("torch")


def test_a_plain_tensor_attribute_is_compared_in_float64_too() -> None:
    """The float64 comparison converts every floating tensor of the module, not only parameters and
    buffers, and runs with float64 as the default dtype; before, such a model failed as a bare RuntimeError
    (mat1 and mat2 dtypes) from the check."""
    checked = TpruneCase(_cached_positions_spec(), PruneConfig(0.5), CaseSettings(checks=("equivalence",)))
    checked.check_all()
    assert checked.channels is not None and checked.channels.summary()["groups_checked"] > 0
    assert checked.pruned.model.rel.dtype == torch.float32  # restored as it was
    assert torch.get_default_dtype() == torch.float32


def test_a_check_that_raises_fails_under_its_name_saying_it_could_not_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_tprune.checks.properties import equivalence

    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    monkeypatch.setattr(equivalence, "_soft_error", broken)
    checked = TpruneCase(_cached_positions_spec(), PruneConfig(0.5), CaseSettings(checks=("equivalence",)))
    with pytest.raises(
        CheckFailed,
        match=r"\[equivalence\] the equivalence check could not judge the pruned model: "
        r"RuntimeError: mat1 and mat2 must have the same dtype at \S+test_channels.py:\d+ "
        r"\(a fault in the check's own comparison, not a verdict on torch-pruning",
    ):
        checked.check_all()

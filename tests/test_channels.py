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

from collections.abc import Sequence
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
    assert checked.equivalence is not None and checked.equivalence["groups_checked"] > 0
    assert checked.equivalence["max_error"] <= checked.equivalence["tolerance"]


def test_other_channels_batchnorm_statistics_fail_equivalence(wrong_batchnorm_statistics: None) -> None:
    case(("forward", "shapes", "groups", "reduction")).check_all()  # widths are all right
    with pytest.raises(CheckFailed, match=r"\[equivalence\] equivalence: group [\w.]+ \(out-channels\): pruned output"):
        case(("equivalence",)).check_all()


def test_wrong_input_columns_fail_equivalence(wrong_input_columns: None) -> None:
    case(("shapes", "groups", "reduction")).check_all()
    with pytest.raises(CheckFailed, match=r"\[equivalence\] equivalence: group [\w.]+ \(out-channels\)"):
        case(("equivalence",)).check_all()

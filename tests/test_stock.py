"""The stock verdict: what plain torch-pruning does with a case, beside what the engine makes of it.

Each verdict is pinned on a tiny timm model where stock torch-pruning 1.6.1
really behaves that way (the engine copes with each: its cases pass or are
strict known failures), and the crash on a mutation of torch-pruning, so
that the verdict is shown to follow torch-pruning, not the engine.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

tp = pytest.importorskip("torch_pruning")

from pytest_tprune.checks import golden  # noqa: E402
from pytest_tprune.checks.case import CaseSettings, TpruneCase  # noqa: E402
from pytest_tprune.checks.stock import stock_verdict  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import timm_spec  # noqa: E402
from pytest_tprune.engine.resources import STORE  # noqa: E402
from pytest_tprune.engine.stock import VERDICTS, run_stock  # noqa: E402


def stock_of(model: str) -> dict[str, Any]:
    return TpruneCase(timm_spec(model), PruneConfig(0.5), CaseSettings()).stock


def test_verdicts_are_ordered_from_best_to_worst() -> None:
    assert VERDICTS == ("ok", "skips groups", "breaks the forward", "crashes", "hangs")


def test_stock_prunes_a_plain_resnet_fine() -> None:
    assert stock_of("test_resnet") == {"verdict": "ok", "detail": "11 group(s) offered, none skipped"}


def test_stock_skips_the_group_whose_ranking_scope_a_rerooted_attention_group_took() -> None:
    found = stock_of("test_vit3")
    assert found["verdict"] == "skips groups"
    assert found["detail"].endswith("first attn_pool.proj (out, 96 channels)")


def test_stock_breaks_the_forward_of_weight_standardised_convs_without_the_engine_pruner() -> None:
    found = stock_of("test_nfnet")
    assert found["verdict"] == "breaks the forward"
    assert found["detail"].startswith("RuntimeError in module 'stem.conv1': weight should contain")


def test_stock_hangs_where_the_engine_bounds_the_group_walk() -> None:
    found = stock_of("test_coatnet")
    assert found["verdict"] == "hangs"
    assert "without closing (a mapping cycle)" in found["detail"]


def test_stock_crashes_name_the_exception_and_where(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, layer: Any, idxs: Any) -> Any:
        raise RuntimeError("pruning a conv went wrong")

    monkeypatch.setattr(tp.pruner.function.ConvPruner, "prune_out_channels", broken)
    spec = timm_spec("test_resnet")
    pristine = STORE.pristine(spec, 0)
    inputs = spec.make_inputs(1, 0)
    run = run_stock(spec, copy.deepcopy(pristine.model), inputs, PruneConfig(0.5), 0, [1, 1000])
    found = stock_verdict(run, PruneConfig(0.5))
    assert found["verdict"] == "crashes"
    assert found["detail"].startswith("RuntimeError: pruning a conv went wrong (")
    assert "test_stock.py:" in found["detail"] and "in broken)" in found["detail"]


def test_a_golden_compares_the_stock_verdict_not_its_detail() -> None:
    made = {"figures": {}, "modules": {}, "shapes": {}, "output_shape": [1], "input_size": [1], "config": {}}
    expected = {**made, "stock": {"verdict": "ok", "detail": "11 group(s) offered, none skipped"}}
    moved = {**made, "stock": {"verdict": "ok", "detail": "different wording"}}
    worse = {**made, "stock": {"verdict": "crashes", "detail": "RuntimeError: ..."}}
    assert not golden.diff_golden(expected, moved)
    diff = golden.diff_golden(expected, worse)
    assert diff.figures == [("stock verdict", "ok", "crashes")]
    assert "stock verdict: ok => crashes" in golden.render_diff(diff, expected, {})


def test_a_fault_in_this_package_is_no_stock_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal of ours that breaks (here: a helper that moved) must not read as torch-pruning crashing."""
    from pytest_tprune.engine import gradients
    from pytest_tprune.errors import CheckFailed

    monkeypatch.setattr(gradients, "gradient_feed", None)  # the stock run calls it: a TypeError in our frame
    STORE.clear()
    case = TpruneCase(timm_spec("test_resnet"), PruneConfig(0.5), CaseSettings())
    assert case.stock["verdict"] == "not judged"
    assert "could not judge" in case.stock["detail"] and "TypeError" in case.stock["detail"]
    with pytest.raises(CheckFailed, match=r"\[golden\] the stock check could not judge the pruned model: TypeError"):
        case.check_golden()
    assert "stock" not in case.summary_row()
    STORE.clear()

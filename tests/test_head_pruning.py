"""Head pruning and the per-layer cap: config ids and dicts, usage errors, the rule, and real prunes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import timm  # noqa: F401 - imported once here: pytester's in-process runs cannot import torch afresh
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_tprune.checks import expectations as exp
from pytest_tprune.checks.accounting import skipped_groups
from pytest_tprune.checks.strategies import head_ratios, max_ratios, prune_configs
from pytest_tprune.cli import main
from pytest_tprune.cli.prune import build_parser, config_from_args
from pytest_tprune.engine.config import PruneConfig, parse_head_ratios
from pytest_tprune.errors import PruneStepError, UsageError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
HEADS = PruneConfig(0.5, prune_num_heads=True, head_pruning_ratio=0.5)


# --- the config: existing dicts and ids unchanged, new knobs round trip ---------------------------------------------


def test_default_config_keeps_the_golden_dict_and_id() -> None:
    golden = json.loads((GOLDEN / "test_resnet" / "r0.50-local.json").read_text())
    config = PruneConfig(ratio=0.5)
    assert golden["config"] == config.to_dict()
    assert golden["config_id"] == config.config_id == "r0.50-local"
    assert set(config.to_dict()) == {
        "ratio",
        "global_pruning",
        "importance",
        "round_to",
        "iterative_steps",
        "isomorphic",
    }


def test_every_golden_config_reads_back_to_its_own_dict_and_id() -> None:
    paths = sorted(GOLDEN.glob("*/*.json"))
    assert paths
    for path in paths:
        golden = json.loads(path.read_text())
        config = PruneConfig.from_dict(golden["config"])
        assert config.to_dict() == golden["config"], path
        assert config.config_id == golden["config_id"] == path.stem, path


@pytest.mark.parametrize(
    ("config", "config_id"),
    [
        (HEADS, "r0.50-local-heads0.50"),
        (PruneConfig(0.5, global_pruning=True, max_pruning_ratio=0.8), "r0.50-global-max0.80"),
        (
            PruneConfig(
                0.3, importance="l1", round_to=8, prune_num_heads=True, head_pruning_ratio=0.25, max_pruning_ratio=0.9
            ),
            "r0.30-local-l1-round8-heads0.25-max0.90",
        ),
        (PruneConfig(0.5, prune_num_heads=True, head_pruning_ratio=0.375), "r0.50-local-heads0.375"),
    ],
)
def test_new_knobs_round_trip_through_dict_id_and_command_line(config: PruneConfig, config_id: str) -> None:
    assert config.config_id == config_id
    assert re.fullmatch(r"[\w.+-]+", config_id)
    assert PruneConfig.from_dict(config.to_dict()) == config
    args = build_parser().parse_args(["--model", "test_vit", *config.cli_args()])
    assert config_from_args(args) == config
    command = config.reproduce_command("test_vit")
    assert command.startswith("tprune --model test_vit --pruning_ratio ") and command.endswith("--seed 0 --device cpu")


def test_ids_stay_distinct_and_new_fields_sort_after_the_old_ones() -> None:
    configs = [
        PruneConfig(0.5),
        PruneConfig(0.5, max_pruning_ratio=0.8),
        HEADS,
        PruneConfig(0.5, prune_num_heads=True, head_pruning_ratio=0.51),
        PruneConfig(0.5, prune_num_heads=True, head_pruning_ratio=0.505),
    ]
    assert len({c.config_id for c in configs}) == len(configs)
    assert len(sorted(configs)) == len(configs)  # order=True still orders every config
    assert PruneConfig(0.3, prune_num_heads=True, head_pruning_ratio=0.5) < PruneConfig(0.5)  # the seed's knobs first
    assert PruneConfig(0.5, max_pruning_ratio=1).to_dict() == PruneConfig(0.5).to_dict()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head_pruning_ratio": 0.5}, "removes no heads without prune_num_heads: add prune_num_heads=True"),
        ({"prune_num_heads": True}, "removes no heads at head_pruning_ratio 0"),
        ({"prune_num_heads": True, "head_pruning_ratio": 1.0}, "head pruning ratio must be in [0, 1), got 1.0"),
        ({"prune_num_heads": True, "head_pruning_ratio": -0.1}, "head pruning ratio must be in [0, 1)"),
        ({"prune_num_heads": True, "head_pruning_ratio": math.nan}, "head pruning ratio must be in [0, 1)"),
        ({"max_pruning_ratio": 0.0}, "max pruning ratio must be in (0, 1], got 0.0"),
        ({"max_pruning_ratio": 1.5}, "max pruning ratio must be in (0, 1]"),
        ({"max_pruning_ratio": True}, "max pruning ratio must be in (0, 1]"),
    ],
)
def test_bad_head_and_cap_values_are_usage_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        PruneConfig(0.5, **changes)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--head_pruning_ratio", "0.5"], "add prune_num_heads=True (tprune: --prune_num_heads)"),
        (["--prune_num_heads"], "(tprune: --head_pruning_ratio 0.5)"),
        (["--prune-num-heads", "--head-pruning-ratio", "1"], "head pruning ratio must be in [0, 1), got 1.0"),
        (["--max_pruning_ratio", "0"], "max pruning ratio must be in (0, 1], got 0.0"),
        (["--max-pruning-ratio", "nan"], "max pruning ratio must be in (0, 1], got nan"),
        (["--head_pruning_ratio", "abc"], "invalid float value: 'abc'"),
    ],
)
def test_cli_bad_head_values_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", "test_vit", "--pruning_ratio", "0.5", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err and "Pruning" not in captured.out


def test_head_ratio_list_is_parsed_and_checked() -> None:
    assert parse_head_ratios("0.5, 0.25,0.5") == [0.25, 0.5]
    for text, message in (("0", "removes no heads"), ("1.0", "[0, 1)"), ("x", "not a number"), ("0.5,", "malformed")):
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_head_ratios(text)


def test_head_ratios_option_adds_head_cases_only_when_given(project: pytest.Pytester) -> None:
    project.makepyfile(test_cases="def test_prune(tprune_case):\n    pass\n")
    base = ("--tprune-models=test_vit", "--tprune-ratios=0.5", "--tprune-modes=local", "--collect-only", "-q")
    plain = project.runpytest(*base)
    assert "test_prune[test_vit-r0.50-local]" in plain.stdout.str() and "heads" not in plain.stdout.str()
    heads = project.runpytest(*base, "--tprune-head-ratios=0.5,0.25")
    ids = re.findall(r"test_prune\[([^\]]+)\]", heads.stdout.str())
    assert ids == ["test_vit-r0.50-local", "test_vit-r0.50-local-heads0.25", "test_vit-r0.50-local-heads0.50"]
    bad = project.runpytest(*base, "--tprune-head-ratios=0")
    assert bad.ret != 0 and "removes no heads" in bad.stderr.str() + bad.stdout.str()


def test_marker_knobs_give_a_test_its_own_configs_and_bad_knobs_say_what_to_use(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_cases="import pytest\n\n\n"
        "@pytest.mark.tprune(knobs=[{'round_to': 8}, {'prune_num_heads': True, 'head_pruning_ratio': 0.5}])\n"
        "def test_knobs(tprune_case):\n    pass\n"
    )
    base = ("--tprune-models=test_vit", "--tprune-ratios=0.5", "--tprune-modes=local", "--collect-only", "-q")
    ids = re.findall(r"test_knobs\[([^\]]+)\]", project.runpytest(*base).stdout.str())
    assert ids == ["test_vit-r0.50-local-round8", "test_vit-r0.50-local-heads0.50"]
    # with --tprune-head-ratios: the knob that already prunes heads is not doubled
    ids = re.findall(r"test_knobs\[([^\]]+)\]", project.runpytest(*base, "--tprune-head-ratios=0.5").stdout.str())
    assert ids == [
        "test_vit-r0.50-local-round8",
        "test_vit-r0.50-local-round8-heads0.50",
        "test_vit-r0.50-local-heads0.50",
    ]
    for knobs, message in (("[{'ratio': 0.3}]", "ratio cannot be set per test"), ("[{'round_to': 0}]", "round_to")):
        marker = f"@pytest.mark.tprune(knobs={knobs})"
        project.makepyfile(test_cases=f"import pytest\n\n\n{marker}\ndef test_knobs(tprune_case):\n    pass\n")
        bad = project.runpytest(*base)
        assert bad.ret != 0 and "tprune marker knobs" in bad.stderr.str() + bad.stdout.str()
        assert message in bad.stderr.str() + bad.stdout.str()


# --- strategies: opt-in, defaults unchanged -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None)
@given(config=prune_configs())
def test_default_draws_never_touch_the_new_knobs(config: PruneConfig) -> None:
    assert not config.prune_num_heads and config.head_pruning_ratio == 0 and config.max_pruning_ratio == 1


@settings(max_examples=40, deadline=None, database=None)
@given(config=prune_configs(head_ratio=head_ratios(), max_ratio=max_ratios()))
def test_opt_in_draws_are_valid_replayable_configs(config: PruneConfig) -> None:
    assert config.prune_num_heads == (config.head_pruning_ratio > 0) and 0.1 <= config.max_pruning_ratio <= 1
    assert config_from_args(build_parser().parse_args(["--model", "m", *config.cli_args()])) == config


def test_opt_in_draws_shrink_to_the_smallest_head_ratio_and_no_cap() -> None:
    from hypothesis import find

    found = find(prune_configs(head_ratio=head_ratios(), max_ratio=max_ratios()), lambda c: c.prune_num_heads)
    assert found == PruneConfig(0.0, prune_num_heads=True, head_pruning_ratio=0.01)
    fixed = find(prune_configs(ratio=0.5, head_ratio=0.5, max_ratio=st.just(0.8)), lambda c: True)
    assert fixed.config_id == "r0.50-local-heads0.50-max0.80"


# --- the rule -------------------------------------------------------------------------------------------------------


def test_head_rule_removes_whole_heads_on_top_of_head_dimensions() -> None:
    assert exp.predicted_kept_heads(768, 12, 0.5, 0.5, None) == 6 * 32  # 6 heads of 32, not of 64
    assert exp.predicted_kept_heads(768, 12, 0.0, 0.5, None) == 768  # no head goes where no dimension does
    assert exp.predicted_kept_heads(768, 12, 0.3, 0.25, None) == 9 * int(64 * 0.7)  # ceil(3) heads, 44 dims
    assert exp.predicted_kept_heads(64, 2, 0.5, 0.6, None) == 64  # every head: refused whole
    assert exp.predicted_kept_heads(768, 12, 0.5, 0.5, None) == exp.predicted_kept(768, 12, 0.5, None) // 2


def test_grouped_query_attention_is_stated_as_unchecked_not_skipped() -> None:
    from pytest_tprune.engine.outcome import GroupRecord

    record = GroupRecord("blocks.0.attn.proj", "in", 768, 12, 576, heads=12, kv_heads=4, heads_removed=6)
    reason = exp.head_rule_unstated(record, HEADS)
    assert reason is not None and "grouped-query attention" in reason
    assert exp.head_rule_unstated(record, PruneConfig(0.5)) is None


def test_cap_widens_the_band_only_for_several_steps() -> None:
    assert exp.max_kept_fraction(PruneConfig(0.5, max_pruning_ratio=0.2)) == 0.5
    assert exp.max_kept_fraction(PruneConfig(0.5, iterative_steps=2, max_pruning_ratio=0.2)) == pytest.approx(0.8)
    assert exp.max_kept_fraction(PruneConfig(0.5, iterative_steps=2)) == 0.5


# --- real prunes ----------------------------------------------------------------------------------------------------


def _attentions(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "qkv") and isinstance(getattr(m, "num_heads", None), int)]


def test_test_vit_loses_whole_heads_and_every_rule_holds() -> None:
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.pruning import prune
    from pytest_tprune.engine.stock import OK, run_stock

    spec = timm_spec("test_vit")
    result = prune(spec, HEADS, device="cpu")
    attentions = _attentions(result.model)
    assert attentions and all(a.num_heads == 1 and a.head_dim == 16 for a in attentions)  # 2 heads of 32 before
    assert all(a.qkv.out_features == 3 * a.num_heads * a.head_dim == a.attn_dim * 3 for a in attentions)
    out = result.outcome
    assert out.config == HEADS.to_dict() and set(out.heads.values()) == {2}  # heads before pruning
    attention_groups = [g for g in out.groups if g.heads]
    assert len(attention_groups) == len(attentions) and all(g.heads_removed == 1 for g in attention_groups)
    assert exp.shape_violations(out) == [] and skipped_groups(out) == []
    band, kept = exp.param_band(out, None, ""), exp.pruned_param_fraction(out)
    assert band is not None and kept is not None and band.contains(kept)
    assert bool(torch.isfinite(result.output).all()) and out.output_shape_after == out.output_shape_before
    again = result.model(result.inputs)
    assert torch.allclose(again, result.output)
    from pytest_tprune.engine.models import build_model

    stock = run_stock(spec, build_model(spec, 0), result.inputs, HEADS, 0, out.output_shape_before)
    assert stock.verdict in ("", OK), stock.detail


def test_a_declined_attention_group_keeps_its_heads() -> None:
    """torch-pruning lowers ``num_heads`` before it yields a group: a group declined unpruned must keep its count."""
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.pruning import prune
    from pytest_tprune.engine.tp_internals import head_layers

    def observe(model: Any, pruner: Any) -> Any:
        return lambda pruner, group, step: not head_layers(pruner, group)  # prune everything but attention

    result = prune(timm_spec("test_vit"), HEADS, device="cpu", observe=observe)
    attentions = _attentions(result.model)
    assert all((a.num_heads, a.head_dim, a.qkv.out_features) == (2, 32, 192) for a in attentions)
    assert all(a.qkv.in_features == 32 for a in attentions)  # the residual stream was pruned
    assert not any(g.heads for g in result.outcome.groups)


def test_a_head_count_left_behind_fails_the_adapt_step_naming_the_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_tprune.engine import adapters
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.pruning import prune

    monkeypatch.setattr(adapters, "sync_head_counts", lambda model, heads: [])  # the forward still runs: 2 heads of 8
    with pytest.raises(PruneStepError) as err:
        prune(timm_spec("test_vit"), HEADS, device="cpu")
    assert err.value.step == "adapt" and err.value.module == "blocks.0.attn"
    assert "num_heads is 2 but torch-pruning left 1 on 'blocks.0.attn.qkv'" in str(err.value)
    argv = ["--model", "test_vit", *HEADS.cli_args()]
    assert main(argv) == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "adapt failed for test_vit in module 'blocks.0.attn'" in message


def test_vit_base_cli_prunes_six_of_twelve_heads_per_block(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's model: ratio 0.5 and head ratio 0.5 keep 6 heads of 32 (both heads and head dims go)."""
    from pytest_tprune.engine import pruning

    results: list[Any] = []
    original = pruning.prune

    def keep(*args: Any, **kwargs: Any) -> Any:
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(pruning, "prune", keep)
    argv = ["--model", "vit_base_patch32_224", "--pruning_ratio", "0.5", "--prune_num_heads"]
    assert main([*argv, "--head_pruning_ratio", "0.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pruning vit_base_patch32_224...\n\nVisionTransformer(\n")
    before = "(qkv): Linear(in_features=768, out_features=2304, bias=True)"
    qkv = f"{before} => (qkv): Linear(in_features=384, out_features=576,"
    assert out.count(qkv) == 12, "every block's qkv: 384 in (embedding halved), 3 x 6 heads x 32 out"
    assert re.search(r"^MACs: 4\.4138 G => \d+\.\d{4} G$", out, re.M)
    assert re.search(r"^Params: 88\.2242 M => \d+\.\d{4} M$", out, re.M)
    assert out.rstrip().endswith("\nHeads: 12 => 6 (head_dim 32) in 12 attention module(s)")
    (result,) = results
    attentions = _attentions(result.model)
    assert len(attentions) == 12
    for attn in attentions:
        assert (attn.num_heads, attn.head_dim, attn.qkv.out_features) == (6, 32, 3 * 6 * 32)
        assert attn.proj.in_features == attn.attn_dim == 6 * 32
    assert result.outcome.output_shape_after == [1, 1000] and bool(torch.isfinite(result.output).all())
    assert exp.shape_violations(result.outcome) == []


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which rows of ``before`` survive in ``after``, found by value (a fresh init has no two rows alike)."""
    kept = []
    for row in after.flatten(1):
        (match,) = torch.nonzero((before.flatten(1) == row).all(dim=1)).flatten().tolist()
        kept.append(match)
    return kept


@pytest.mark.parametrize("heads", [False, True], ids=["head-dims", "whole-heads"])
def test_separate_query_key_value_projections_are_pruned_head_by_head(heads: bool) -> None:
    """timm's EVA attention with ``qkv_fused=False`` (the eva02 models) has ``q_proj``/``k_proj``/``v_proj``:
    torch-pruning must be told their head count, or it removes channels anywhere and the reshape into
    ``num_heads`` heads then mixes channels of different heads, a forward that runs but computes another function."""
    from timm.models.eva import Eva

    from pytest_tprune import prune
    from pytest_tprune.engine.recipe import attention_heads

    torch.manual_seed(0)
    model = Eva(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, qkv_fused=False, num_classes=10)
    model.eval()
    mapped = attention_heads(model)
    for attn in _attentions(model):
        assert mapped[attn.q_proj] == mapped[attn.k_proj] == mapped[attn.v_proj] == 4
    config = PruneConfig(0.5, prune_num_heads=heads, head_pruning_ratio=0.5 if heads else 0.0)
    result = prune(model, torch.randn(1, 3, 32, 32), config)
    pruned = [a for a in _attentions(result.model) if a.q_proj.out_features < 64]
    if heads:  # EVA reshapes its attention output to the input width: whole heads cannot go, and the engine says so
        assert not pruned and result.outcome.left_whole
        assert all("EvaAttention" in w.reason for w in result.outcome.left_whole)
        return
    assert len(pruned) == 2
    embedding = _kept_rows(model.patch_embed.proj.weight, result.model.patch_embed.proj.weight)  # the residual stream
    for before, after in zip(_attentions(model), pruned, strict=True):
        assert after.num_heads * after.head_dim == after.q_proj.out_features == 32
        for projection in ("q_proj", "k_proj", "v_proj"):
            kept = _kept_rows(getattr(before, projection).weight[:, embedding], getattr(after, projection).weight)
            per_head = {frozenset(k % 16 for k in kept if k // 16 == head) for head in range(4)}
            assert len(per_head) == 1, f"{projection}: heads kept different positions {sorted(map(sorted, per_head))}"
    assert exp.shape_violations(result.outcome) == [] and skipped_groups(result.outcome) == []

"""Group accounting: a group torch-pruning offers and silently skips fails the case, naming it.

The scratch model is the one from the issue that found the gap: a CNN stem,
a residual stream with a learnable per-channel scale (an unwrapped parameter),
a LayerNorm, a self-attention with *separate* q, k, v projections and an
output projection, and a classifier. Given ``num_heads`` for q/k/v, stock
torch-pruning 1.6 offers two groups and prunes one: the re-rooted attention
group takes the local ranking scope of ``attn.out``, which the residual group
already holds, so the residual stream stays at full width. These tests pin
that skip in torch-pruning itself, and that the plugin fails the case on it.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
tp = pytest.importorskip("torch_pruning")
nn = torch.nn

from pytest_tprune import ModelSpec  # noqa: E402
from pytest_tprune.checks.accounting import ACCOUNT_KEYS, group_accounting, skipped_groups  # noqa: E402
from pytest_tprune.checks.case import CaseSettings, TpruneCase  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import timm_spec  # noqa: E402
from pytest_tprune.engine.pruning import prune  # noqa: E402
from pytest_tprune.errors import CheckFailed  # noqa: E402

SCRATCH_MODEL = """
import torch
from torch import nn


class SeparateQKV(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out(y)


class ScratchNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, dim, 4, 4), nn.BatchNorm2d(dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = SeparateQKV(dim, heads)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.bn(self.stem(x)).flatten(2).transpose(1, 2) * self.scale
        x = x + self.attn(self.norm(x))
        return self.head(x.mean(1))
"""


def scratch_module() -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(SCRATCH_MODEL, "scratch_model.py", "exec"), namespace)
    return namespace


def scratch_spec(heads: bool) -> ModelSpec:
    net = scratch_module()["ScratchNet"]
    return ModelSpec(
        "scratch_attention" if heads else "scratch_attention_noheads",
        net,
        (3, 32, 32),
        num_heads=(lambda m: {m.attn.q: 4, m.attn.k: 4, m.attn.v: 4}) if heads else (lambda m: {}),
        unwrapped_parameters=lambda m: [(m.scale, 0)],
        ignored_layers=lambda m: [m.head],
    )


def stock_prune(heads: bool) -> tuple[int, int, Any]:
    """Stock MetaPruner, no engine: (groups offered, groups yielded, the pruned model)."""
    torch.manual_seed(0)
    model = scratch_module()["ScratchNet"]().eval()
    example = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.head],
        num_heads={model.attn.q: 4, model.attn.k: 4, model.attn.v: 4} if heads else {},
        unwrapped_parameters=[(model.scale, 0)],
    )
    offered = list(
        pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    )
    yielded = 0
    for group in pruner.step(interactive=True):
        group.prune()
        yielded += 1
    model(example)
    return len(offered), yielded, model


def test_stock_torch_pruning_skips_the_residual_group_with_separate_qkv_heads() -> None:
    offered, yielded, model = stock_prune(heads=True)
    assert (offered, yielded) == (2, 1)
    assert model.scale.shape[0] == 32 and model.norm.weight.shape[0] == 32 and model.head.in_features == 32
    offered, yielded, model = stock_prune(heads=False)
    assert (offered, yielded) == (2, 2)
    assert model.scale.shape[0] == 16 and model.norm.weight.shape[0] == 16 and model.head.in_features == 16


def test_the_ledger_names_the_skipped_residual_group() -> None:
    outcome = prune(scratch_spec(heads=True), PruneConfig(0.5), "cpu").outcome
    skipped = skipped_groups(outcome)
    assert [(g.root, g.direction, g.channels) for g in skipped] == [("attn.out", "out", 32)]
    assert {"scale (parameter)", "norm", "head", "stem", "bn"} <= set(skipped[0].members)
    counts = group_accounting(outcome)
    assert counts["skipped"] == 1 and counts["pruned"] == 1 and counts["offered"] == 2
    assert sum(counts[k] for k in ACCOUNT_KEYS if k not in ("offered", "ignored")) == counts["offered"]
    fine = prune(scratch_spec(heads=False), PruneConfig(0.5), "cpu").outcome
    assert skipped_groups(fine) == [] and group_accounting(fine)["pruned"] == 2


def test_a_ratio_that_removes_nothing_is_not_a_skip() -> None:
    outcome = prune(scratch_spec(heads=True), PruneConfig(0.0), "cpu").outcome
    assert skipped_groups(outcome) == []


def test_check_all_fails_the_scratch_project_naming_the_group(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(scratch_model=SCRATCH_MODEL)
    pytester.makeconftest(
        """
        from pytest_tprune import register_model
        from scratch_model import ScratchNet

        @register_model(
            input_size=(3, 32, 32),
            num_heads=lambda m: {m.attn.q: 4, m.attn.k: 4, m.attn.v: 4},
            unwrapped_parameters=lambda m: [(m.scale, 0)],
            ignored_layers=lambda m: [m.head],
        )
        def scratch_attention():
            return ScratchNet()
        """
    )
    pytester.makepyfile(test_scratch="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    result = pytester.runpytest_inprocess(
        "-p",
        "no:xdist",
        "-p",
        "no:cacheprovider",
        "--tprune-ratios=0.5",
        "--tprune-modes=local",
        "--tprune-update-golden",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]groups[]] torch-pruning offered 2 group(s) and silently skipped 1*",
            "*attn.out (out-channels 32, step 1; members: *head*norm*scale (parameter)*): ranked, not yielded*",
        ]
    )
    assert not (pytester.path / "golden" / "scratch_attention").exists(), "a failing case must not write a golden"


def test_a_silently_dropped_group_fails_a_real_model(one_group_dropped: None) -> None:
    case = TpruneCase(timm_spec("test_resnet"), PruneConfig(0.5), CaseSettings(checks=("groups",)))
    expected = r"\[groups\] .*silently skipped 1.*\n  layer4\.0\.downsample\.1 \(out-channels 96, step 1; members: fc, "
    with pytest.raises(CheckFailed, match=expected):
        case.check_all()


def test_every_default_grid_case_accounts_for_all_its_groups() -> None:
    outcome = prune(timm_spec("test_vit"), PruneConfig(0.3, global_pruning=True), "cpu").outcome
    counts = group_accounting(outcome)
    assert counts["skipped"] == 0 and counts["offered"] == len(outcome.offered) > 0 and counts["ignored"] == 1


KNOWN_FAILURE_PROJECT = """
from torch import nn
from pytest_tprune import register_model

@register_model(input_size=(3, 16, 16), ignored_layers=lambda m: [m[-1]], known_failure={cause!r})
def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 4))
"""


@pytest.mark.parametrize(
    ("cause", "outcome"),
    [
        ("[golden] the golden is not written yet", {"xfailed": 1}),
        ("[equivalence] a wrong channel is kept", {"failed": 1}),
        ("a cause that names no check", {"xfailed": 1}),
    ],
    ids=["the-named-check-fails", "another-check-fails", "no-check-named"],
)
def test_a_known_failure_holds_only_for_the_check_it_names(
    pytester: pytest.Pytester, cause: str, outcome: dict[str, int]
) -> None:
    """The case fails its golden check (none is written): a known failure naming ``[golden]`` is that xfail, one
    naming ``[equivalence]`` is not (the case fails, with the golden's message), so a known failure whose check
    started to pass cannot hide a new failure of another check behind the old reason."""
    pytester.makeconftest(KNOWN_FAILURE_PROJECT.format(cause=cause))
    pytester.makepyfile(test_small="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "--tprune-ratios=0.5", "--tprune-modes=local"
    )
    result.assert_outcomes(**outcome)
    if "failed" in outcome:
        result.stdout.fnmatch_lines(
            ["*GoldenCheckFailed: [[]golden[]] golden file *small_cnn*r0.50-local.json is missing*"]
        )

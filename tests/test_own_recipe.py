"""A project's own recipe: its prune function, its pruner arguments, and the public ``prune()``.

The example project (examples/downstream) registers ``acme_attn_l1`` with a
prune function of its own; its goldens and passing checks are covered by
test_downstream.py. Here a deliberate bug in that function fails the check
that guards against it, naming the group or the module, and the engine run
as a library call gives what the suite proved.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

# torch cannot be imported twice in one process: import it before any in-process run does
import timm  # noqa: F401
import torch
import torch_pruning

import pytest_tprune
from pytest_tprune import ModelSpec, PruneConfig, UsageError
from pytest_tprune.checks.case import CaseSettings, TpruneCase
from pytest_tprune.checks.expectations import shape_violations
from pytest_tprune.engine import resources
from pytest_tprune.engine.custom import unobserved_groups
from pytest_tprune.engine.pruning import prune as engine_prune
from pytest_tprune.engine.tp_internals import watch
from pytest_tprune.errors import CheckFailed, PruneStepError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "downstream"  # read here; runs copy it (conftest)
QUIET = ("-p", "no:cacheprovider")


def break_recipe(root: Path, old: str, new: str) -> None:
    source = root / "acmenets" / "tprune_models.py"
    text = source.read_text()
    assert old in text, f"the example's recipe no longer has {old!r}"
    source.write_text(text.replace(old, new))


def failed_ids(result: pytest.RunResult) -> list[str]:
    return sorted(re.findall(r"^FAILED \S+\[(\S+)\]", result.stdout.str(), re.M))


@pytest.mark.usefixtures("isolated")
def test_a_recipe_ignoring_the_config_ratio_fails_the_shape_rule(example: Path, pytester: pytest.Pytester) -> None:
    break_recipe(example, "pruning_ratio=config.ratio,", "pruning_ratio=0.5,")
    result = pytester.runpytest_inprocess(*QUIET, "--tprune-models=acme_attn_l1", "--tprune-modes=local")
    assert failed_ids(result) == ["acme_attn_l1-r0.30-local"]
    result.stdout.fnmatch_lines(["*[[]shapes[]] * group(s) break the shape rule:", "*mlp.0*"])


@pytest.mark.usefixtures("isolated")
def test_a_recipe_that_skips_a_group_it_was_handed_fails_the_group_accounting(
    example: Path, pytester: pytest.Pytester
) -> None:
    break_recipe(
        example,
        "    pruner.step()\n",
        "    for group in pruner.step(interactive=True):\n"
        "        if group[0].dep.target.module is not model.mlp[0]:\n"
        "            group.prune()\n",
    )
    result = pytester.runpytest_inprocess(*QUIET, "--tprune-models=acme_attn_l1", "--tprune-ratios=0.5")
    assert failed_ids(result) == ["acme_attn_l1-r0.50-global", "acme_attn_l1-r0.50-local"]
    result.stdout.fnmatch_lines(["*[[]groups[]] *silently skipped 1*", "*mlp.0 (out-channels 64*: yielded, not pruned"])


@pytest.mark.usefixtures("isolated")
def test_a_recipe_that_forgets_its_attention_attributes_fails_the_forward_naming_the_module(
    example: Path, pytester: pytest.Pytester
) -> None:
    break_recipe(example, "        sync_attention(module)\n", "        pass\n")
    result = pytester.runpytest_inprocess(
        *QUIET, "--tprune-models=acme_attn_l1", "--tprune-ratios=0.5", "--tprune-modes=local"
    )
    assert failed_ids(result) == ["acme_attn_l1-r0.50-local"]
    result.stdout.fnmatch_lines(
        ["*forward failed for acme_attn_l1 in module 'attn': RuntimeError: *after the model's prune function*"]
    )


def _tiny_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def _stock_recipe(model: torch.nn.Module, inputs: torch.Tensor, config: PruneConfig) -> None:
    pruner = torch_pruning.pruner.MetaPruner(
        model, inputs, importance=torch_pruning.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=config.ratio, ignored_layers=[model[6]],
    )  # fmt: skip
    pruner.step()


def test_a_prune_function_is_accounted_like_the_engine() -> None:
    """The same recipe run by the engine and as a project's function prunes the same groups alike."""
    config = PruneConfig(ratio=0.5)
    own = engine_prune(ModelSpec("own", _tiny_cnn, (3, 12, 12), prune_function=_stock_recipe), config, "cpu")
    ours = engine_prune(ModelSpec("own", _tiny_cnn, (3, 12, 12)), config, "cpu")
    assert own.outcome.modules_after == ours.outcome.modules_after
    assert [(g.root, g.channels, g.removed) for g in own.outcome.groups] == [
        (g.root, g.channels, g.removed) for g in ours.outcome.groups
    ]
    assert [(e.root, e.fate) for e in own.outcome.offered] == [(e.root, e.fate) for e in ours.outcome.offered]
    assert own.outcome.recipe == {"prune_function": f"{__name__}._stock_recipe", "pruners_watched": 1}


def test_groups_the_watch_cannot_see_fail_the_group_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning internals moved (no MetaPruner._prune to wrap): the groups check says so, not a pass."""
    monkeypatch.setattr(watch, "_meta_pruner", lambda: None)
    resources.STORE.clear()
    spec = ModelSpec("unseen", _tiny_cnn, (3, 12, 12), prune_function=_stock_recipe)
    case = TpruneCase(spec, PruneConfig(), CaseSettings())
    assert unobserved_groups(case.outcome.recipe)
    with pytest.raises(CheckFailed, match=r"\[groups\] the installed torch-pruning lacks MetaPruner.__init__ or "):
        case.check_groups()
    case.check_forward()  # the function itself ran: only the accounting is missing
    resources.STORE.clear()


def test_a_prune_function_returning_no_model_is_a_clear_prune_failure() -> None:
    spec = ModelSpec("own", _tiny_cnn, (3, 12, 12), prune_function=lambda m, x, c: "done")
    with pytest.raises(PruneStepError, match=r"returned str: return the pruned nn.Module \(or None when"):
        engine_prune(spec, PruneConfig(), "cpu")


def test_pruner_arguments_override_the_recipe_and_the_golden_says_so() -> None:
    spec = ModelSpec("own", _tiny_cnn, (3, 12, 12), pruner_arguments=lambda m: {"round_to": 8})
    outcome = engine_prune(spec, PruneConfig(ratio=0.3), "cpu").outcome
    assert outcome.recipe == {"pruner_arguments": {"round_to": 8}}
    assert outcome.prune_config.round_to == 8  # the shape rule checks what ran
    # kept counts are floored to multiples of 8: 16 * 0.7 -> 8, 32 * 0.7 -> 16 (without round_to: 12 and 23)
    assert outcome.modules_after["3"] == "Conv2d(8, 16, kernel_size=(3, 3), stride=(1, 1))"
    assert shape_violations(outcome) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"round_too": 8}, r"its pruner_arguments names round_too, which the installed torch_pruning MetaPruner "),
        ({"pruning_ratio": 0.9}, r"sets pruning_ratio, which each case's config sets: select them with --tprune-"),
    ],
)
def test_wrong_pruner_arguments_say_what_to_use(arguments: dict[str, object], message: str) -> None:
    spec = ModelSpec("own", _tiny_cnn, (3, 12, 12), pruner_arguments=lambda m: arguments)
    with pytest.raises(PruneStepError, match=message):
        engine_prune(spec, PruneConfig(), "cpu")


@pytest.mark.usefixtures("isolated")
def test_public_prune_gives_what_the_suite_proved_and_leaves_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's acme_attn, pruned by the library call, has the modules of its committed golden."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        from acmenets import models as acme_models
        from acmenets import tprune_models as acme_specs
    finally:  # in-process runs of the copied example must import their own acmenets, not this one
        for name in [n for n in sys.modules if n == "acmenets" or n.startswith("acmenets.")]:
            del sys.modules[name]

    torch.manual_seed(0)
    model = acme_models.AcmeAttnNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attention = [m for m in model.modules() if isinstance(m, acme_models.AcmeAttention)]
    pruned, outcome = pytest_tprune.prune(
        model,
        torch.randn(1, 3, 32, 32),
        PruneConfig(ratio=0.5),
        ignored_layers=[model.head],
        num_heads={m.qkv: m.num_heads for m in attention},
        unwrapped_parameters=[(model.pos_embed, 2)],
        adapters={acme_models.AcmeAttention: acme_specs.sync_attention},
    )
    golden = json.loads((EXAMPLE / "golden" / "acme_attn" / "r0.50-local.json").read_text())
    assert outcome.modules_after == golden["modules"]
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched


def test_public_prune_rejects_modules_of_another_model() -> None:
    model, other = _tiny_cnn(), _tiny_cnn()
    with pytest.raises(UsageError, match=r"ignored_layers / num_heads names a Linear that is not part of the model"):
        pytest_tprune.prune(model, torch.randn(1, 3, 12, 12), ignored_layers=[other[6]])
    with pytest.raises(UsageError, match=r"example_inputs as a tensor with a batch dimension"):
        pytest_tprune.prune(model, [1, 2, 3])  # type: ignore[arg-type]

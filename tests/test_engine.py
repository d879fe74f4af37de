"""The pruning engine on its own, without pytest's plugin: adapters, determinism, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.models import ModelSpec, build_model, check_timm_name, timm_input_size, timm_spec
from pytest_tprune.engine.pruning import prune
from pytest_tprune.engine.recipe import classifier_layers, resolve_device
from pytest_tprune.errors import PruneStepError, UsageError


def test_vit_prunes_head_dims_and_adapter_updates_attention() -> None:
    result = prune(timm_spec("test_vit"), PruneConfig(0.5), device="cpu")
    attn = result.model.blocks[0].attn
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert attn.attn_dim == attn.num_heads * attn.head_dim
    out = result.outcome
    assert out.output_shape_after == out.output_shape_before == [1, 1000]
    assert out.params_after < out.params_before and out.flop_macs_after < out.flop_macs_before
    assert "head" in out.ignored
    assert out.modules_after["head"].startswith("Linear(") and "out_features=1000" in out.modules_after["head"]


def test_convnext_layer_scale_is_pruned_as_unwrapped_parameter() -> None:
    result = prune(timm_spec("test_convnext"), PruneConfig(0.5), device="cpu")
    out = result.outcome
    assert any("Unwrapped parameters" in w for w in out.warnings)
    gammas = {k: v for k, v in out.shapes_after.items() if k.endswith("gamma")}
    assert gammas and all(shape[0] == out.shapes_before[name][0] // 2 for name, shape in gammas.items())
    assert out.output_shape_after == out.output_shape_before


def test_two_builds_give_identical_weights() -> None:
    spec = timm_spec("test_resnet")
    first, second = build_model(spec, 0), build_model(spec, 0)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = build_model(spec, 1)
    assert not torch.equal(next(iter(other.parameters())), next(iter(first.parameters())))


def test_repeated_pruning_in_one_process_gives_identical_outcomes() -> None:
    """torch-pruning mutates its default dicts: results must not depend on order."""
    spec = timm_spec("test_vit")
    outcomes = [prune(spec, PruneConfig(0.3), device="cpu").outcome for _ in range(2)]
    a, b = (o.to_dict() for o in outcomes)
    a.pop("timings"), b.pop("timings")
    assert a == b


def test_classifier_found_through_get_classifier() -> None:
    model = build_model(timm_spec("test_convnext"), 0)
    assert classifier_layers(model) == [model.get_classifier()]


def test_input_cap_respects_fixed_input_size() -> None:
    assert timm_input_size("vit_base_patch32_224", cap=64) == (3, 224, 224)
    assert timm_input_size("resnet50", cap=64) == (3, 64, 64)


def test_input_cap_keeps_a_model_on_the_grid_its_minimum_size_declares() -> None:
    """deepseek_vit_412m (546 px default, 126 px minimum, patches of 14) rejects 160 px; the cap gives 126."""
    assert timm_input_size("deepseek_vit_412m", cap=160) == (3, 126, 126)
    assert timm_input_size("sam2_hiera_tiny", cap=160) == (3, 224, 224)  # never below the minimum
    assert timm_input_size("nasnetalarge", cap=160) == (3, 160, 160)  # no minimum: the cap as given


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UsageError, match=r"did you mean: .*vit_base_patch32_224"):
        check_timm_name("vit_base_patch32_22")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


class _StaleReshape(nn.Module):
    """Reads a width fixed at build time: breaks after pruning without an adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.width = 8
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return self.fc(y.reshape(-1, self.width))


def _stale_spec(**options: object) -> ModelSpec:
    return ModelSpec("stale", _StaleReshape, (3, 8, 8), source="downstream", **options)  # type: ignore[arg-type]


def test_forward_failure_names_step_and_module() -> None:
    with pytest.raises(PruneStepError) as info:
        prune(_stale_spec(), PruneConfig(0.5), device="cpu")
    assert info.value.step == "forward"
    assert "forward failed for stale in module '<root>'" in str(info.value)


def test_adapter_registered_on_the_spec_fixes_the_stale_size() -> None:
    def fix(module: nn.Module) -> None:
        module.width = module.conv.out_channels

    result = prune(_stale_spec(adapters={_StaleReshape: fix}), PruneConfig(0.5), device="cpu")
    assert result.model.width == 4 and "" in result.outcome.adapted


def test_ratio_zero_changes_nothing() -> None:
    out = prune(timm_spec("test_resnet"), PruneConfig(0.0), device="cpu").outcome
    assert out.shapes_after == out.shapes_before and out.params_after == out.params_before

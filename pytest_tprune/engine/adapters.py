"""Post-pruning fix-ups: update the attributes a pruned module's forward reads.

torch-pruning shrinks weights but leaves plain Python attributes alone, so a
module whose ``forward`` reshapes with ``self.head_dim`` or views with
``self.shape`` breaks after pruning. An adapter is a small function registered
for a module type that recomputes such attributes from the pruned weights.

Adapters are kept in a :class:`~pytest_tprune.engine.registry.TypeRegistry`,
whose lookup rule (the most specific class of the module's MRO) custom pruners
share.

Head counts are the one attribute the pruned weights cannot tell: 576 ``qkv``
channels are 6 heads of 32 or 12 heads of 16, and only torch-pruning knows
which. With ``prune_num_heads`` it lowers the counts in its ``num_heads`` dict
(per projection) as it removes heads, so :func:`sync_head_counts` copies them
onto the attention modules before the adapters recompute the head widths, and
:func:`head_count_problems` checks the result: a module left at the old count
still runs its forward (12 heads of 16) but computes another function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from pytest_tprune.engine.registry import TypeRegistry, type_key, unmatched_keys

if TYPE_CHECKING:
    from torch import nn

Adapter = Callable[["nn.Module"], None]

ADAPTERS: TypeRegistry[Adapter] = TypeRegistry()


def register_adapter(*types: type | str) -> Callable[[Adapter], Adapter]:
    """Decorator: ``@register_adapter(MyAttention)`` on ``def fix(module): ...``."""
    return ADAPTERS.register(*types)


def apply_adapters(
    model: nn.Module,
    extra: Mapping[type | str, Adapter] | None = None,
    heads: Mapping[nn.Module, int] | None = None,
) -> list[str]:
    """Run every applicable adapter (``extra``: a model's own, by class or path); returns the modules adapted.

    ``heads`` is the pruner's ``num_heads`` after pruning: the head counts are set from it first
    (:func:`sync_head_counts`), because the adapters derive every head width from the count.
    """
    if heads:
        sync_head_counts(model, heads)
    own = {type_key(cls): fn for cls, fn in (extra or {}).items()}
    adapted = []
    for name, module in model.named_modules():
        adapter = ADAPTERS.lookup(type(module), own)
        if adapter is not None:
            adapter(module)
            adapted.append(name)
    return adapted


def unused_adapter_types(model: nn.Module, keys: Iterable[str]) -> list[str]:
    """Registered keys that match no module of ``model`` (a likely typo downstream)."""
    return unmatched_keys({type(m) for m in model.modules()}, keys)


def _out_features(layer: object) -> int | None:
    if hasattr(layer, "out_features"):
        return int(layer.out_features)
    if hasattr(layer, "out_channels"):
        return int(layer.out_channels)
    return None


def attention_width(module: nn.Module) -> int | None:
    """Width of the query projection (heads x head dim), whatever the layout.

    Fused ``qkv`` holds q, k and v stacked; separate ``q`` holds q alone.
    """
    qkv = _out_features(getattr(module, "qkv", None))
    if qkv is not None:
        return qkv // 3
    for name in ("q", "q_proj", "query"):
        width = _out_features(getattr(module, name, None))
        if width is not None:
            return width
    return None


QUERY_PROJECTIONS = ("qkv", "q", "q_proj")
"""Attributes of an attention module holding the projection whose head count is ``num_heads`` (``q_proj``:
timm's EVA attention built with ``qkv_fused=False``, as the eva02 models are)."""
KV_PROJECTIONS = ("k", "v", "kv", "k_proj", "v_proj")
"""Attributes holding the projections whose head count is ``num_kv_heads`` (grouped-query attention)."""


def attention_projections(module: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(projection attribute, head-count attribute, projection)`` of an attention module, in that order."""
    found = []
    for names, count in ((QUERY_PROJECTIONS, "num_heads"), (KV_PROJECTIONS, "num_kv_heads")):
        for name in names:
            layer = getattr(module, name, None)
            if layer is not None and _out_features(layer) is not None:
                found.append((name, count, layer))
    return found


def _head_count(module: nn.Module, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def sync_head_counts(model: nn.Module, heads: Mapping[nn.Module, int]) -> list[str]:
    """Set each attention module's ``num_heads`` (``num_kv_heads``) to torch-pruning's count for its projection.

    Changes nothing unless heads were removed; returns the modules whose count changed.
    """
    changed = []
    for name, module in model.named_modules():
        for projection, attr, layer in attention_projections(module):
            current, left = _head_count(module, attr), heads.get(layer)
            if current is None or not isinstance(left, int) or left == current:
                continue
            if projection == "qkv" and _head_count(module, "num_kv_heads") == current:
                setattr(module, "num_kv_heads", int(left))  # noqa: B010 - a fused qkv has as many k/v heads as q
            setattr(module, attr, int(left))
            changed.append(name)
    return sorted(set(changed))


def head_count_problems(model: nn.Module, heads: Mapping[nn.Module, int]) -> list[tuple[str, str]]:
    """``(module, problem)`` for every attention module whose heads disagree with the pruner's ``heads``.

    Run after the adapters: each head count must be torch-pruning's, and the
    query width must be ``num_heads x head_dim``. Either mistake leaves a
    forward that runs (the reshape only needs the product) but splits the
    channels into the wrong heads, so no later check would notice it.
    """
    problems = []
    for name, module in model.named_modules():
        known = [(attr, count, layer) for attr, count, layer in attention_projections(module) if layer in heads]
        for attr, count, layer in known:
            current, left = _head_count(module, count), heads[layer]
            if current is not None and current != left:
                problems.append((name, f"{count} is {current} but torch-pruning left {left} on '{name}.{attr}'"))
        head_dim, width = getattr(module, "head_dim", None), attention_width(module)
        count_now = _head_count(module, "num_heads")
        if known and isinstance(head_dim, int) and width is not None and count_now and head_dim * count_now != width:
            problems.append((name, f"head_dim {head_dim} x num_heads {count_now} != query width {width}"))
    return problems


def sync_head_attributes(module: nn.Module) -> None:
    """Recompute ``head_dim``/``attn_dim``/``kv_dim`` from the pruned projections.

    ``num_heads`` is read, not derived: the widths alone cannot tell heads
    from head dimensions, so after head pruning it must already hold
    torch-pruning's count (:func:`sync_head_counts`). ``scale`` is kept on
    purpose: it is a constant of the trained function, and keeping it is what
    makes a pruned model equal to its soft-pruned original.
    """
    width = attention_width(module)
    heads = getattr(module, "num_heads", None)
    if width is None or not isinstance(heads, int) or heads <= 0:
        return
    head_dim = width // heads
    setattr(module, "head_dim", head_dim)  # noqa: B010 - plain attributes, not submodules
    if hasattr(module, "attn_dim"):
        setattr(module, "attn_dim", head_dim * heads)  # noqa: B010
    kv_heads = getattr(module, "num_kv_heads", None)
    if hasattr(module, "kv_dim") and isinstance(kv_heads, int):
        setattr(module, "kv_dim", head_dim * kv_heads)  # noqa: B010


def sync_scale_shape(module: nn.Module) -> None:
    """MetaFormer ``Scale`` views its vector with a stored ``shape``."""
    scale = getattr(module, "scale", None)
    shape = getattr(module, "shape", None)
    if scale is None or not isinstance(shape, tuple) or not shape:
        return
    setattr(module, "shape", (int(scale.numel()), *shape[1:]))  # noqa: B010


def sync_norm_shape(module: nn.Module) -> None:
    """LayerNorm subclasses and RMS norms keep ``normalized_shape`` for their forward.

    torch-pruning updates it only for exact ``nn.LayerNorm``; timm's subclasses
    (``LayerNorm``, ``LayerNorm2d``) and ``RmsNorm`` keep the old size.
    """
    weight = getattr(module, "weight", None)
    shape = getattr(module, "normalized_shape", None)
    if weight is None or not isinstance(shape, (tuple, list)) or not shape:
        return
    setattr(module, "normalized_shape", (*tuple(shape)[:-1], int(weight.shape[-1])))  # noqa: B010


def sync_conv_channels(module: nn.Module) -> None:
    """Convolution subclasses whose forward reads ``out_channels`` (timm's ScaledStdConv2d)."""
    weight = getattr(module, "weight", None)
    groups = getattr(module, "groups", 1)
    if weight is None or weight.dim() < 3 or getattr(module, "transposed", False):
        return
    setattr(module, "out_channels", int(weight.shape[0]))  # noqa: B010
    setattr(module, "in_channels", int(weight.shape[1]) * int(groups))  # noqa: B010


def sync_anti_alias_filter(module: nn.Module) -> None:
    """timm's ``ConvNormAct`` with a ``BlurPool2d`` (``aa``) after its conv: the blur keeps a
    per-channel filter buffer and a ``channels`` count sized at build time.

    The buffer is one fixed blur kernel repeated for every channel, and the
    blur is depthwise, so the pruned layer keeps the first ``n`` rows: the same
    kernel for the surviving channels, whichever they are.
    """
    aa, conv = getattr(module, "aa", None), getattr(module, "conv", None)
    filt, weight = getattr(aa, "filt", None), getattr(conv, "weight", None)
    if aa is None or filt is None or weight is None or getattr(aa, "channels", None) is None:
        return
    channels = int(weight.shape[0])
    if channels < int(filt.shape[0]):
        aa.filt = filt[:channels].clone()
        aa.channels = channels


def clear_attention_bias_cache(module: nn.Module) -> None:
    """Attention with a learned position bias caches ``attention_biases[:, idxs]`` per device.

    The cache is filled by any eval-mode forward, including torch-pruning's
    trace, so after pruning it holds the unpruned bias (the old head width) as
    a non-leaf tensor: the next forward uses the stale bias and ``deepcopy``
    of the model fails. timm clears it in ``train()``; we clear it here.
    """
    if isinstance(getattr(module, "attention_bias_cache", None), dict):
        setattr(module, "attention_bias_cache", {})  # noqa: B010


register_adapter(
    "timm.models.efficientformer.Attention",
    "timm.models.efficientformer_v2.Attention2d",
    "timm.models.efficientformer_v2.Attention2dDownsample",
    "timm.models.efficientvit_msra.CascadedGroupAttention",
    "timm.models.levit.Attention",
    "timm.models.levit.AttentionDownsample",
    "timm.models.tiny_vit.Attention",
)(clear_attention_bias_cache)
register_adapter("timm.layers.conv_bn_act.ConvNormAct")(sync_anti_alias_filter)
register_adapter("torch.nn.modules.conv._ConvNd")(sync_conv_channels)
register_adapter(
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.normalization.RMSNorm",
    "timm.layers.norm.RmsNorm",
    "timm.layers.norm.RmsNorm2d",
    "timm.layers.norm.SimpleNorm",
    "timm.layers.norm.SimpleNorm2d",
)(sync_norm_shape)
register_adapter(
    "timm.layers.attention.Attention",
    "timm.layers.attention.AttentionRope",
    "timm.models.vision_transformer.Attention",
    "timm.layers.attention_pool.AttentionPoolLatent",
    "timm.models.eva.EvaAttention",
    "timm.models.pvt_v2.Attention",
)(sync_head_attributes)
register_adapter("timm.models.metaformer.Scale")(sync_scale_shape)

"""What a prune produces, as plain data and as the live result.

:class:`PruneOutcome` is what every check reads and what goldens, reports and
xdist carry (a dataclass of plain values); :class:`Pruned` adds the live pruned
model and tensors a check needs but a file cannot hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.config import PruneConfig
from pytest_tprune.engine.left_whole import LeftWhole
from pytest_tprune.engine.tp_internals.ledger import OfferedGroup

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class GroupRecord:
    """What one pruned dependency group removed: enough to check the shape rule."""

    root: str
    direction: str  # "out" or "in": which dimension of the root was pruned
    channels: int  # channels of the root's pruned dimension before this group was pruned
    channel_groups: int  # torch-pruning's channel grouping (heads, group convs)
    removed: int
    members: list[str] = field(default_factory=list)
    step: int = 1
    heads: int = 0
    """Attention heads of the group's query projection before this group was pruned (0: no attention)."""
    kv_heads: int = 0
    """The smallest head count among its projections: below ``heads`` for grouped-query attention."""
    heads_removed: int = 0
    """Whole heads torch-pruning removed with this group (``prune_num_heads``)."""


@dataclass
class PruneOutcome:
    """Everything a check needs about one pruned case, as plain data."""

    model: str
    config: dict[str, Any]
    device: str
    input_size: list[int]
    modules_before: dict[str, str]
    modules_after: dict[str, str]
    shapes_before: dict[str, list[int]]
    shapes_after: dict[str, list[int]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    flop_macs_before: int
    flop_macs_after: int
    output_shape_before: list[int]
    output_shape_after: list[int]
    ignored: list[str]
    heads: dict[str, int]
    groups: list[GroupRecord]
    left_whole: list[LeftWhole]
    """Groups torch-pruning could not prune consistently, left unpruned (see :mod:`pytest_tprune.engine.left_whole`)."""
    adapted: list[str]
    warnings: list[str]
    timings: dict[str, float]
    offered: list[OfferedGroup] = field(default_factory=list)
    """Every group torch-pruning offered, by step, with its fate (:mod:`pytest_tprune.engine.tp_internals.ledger`)."""
    ignored_groups: int = 0
    """Groups never offered because an ignored layer is among their outputs."""
    attention: dict[str, list[int]] = field(default_factory=dict)
    """With head pruning: each attention module's ``[heads before, heads after, head_dim after]``
    (:func:`attention_after`), read from the attributes its forward uses."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """What of the recipe is the project's own: its ``pruner_arguments`` (described) or its
    ``prune_function`` (:mod:`pytest_tprune.engine.custom`). Empty for the seed recipe."""

    @property
    def prune_config(self) -> PruneConfig:
        return PruneConfig.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """What the unpruned model measures: the same for every config of a model, seed and device.

    Measuring it costs two forwards (one summing FLOP formulas, one traced by
    torch-pruning's counter), so a caller that prunes one model with several
    configs measures it once and passes it to :func:`prune`.
    """

    key: tuple[str, int, str]  # model, seed, device
    tree: str
    modules: dict[str, str]
    shapes: dict[str, list[int]]
    output: torch.Tensor
    flop_macs: int
    macs: int
    params: int


@dataclass
class Pruned:
    """The live result: the pruned model and what it takes to check it."""

    model: nn.Module
    inputs: torch.Tensor
    outcome: PruneOutcome
    baseline: Baseline
    output: torch.Tensor
    """The pruned model's eval output on ``inputs`` (from the counting pass, so checks need not rerun it)."""

    @property
    def base_output(self) -> torch.Tensor:
        """The unpruned model's eval output on ``inputs``."""
        return self.baseline.output

    @property
    def tree_before(self) -> str:
        return self.baseline.tree

    @property
    def tree_after(self) -> str:
        """The pruned model's repr, made on demand: only the command line prints it."""
        return repr(self.model)


def module_lines(model: nn.Module) -> dict[str, str]:
    """One seed-style line per module holding tensors: ``Linear(in_features=..)``."""
    lines = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            lines[name] = f"{type(module).__name__}({module.extra_repr()})"
    return lines


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shapes of every parameter and floating buffer: catches what a repr omits."""
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    shapes.update({name: list(b.shape) for name, b in model.named_buffers() if b.is_floating_point()})
    return dict(sorted(shapes.items()))


def attention_after(model: nn.Module, heads_before: dict[str, int]) -> dict[str, list[int]]:
    """``{attention module: [heads before, heads after, head_dim after]}`` for every projection in ``heads_before``.

    Attention modules hold no tensors of their own, so neither the module lines
    nor the shapes show how many heads are left: this does, from the attributes
    the module's forward reshapes with (``num_heads``, ``head_dim``; 0 when absent).
    """
    found: dict[str, list[int]] = {}
    for projection, before in sorted(heads_before.items()):
        parent = projection.rsplit(".", 1)[0] if "." in projection else ""
        try:
            module = model.get_submodule(parent)
        except AttributeError:
            continue
        count, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
        if isinstance(count, int):
            found.setdefault(parent, [int(before), count, head_dim if isinstance(head_dim, int) else 0])
    return found

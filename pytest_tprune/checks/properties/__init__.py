"""Properties every correct prune satisfies, as checks that return the problems they find.

The golden and shape checks of :mod:`pytest_tprune.checks.case` pin what one config
does to one model. The checks here state what *any* config must do, so that
Hypothesis can search the config space for a counterexample
(``tests/test_properties.py``; the catalogue and its limits are in
``docs/properties.md``). Each check returns a list of problems, each naming the
dependency group (by its root layer) or the layer at fault, and an empty list
when the property holds.

Two tools make the checks sharp:

* :func:`perturb` makes every channel of a freshly initialised model
  distinguishable. Fresh timm inits leave many tensors constant across
  channels (BatchNorm statistics 0/1, norm weights 1, biases 0, layer-scale
  constants), and then keeping the wrong channel of such a tensor changes
  nothing observable, so a checker comparing outputs cannot see the error.
* :func:`record_prune` runs the engine itself with an observer, recording,
  for every pruned group, the root layer, the indices removed from every
  member (in the member's current numbering and in the unpruned model's)
  and the importance of each channel under an independently built criterion,
  taken at the moment torch-pruning ranks the group. That is what the
  criterion, ``round_to`` and functional-equivalence checks are computed from.

Functional equivalence (:func:`equivalence_report`) compares the pruned model
with *soft pruning*: the unpruned model with the removed slices of every
parameter of each group set to zero. Removing a channel and zeroing every weight
that produces or consumes it compute the same function wherever a channel only
ever meets per-channel operations, so the two must agree up to float rounding.
It does not hold, and is not checked, for groups that touch

* a norm whose statistics span the pruned channels (LayerNorm, LayerNorm2d,
  GroupNorm, RmsNorm, ...): removing a channel changes the mean and variance
  of the others, zeroing it does not remove it from the statistics;
* a weight-standardised convolution (timm's ``ScaledStdConv2d``) pruned along
  its input channels: the standardisation statistics span them;
* attention head dims while timm's fused attention is on:
  ``F.scaled_dot_product_attention`` scales by ``1/sqrt(head_dim)`` of the
  pruned tensor and ignores the module's ``scale`` that the engine keeps, so
  pruning changes the softmax temperature. The check therefore turns fused
  attention off on both models (timm's manual path multiplies by ``scale``),
  which makes head-dim groups checkable;
* a layer type with no soft-pruning rule here (it is reported, not guessed).

Heavy imports (torch, torch-pruning, timm) happen inside the functions so that
importing this module, e.g. from a conftest, stays cheap.
"""

from __future__ import annotations

from pytest_tprune.checks.properties.equivalence import (
    EQUIVALENCE_TOLERANCE,
    EquivalenceReport,
    equivalence_report,
    soft_prune,
)
from pytest_tprune.checks.properties.perturb import PERTURB_FLOOR, PERTURB_SCALE, perturb, unfuse_attention
from pytest_tprune.checks.properties.problems import (
    TIE_TOLERANCE,
    SizeFigures,
    criterion_problems,
    determinism_problems,
    format_problems,
    forward_problems,
    layer_monotonicity_problems,
    monotonicity_problems,
    ratio_zero_problems,
    round_to_problems,
    same_model_problems,
)
from pytest_tprune.checks.properties.recorder import (
    DETERMINISTIC_IMPORTANCES,
    GroupTrace,
    MemberTrace,
    RecordedPrune,
    RefusedGroup,
    record_prune,
    reference_importance,
)
from pytest_tprune.checks.properties.rules import WIDTH_COUPLED_ATTENTION
from pytest_tprune.checks.properties.saving import SAVE_PATHS, SaveLoad, save_load_problems, save_load_round_trips

__all__ = [
    "DETERMINISTIC_IMPORTANCES",
    "EQUIVALENCE_TOLERANCE",
    "PERTURB_FLOOR",
    "PERTURB_SCALE",
    "SAVE_PATHS",
    "TIE_TOLERANCE",
    "WIDTH_COUPLED_ATTENTION",
    "EquivalenceReport",
    "GroupTrace",
    "MemberTrace",
    "RecordedPrune",
    "RefusedGroup",
    "SaveLoad",
    "SizeFigures",
    "criterion_problems",
    "determinism_problems",
    "equivalence_report",
    "format_problems",
    "forward_problems",
    "layer_monotonicity_problems",
    "monotonicity_problems",
    "perturb",
    "ratio_zero_problems",
    "record_prune",
    "reference_importance",
    "round_to_problems",
    "same_model_problems",
    "save_load_problems",
    "save_load_round_trips",
    "soft_prune",
    "unfuse_attention",
]

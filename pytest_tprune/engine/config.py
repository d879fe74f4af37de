"""Pruning configurations and the parsing of the plain strings that carry them.

Configs are frozen dataclasses so that a case can be hashed, sorted and sent to
an xdist worker as text; ``config_id`` is the readable name used in test ids and
golden file names (``r0.50-local``), with a suffix only for non-default knobs so
the common ids stay short. The same goes for :meth:`PruneConfig.to_dict`: the
knobs added after the first goldens were written (head pruning, the per-layer
cap) appear only when set, so every existing golden keeps its dict and its id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pytest_tprune.errors import UsageError

MAGNITUDE_IMPORTANCES = ("l2", "l1", "lamp", "fpgm", "random")
"""Criteria that read only the weights; ``l2`` is the seed's ``GroupNormImportance``."""
GRADIENT_IMPORTANCES = ("taylor", "hessian")
"""Criteria that read gradients: the engine backpropagates a seeded batch's loss before each step
(:mod:`pytest_tprune.engine.gradients`), so a case replays exactly."""
IMPORTANCES = MAGNITUDE_IMPORTANCES + GRADIENT_IMPORTANCES

MODES = ("local", "global")
DEFAULT_SEED = 0


@dataclass(frozen=True, order=True)
class PruneConfig:
    """One pruning configuration: everything torch-pruning is told besides the model."""

    ratio: float = 0.5
    global_pruning: bool = False
    importance: str = "l2"
    round_to: int | None = None
    iterative_steps: int = 1
    isomorphic: bool = False
    # Added later: emitted by to_dict/config_id only when not at their defaults (see LATER_DEFAULTS).
    prune_num_heads: bool = False
    head_pruning_ratio: float = 0.0
    max_pruning_ratio: float = 1.0

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        if self.importance not in IMPORTANCES:
            raise UsageError(f"unknown importance '{self.importance}': use one of {', '.join(IMPORTANCES)}")
        if self.round_to is not None and self.round_to < 1:
            raise UsageError(f"round_to must be a positive integer or None, got {self.round_to}")
        if self.iterative_steps < 1:
            raise UsageError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
        if self.isomorphic and not self.global_pruning:
            raise UsageError("isomorphic pruning needs global pruning: add global_pruning=True")
        check_head_pruning(self.prune_num_heads, self.head_pruning_ratio)
        check_max_ratio(self.max_pruning_ratio)

    @property
    def mode(self) -> str:
        return "global" if self.global_pruning else "local"

    @property
    def config_id(self) -> str:
        """Readable, unique, filesystem-safe id: ``r0.30-global-l1-round8-steps2-iso-heads0.50-max0.80``.

        Each suffix appears only off its default, so the ids of existing goldens never change.
        """
        parts = [f"r{self.ratio:.2f}", self.mode]
        if self.importance != "l2":
            parts.append(self.importance)
        if self.round_to is not None:
            parts.append(f"round{self.round_to}")
        if self.iterative_steps != 1:
            parts.append(f"steps{self.iterative_steps}")
        if self.isomorphic:
            parts.append("iso")
        if self.prune_num_heads:
            parts.append(f"heads{ratio_text(self.head_pruning_ratio)}")
        if self.max_pruning_ratio != 1.0:
            parts.append(f"max{ratio_text(self.max_pruning_ratio)}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Every field, except the later knobs at their defaults: existing goldens store this dict verbatim."""
        data = asdict(self)
        for name, default in LATER_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        return cls(**data)

    def cli_args(self) -> list[str]:
        """The ``tprune`` arguments that reproduce this config from a shell."""
        args = ["--pruning_ratio", repr(self.ratio)]
        if self.global_pruning:
            args.append("--global_pruning")
        if self.importance != "l2":
            args += ["--importance", self.importance]
        if self.round_to is not None:
            args += ["--round_to", str(self.round_to)]
        if self.iterative_steps != 1:
            args += ["--iterative_steps", str(self.iterative_steps)]
        if self.isomorphic:
            args.append("--isomorphic")
        if self.prune_num_heads:
            args += ["--prune_num_heads", "--head_pruning_ratio", repr(self.head_pruning_ratio)]
        if self.max_pruning_ratio != 1.0:
            args += ["--max_pruning_ratio", repr(self.max_pruning_ratio)]
        return args

    def reproduce_command(self, model: str, seed: int = DEFAULT_SEED, device: str = "cpu") -> str:
        """The ``tprune`` command line that prunes ``model`` with this config, seed and device."""
        return " ".join(["tprune", "--model", model, *self.cli_args(), "--seed", str(seed), "--device", device])


LATER_DEFAULTS: dict[str, Any] = {"prune_num_heads": False, "head_pruning_ratio": 0.0, "max_pruning_ratio": 1.0}
"""Fields added after goldens existed, with their defaults: left out of ``to_dict`` (and ids) when unchanged."""


def ratio_text(value: float) -> str:
    """Two decimals as in ``r0.50``, more only when two would merge distinct values (ids stay unique)."""
    text = f"{value:.2f}"
    return text if float(text) == value else f"{value:.6g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_head_pruning(prune_num_heads: bool, head_ratio: float) -> None:
    """Head pruning needs both knobs: torch-pruning silently ignores either one alone.

    A head ratio without ``prune_num_heads`` removes no head, and
    ``prune_num_heads`` with ratio 0 removes none either, so both are usage
    errors rather than configs that look like head pruning and are not.
    """
    if not isinstance(prune_num_heads, bool):
        raise UsageError(f"prune_num_heads must be True or False, got {prune_num_heads!r}")
    if not _is_number(head_ratio) or not 0.0 <= head_ratio < 1.0:
        raise UsageError(
            f"head pruning ratio must be in [0, 1), got {head_ratio!r}: use e.g. 0.5 to remove half the heads"
        )
    if head_ratio and not prune_num_heads:
        raise UsageError(
            f"head_pruning_ratio={head_ratio:g} removes no heads without prune_num_heads: "
            "add prune_num_heads=True (tprune: --prune_num_heads)"
        )
    if prune_num_heads and not head_ratio:
        raise UsageError(
            "prune_num_heads removes no heads at head_pruning_ratio 0: "
            "give a head ratio in (0, 1), e.g. head_pruning_ratio=0.5 (tprune: --head_pruning_ratio 0.5)"
        )


def check_max_ratio(value: float) -> float:
    """torch-pruning's per-layer cap: in (0, 1], 1 (the default) meaning no cap."""
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise UsageError(f"max pruning ratio must be in (0, 1], got {value!r}: use e.g. 0.8, or 1 for no cap")
    return float(value)


def check_ratio(ratio: float) -> float:
    """Reject ratios torch-pruning cannot honour: 1.0 removes every channel."""
    if not _is_number(ratio):
        raise UsageError(f"pruning ratio must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"pruning ratio must be in [0, 1), got {ratio}: use e.g. 0.5 to remove half the channels")
    return float(ratio)


def split_list(text: str, what: str) -> list[str]:
    """Split a comma-separated option value; empty items are a usage error."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"malformed {what} list {text!r}: give comma-separated values such as 'a,b'")
    return items


def _parse_numbers(text: str, what: str, example: str, check: Callable[[float], object]) -> list[float]:
    """A comma-separated list of numbers, each passed to ``check`` (which raises a UsageError), sorted and
    de-duplicated for stable collection; ``example`` is the hint a non-number gets."""
    values = []
    for item in split_list(text, what):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{what} {item!r} is not a number: give values {example}") from None
        check(value)
        values.append(value)
    return sorted(set(values))


def parse_ratios(text: str) -> list[float]:
    """``"0.3,0.5"`` -> ``[0.3, 0.5]``, sorted and de-duplicated for stable collection."""
    return _parse_numbers(text, "ratio", "in [0, 1) such as '0.3,0.5'", check_ratio)


def parse_modes(text: str) -> list[str]:
    """``"local,global"``; ``both`` is accepted as a shorthand."""
    modes = []
    for item in split_list(text, "mode"):
        chosen = list(MODES) if item == "both" else [item]
        for mode in chosen:
            if mode not in MODES:
                raise UsageError(f"unknown pruning mode {item!r}: use 'local', 'global' or 'local,global'")
            modes.append(mode)
    return [mode for mode in MODES if mode in modes]


def parse_head_ratios(text: str) -> list[float]:
    """``"0.25,0.5"`` -> ``[0.25, 0.5]``: head pruning ratios, each in (0, 1), sorted and de-duplicated."""
    return _parse_numbers(
        text, "head ratio", "in (0, 1) such as '0.25,0.5'", lambda value: check_head_pruning(True, value)
    )

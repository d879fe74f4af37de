"""Pruning configurations and the parsing of the plain strings that carry them.

Configs are frozen dataclasses so that a case can be hashed, sorted and sent to
an xdist worker as text; ``config_id`` is the readable name used in test ids and
golden file names (``r0.50-local``), with a suffix only for non-default knobs so
the common ids stay short.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pytest_tprune.errors import UsageError

IMPORTANCES = ("l2", "l1", "lamp", "fpgm", "random")
"""Deterministic importance criteria; ``l2`` is the seed's ``GroupNormImportance``."""

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

    @property
    def mode(self) -> str:
        return "global" if self.global_pruning else "local"

    @property
    def config_id(self) -> str:
        """Readable, unique, filesystem-safe id: ``r0.30-global-l1-round8-steps2-iso``."""
        parts = [f"r{self.ratio:.2f}", self.mode]
        if self.importance != "l2":
            parts.append(self.importance)
        if self.round_to is not None:
            parts.append(f"round{self.round_to}")
        if self.iterative_steps != 1:
            parts.append(f"steps{self.iterative_steps}")
        if self.isomorphic:
            parts.append("iso")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        return args

    def reproduce_command(self, model: str, seed: int = DEFAULT_SEED, device: str = "cpu") -> str:
        """The ``tprune`` command line that prunes ``model`` with this config, seed and device."""
        return " ".join(["tprune", "--model", model, *self.cli_args(), "--seed", str(seed), "--device", device])


def check_ratio(ratio: float) -> float:
    """Reject ratios torch-pruning cannot honour: 1.0 removes every channel."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or math.isnan(ratio):
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


def parse_ratios(text: str) -> list[float]:
    """``"0.3,0.5"`` -> ``[0.3, 0.5]``, sorted and de-duplicated for stable collection."""
    ratios = []
    for item in split_list(text, "ratio"):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"ratio {item!r} is not a number: give values in [0, 1) such as '0.3,0.5'") from None
        ratios.append(check_ratio(value))
    return sorted(set(ratios))


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

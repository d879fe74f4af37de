"""Configs, ids and the parsing of option values: what users type and read."""

from __future__ import annotations

import pytest

from pytest_tprune.engine.config import PruneConfig, parse_modes, parse_ratios
from pytest_tprune.errors import UsageError


def test_config_ids_are_readable_and_only_name_non_defaults() -> None:
    assert PruneConfig(0.5).config_id == "r0.50-local"
    assert PruneConfig(0.3, global_pruning=True).config_id == "r0.30-global"
    full = PruneConfig(0.3, True, importance="l1", round_to=8, iterative_steps=2, isomorphic=True)
    assert full.config_id == "r0.30-global-l1-round8-steps2-iso"


def test_cli_args_reproduce_the_config() -> None:
    config = PruneConfig(0.25, True, importance="lamp", round_to=4)
    assert config.cli_args() == [
        "--pruning_ratio",
        "0.25",
        "--global_pruning",
        "--importance",
        "lamp",
        "--round_to",
        "4",
    ]


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratios_outside_zero_one_are_rejected_with_the_range(ratio: float) -> None:
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        PruneConfig(ratio)


def test_isomorphic_needs_global() -> None:
    with pytest.raises(UsageError, match="global"):
        PruneConfig(0.5, isomorphic=True)


def test_parse_ratios_sorts_and_deduplicates() -> None:
    assert parse_ratios("0.5, 0.3,0.5") == [0.3, 0.5]


@pytest.mark.parametrize(
    ("text", "message"), [("0.3,,0.5", "malformed"), ("abc", "not a number"), ("1.5", r"\[0, 1\)")]
)
def test_parse_ratios_errors_say_what_to_type(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_ratios(text)


def test_parse_modes() -> None:
    assert parse_modes("global,local") == ["local", "global"]
    assert parse_modes("both") == ["local", "global"]
    with pytest.raises(UsageError, match="unknown pruning mode 'uniform'"):
        parse_modes("uniform")

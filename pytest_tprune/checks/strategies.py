"""Hypothesis strategies for pruning configurations, and the command line that replays one.

``prune_configs()`` draws :class:`~pytest_tprune.engine.config.PruneConfig` values over
every knob the engine exposes: the ratio, uniform (``local``) or global
ranking, the importance criterion, ``round_to``, iterative steps and isomorphic
ranking (only with global ranking, as torch-pruning requires). The draws are
ordered and each one shrinks towards the engine's defaults, so a failure
shrinks to a *minimal* config: the smallest ratio that still fails, uniform
before global, ``l2`` before the other criteria, no rounding before rounding,
one step before several, no isomorphic ranking. Ratios are drawn on a decimal
grid (``0.37``, not ``0.3700000000000001``) so the minimal config reads as it
would be typed, and :func:`reproduce_command` turns it into the ``tprune`` line
that replays it from a shell::

    from hypothesis import given
    from pytest_tprune.checks.strategies import prune_configs, reproduce_command

    @given(config=prune_configs(modes=("local",), importances=("l1", "l2")))
    def test_something(config):
        problems = check(config)
        assert not problems, reproduce_command("test_resnet", config) + "\\n" + "\\n".join(problems)

``random`` importance is seeded by the engine (``--seed``), so it replays too.

Head pruning and the per-layer cap are opt-in (``head_ratio=head_ratios()``,
``max_ratio=max_ratios()``): left out, nothing more is drawn, so the default
draws, and the derandomized property suite's examples, stay what they were.
Drawn, they shrink to their defaults too: head ratio 0 (no head pruning) and
cap 1 (none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_tprune.engine.config import DEFAULT_SEED, IMPORTANCES, MAGNITUDE_IMPORTANCES, MODES, PruneConfig

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

ROUND_TO: tuple[int | None, ...] = (None, 1, 4, 8, 16)
"""``round_to`` values drawn by default; ``None`` (no rounding) first, so it is what failures shrink to."""

MAX_RATIO = 0.9
"""Default upper bound of drawn ratios: higher ratios leave tiny models with a channel or two per layer."""


def ratios(min_value: float = 0.0, max_value: float = MAX_RATIO, places: int = 2) -> SearchStrategy[float]:
    """Pruning ratios in ``[min_value, max_value]`` on a grid of ``places`` decimals.

    Drawn as an integer number of hundredths (by default) and divided, so values
    are exactly what their ``repr`` shows and a command line carrying them
    replays bit for bit. Shrinks towards ``min_value``: a failure is reported at
    the smallest ratio that still fails. ``max_value`` must stay below 1
    (torch-pruning cannot remove every channel).
    """
    from hypothesis import strategies as st

    if not 0.0 <= min_value <= max_value < 1.0:
        raise ValueError(f"need 0 <= min_value <= max_value < 1, got [{min_value}, {max_value}]")
    if places < 0:
        raise ValueError(f"places must be >= 0, got {places}")
    scale = 10**places
    low = round(min_value * scale)
    low += low < min_value * scale - 1e-9  # a ceiling that 0.07 * 100 = 7.000000000000001 does not fool
    high = int(max_value * scale + 1e-9)
    if low > high:
        raise ValueError(f"no ratio with {places} decimals lies in [{min_value}, {max_value}]")
    return st.integers(low, high).map(lambda k: round(k / scale, places))


def head_ratios(max_value: float = 0.75) -> SearchStrategy[float]:
    """Head pruning ratios on the hundredths grid, shrinking to 0 (no head pruning).

    Capped below 1 by default: a ratio that removes every head of a group is
    refused whole by torch-pruning, which the rule states but which tests
    little.
    """
    return ratios(0.0, max_value)


def max_ratios(min_value: float = 0.1) -> SearchStrategy[float]:
    """``max_pruning_ratio`` caps in ``[min_value, 1]`` on the hundredths grid, shrinking to 1 (no cap)."""
    from hypothesis import strategies as st

    if not 0.0 < min_value <= 1.0:
        raise ValueError(f"need 0 < min_value <= 1, got {min_value}")
    lowest = round(min_value * 100)
    return st.integers(0, 100 - lowest).map(lambda k: round((100 - k) / 100, 2))


def _fixed_or(value: SearchStrategy[float] | float) -> SearchStrategy[float]:
    from hypothesis import strategies as st

    return st.just(float(value)) if isinstance(value, (int, float)) else value


def prune_configs(
    *,
    ratio: SearchStrategy[float] | float | None = None,
    modes: Sequence[str] = MODES,
    importances: Sequence[str] = MAGNITUDE_IMPORTANCES,
    round_to: Sequence[int | None] = ROUND_TO,
    iterative_steps: tuple[int, int] = (1, 5),
    isomorphic: Sequence[bool] = (False, True),
    head_ratio: SearchStrategy[float] | float | None = None,
    max_ratio: SearchStrategy[float] | float | None = None,
) -> SearchStrategy[PruneConfig]:
    """Pruning configurations over every knob of the engine.

    Each argument narrows one knob: ``ratio`` is a strategy (default
    :func:`ratios`) or a fixed value; ``modes`` any of ``local`` (uniform) and
    ``global``; ``importances`` among ``l2, l1, lamp, fpgm, random`` (the default) and the
    gradient criteria ``taylor, hessian`` (opt-in: each costs a backward per step);
    ``round_to`` values (``None`` means no rounding); ``iterative_steps`` an
    inclusive range; ``isomorphic`` the values drawn when the mode is global
    (it is always off in uniform mode, which torch-pruning requires).
    ``head_ratio`` (opt-in; e.g. :func:`head_ratios`) draws head pruning, a
    drawn 0 meaning none; ``max_ratio`` (opt-in; e.g. :func:`max_ratios`)
    draws ``max_pruning_ratio``. Left as None they draw nothing at all.

    Every knob shrinks towards the first value given (the engine's default when
    the defaults are kept), and the ratio is drawn first so that it is
    minimised first; see the module docstring.
    """
    from hypothesis import strategies as st

    modes, importances, round_to, isomorphic = tuple(modes), tuple(importances), tuple(round_to), tuple(isomorphic)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes}")
    if not importances or any(i not in IMPORTANCES for i in importances):
        raise ValueError(f"importances must be a non-empty subset of {IMPORTANCES}, got {importances}")
    if not round_to or any(k is not None and k < 1 for k in round_to):
        raise ValueError(f"round_to must be non-empty, of None or positive integers, got {round_to}")
    if not 1 <= iterative_steps[0] <= iterative_steps[1]:
        raise ValueError(f"iterative_steps must be a range (low, high) with 1 <= low <= high, got {iterative_steps}")
    if not isomorphic:
        raise ValueError("isomorphic must offer at least one value")
    ratio_strategy = ratios() if ratio is None else ratio if not isinstance(ratio, (int, float)) else st.just(ratio)
    head_strategy = None if head_ratio is None else _fixed_or(head_ratio)
    max_strategy = None if max_ratio is None else _fixed_or(max_ratio)

    @st.composite
    def draw_config(draw: DrawFn) -> PruneConfig:
        drawn_ratio = draw(ratio_strategy)
        mode = draw(st.sampled_from(modes))
        importance = draw(st.sampled_from(importances))
        rounding = draw(st.sampled_from(round_to))
        steps = draw(st.integers(*iterative_steps))
        iso = draw(st.sampled_from(isomorphic)) if mode == "global" else False
        heads = float(draw(head_strategy)) if head_strategy is not None else 0.0  # drawn after the seed's knobs
        cap = float(draw(max_strategy)) if max_strategy is not None else 1.0
        return PruneConfig(
            ratio=float(drawn_ratio),
            global_pruning=mode == "global",
            importance=importance,
            round_to=rounding,
            iterative_steps=steps,
            isomorphic=iso,
            prune_num_heads=heads > 0,
            head_pruning_ratio=heads,
            max_pruning_ratio=cap,
        )

    return draw_config()


def reproduce_command(model: str, config: PruneConfig, seed: int = DEFAULT_SEED, device: str = "cpu") -> str:
    """The ``tprune`` command line that prunes ``model`` with ``config`` (:meth:`PruneConfig.reproduce_command`)."""
    return config.reproduce_command(model, seed, device)

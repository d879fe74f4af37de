"""What we know about specific timm models: known failures and reduction bands.

This is data, keyed by fnmatch patterns over model names, kept in one place so
that the zoo map, the plugin and the CLI agree. A known failure names its root
cause (the exception and where it is raised); the plugin turns it into a strict
expected failure, so an upgrade that fixes it shows up as an unexpected pass.

Two prefixes speak of time rather than of a broken result:

* ``hang: ...``: the case never finishes; it runs under the slow-model limit
  (``--tprune-slow-limit``) and must time out.
* ``slow: ...``: the case finishes, but takes far longer than the run's
  budget allows. It runs under the same limit, and running out of it is an
  expected failure that claims nothing broke; a case that finishes is judged
  by every check, so a fast machine or a raised limit gets a real verdict
  instead of an unexpected pass. ``slow: [shapes] ...`` also names the check it
  fails when let finish, which is then a strict expected failure.
"""

from __future__ import annotations

import fnmatch

from pytest_tprune.errors import CheckFailed

_RAW_FAILURES: dict[str, object] = {
    "test_vit3@r0.50-local": (
        "[groups] torch-pruning skips a group it offered: the re-rooted attention group of attn_pool takes the "
        "local ranking scope named 'attn_pool.proj' (base_pruner.py _prune: ranking_scope[module_name] = "
        "[record], keyed by the root's name without its direction), so attn_pool.proj's own output group is "
        "ranked and never pruned"
    ),
}
"""model pattern -> {config-id pattern: one-line root cause, or None where an exact config id is known
to pass although a pattern covers it}; ``name@cfg`` keys are folded in below."""


def _zoo_failures() -> dict[str, str]:
    """The timm family representatives (``@families``) that fail at every config, with causes.

    Kept as data in ``data/known_zoo_failures.json`` (one line per model; the
    messages are long): found by the suite at r0.50-local on CPU (timm
    1.0.31, torch 2.15, torch-pruning 1.6.1). Failures inside torch-pruning
    name the file and line where they are raised; forward failures name the
    module that still uses a stale size, for which an adapter is ours to
    write. Hangs and slow models run under ``--tprune-slow-limit``.
    """
    import json
    from importlib import resources

    text = resources.files("pytest_tprune.engine").joinpath("data/known_zoo_failures.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["failures"])


def _fold(table: dict[str, object]) -> dict[str, dict[str, str | None]]:
    """``{"model@r0.30-local": cause}`` entries become ``{"model": {"r0.30-local": cause}}``."""
    folded: dict[str, dict[str, str | None]] = {}
    for key, value in table.items():
        model, _, config = key.partition("@")
        entry = folded.setdefault(model, {})
        if isinstance(value, dict):
            entry.update(value)
        else:
            entry[config or "*"] = str(value)
    return folded


KNOWN_FAILURES: dict[str, dict[str, str | None]] = _fold({**_zoo_failures(), **_RAW_FAILURES})

REDUCTION_BANDS: dict[str, tuple[tuple[float, float], str]] = {}
"""pattern -> ((low, high) bounds on the kept fraction of params at ratio 0.5, reason)."""


def _lookup(table: dict[str, object], name: str) -> object | None:
    for pattern in sorted(table):
        if fnmatch.fnmatchcase(name, pattern):
            return table[pattern]
    return None


def known_failure(name: str) -> dict[str, str | None] | None:
    found = _lookup(KNOWN_FAILURES, name)  # type: ignore[arg-type]
    return dict(found) if isinstance(found, dict) else None


def is_hang(reason: str | None) -> bool:
    """A case that never finishes: it must run out of its time limit."""
    return bool(reason) and str(reason).startswith("hang:")


def is_slow(reason: str | None) -> bool:
    """A case that finishes given minutes: running out of time claims nothing, finishing gets a verdict."""
    return bool(reason) and str(reason).startswith("slow:")


def is_timed(reason: str | None) -> bool:
    """A hang or a slow model: its cases run under the slow-model limit rather than the run's."""
    return is_hang(reason) or is_slow(reason)


def failing_check(reason: str | None) -> str | None:
    """The check a known failure's cause names (``"[equivalence] torch-pruning removes ..."``, also after
    ``slow: ``), or None."""
    return CheckFailed.named_in(str(reason or "").removeprefix("slow: "))


def reduction_band(name: str) -> tuple[tuple[float, float], str] | None:
    found = _lookup(REDUCTION_BANDS, name)  # type: ignore[arg-type]
    return found if isinstance(found, tuple) else None

"""Golden files: one JSON file per case, written atomically, diffed readably.

``golden/<model>/<config-id>.json`` holds what a correct prune produced: the
module lines and tensor shapes after pruning, the figures before and after, and
the library versions that made it (recorded, never compared). One file per case
means xdist workers never write the same file; writes go to a temporary file in
the same directory and are moved into place with ``os.replace``, so a crash or a
concurrent reader never sees half a golden.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tprune.reports.atomic import write_text_atomic

if TYPE_CHECKING:
    from pytest_tprune.engine.outcome import PruneOutcome

SCHEMA = 1
FIGURES = ("params_before", "params_after", "macs_before", "macs_after", "flop_macs_before", "flop_macs_after")
DIFF_CAP = 20


def golden_path(golden_dir: Path, model: str, config_id: str) -> Path:
    return golden_dir / model / f"{config_id}.json"


def golden_content(outcome: PruneOutcome, versions: dict[str, str]) -> dict[str, Any]:
    """The golden for an outcome; key order is fixed so files diff cleanly."""
    config = outcome.prune_config
    note = (
        "shapes do not depend on the device: uniform pruning removes a fixed count per group"
        if not config.global_pruning
        else "global ranking compares importances across layers: a near-tie can rank differently on "
        "another device, so this golden is exact for the device that made it"
    )
    content = {
        "schema": SCHEMA,
        "model": outcome.model,
        "config": outcome.config,
        "config_id": config.config_id,
        "input_size": outcome.input_size,
        "device_note": note,
        "made_on": "cuda" if outcome.device.startswith("cuda") else "cpu",
        "versions": versions,
        "figures": {name: getattr(outcome, name) for name in FIGURES},
        "output_shape": outcome.output_shape_after,
        "modules": outcome.modules_after,
        "shapes": outcome.shapes_after,
    }
    if outcome.left_whole:  # only where it happens, so other goldens keep their bytes
        content["left_whole"] = {f"{lw.root} ({lw.direction})": lw.reason for lw in outcome.left_whole}
    return content


def dumps(content: dict[str, Any]) -> str:
    """JSON with one entry per line and short lists (shapes) kept on their line."""
    text = json.dumps(content, indent=1)
    return re.sub(
        r"\[\s*([-\d.,\s]*?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text
    )


def write_golden(path: Path, content: dict[str, Any]) -> None:
    """Write atomically (:func:`~pytest_tprune.reports.atomic.write_text_atomic`): a crash leaves the old file."""
    write_text_atomic(path, dumps(content) + "\n")


def read_golden(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def same_content(path: Path, content: dict[str, Any]) -> bool:
    """True when the file already holds exactly this content (no rewrite needed)."""
    try:
        return read_golden(path) == content
    except (OSError, ValueError):
        return False


@dataclass
class GoldenDiff:
    """What differs between an obtained golden and the expected one."""

    modules: list[tuple[str, str | None, str | None]]
    shapes: list[tuple[str, list[int] | None, list[int] | None]]
    figures: list[tuple[str, Any, Any]]
    left_whole: list[tuple[str, str | None, str | None]]

    def __bool__(self) -> bool:
        return bool(self.modules or self.shapes or self.figures or self.left_whole)


def _keyed_diff(expected: dict[str, Any], obtained: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = list(dict.fromkeys([*expected, *obtained]))
    return [(k, expected.get(k), obtained.get(k)) for k in keys if expected.get(k) != obtained.get(k)]


def diff_golden(expected: dict[str, Any], obtained: dict[str, Any]) -> GoldenDiff:
    figures = _keyed_diff(expected.get("figures", {}), obtained["figures"])
    for key in ("output_shape", "input_size", "config"):
        if expected.get(key) != obtained[key]:
            figures.append((key, expected.get(key), obtained[key]))
    return GoldenDiff(
        modules=_keyed_diff(expected.get("modules", {}), obtained["modules"]),
        shapes=_keyed_diff(expected.get("shapes", {}), obtained["shapes"]),
        figures=figures,
        left_whole=_keyed_diff(expected.get("left_whole", {}), obtained.get("left_whole", {})),
    )


def _capped(lines: list[str], cap: int) -> list[str]:
    if len(lines) <= cap:
        return lines
    return [*lines[:cap], f"  ... and {len(lines) - cap} more not shown"]


def _number_row(name: str, expected: Any, obtained: Any) -> str:
    if isinstance(expected, int) and isinstance(obtained, int):
        change = f"{obtained - expected:+d}"
        if expected:
            change += f" ({(obtained - expected) / expected:+.3%})"
    else:
        change = "changed"
    return f"  {name:<18} {obtained!s:>16} {expected!s:>16}   {change}"


def versions_line(made: dict[str, str], now: dict[str, str]) -> str:
    def fmt(v: dict[str, str]) -> str:
        return ", ".join(f"{k} {v.get(k, '?')}" for k in sorted(set(made) | set(now)))

    if made == now:
        return f"golden made with the versions running now ({fmt(now)})"
    changed = [
        f"{k} {made.get(k, '?')} -> {now.get(k, '?')}"
        for k in sorted(set(made) | set(now))
        if made.get(k) != now.get(k)
    ]
    return f"golden made with {fmt(made)}; running {fmt(now)}; upgrade: {', '.join(changed)}"


def render_diff(diff: GoldenDiff, expected: dict[str, Any], now: dict[str, str], cap: int = DIFF_CAP) -> str:
    """The mismatch in the seed's ``golden => obtained`` style, plus a figures table."""
    lines = [versions_line(expected.get("versions", {}), now)]
    if diff.modules:
        lines.append(f"modules that changed ({len(diff.modules)}), golden => obtained:")
        lines += _capped([f"  ({k}): {e or '<absent>'} => ({k}): {o or '<absent>'}" for k, e, o in diff.modules], cap)
    elif diff.shapes:
        lines.append(f"tensor shapes that changed ({len(diff.shapes)}), golden => obtained:")
        lines += _capped([f"  {k}: {e} => {o}" for k, e, o in diff.shapes], cap)
    if diff.left_whole:
        lines.append(f"groups left whole that changed ({len(diff.left_whole)}), golden => obtained:")
        lines += _capped([f"  {k}: {e or 'pruned'} => {o or 'pruned'}" for k, e, o in diff.left_whole], cap)
    if diff.figures:
        lines.append(f"  {'figure':<18} {'obtained':>16} {'expected':>16}   diff")
        lines += [_number_row(k, e, o) for k, e, o in diff.figures]
    return "\n".join(lines)

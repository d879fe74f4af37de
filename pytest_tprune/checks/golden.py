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

from pytest_tprune.checks.accounting import group_accounting
from pytest_tprune.reports.atomic import write_text_atomic

if TYPE_CHECKING:
    from pytest_tprune.engine.outcome import PruneOutcome

SCHEMA = 1
FIGURES = ("params_before", "params_after", "macs_before", "macs_after", "flop_macs_before", "flop_macs_after")
DIFF_CAP = 20


def golden_path(golden_dir: Path, model: str, config_id: str) -> Path:
    return golden_dir / model / f"{config_id}.json"


def golden_content(
    outcome: PruneOutcome,
    versions: dict[str, str],
    channels: dict[str, Any] | None = None,
    stock: dict[str, Any] | None = None,
    export: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The golden for an outcome; key order is fixed so files diff cleanly.

    ``channels`` is what the ``equivalence`` check covered (groups checked, why
    the others cannot be, save/load status), when it ran: a run that leaves
    the check out neither compares nor drops that block (:func:`carry_channels`).
    ``stock`` is the stock verdict (:mod:`pytest_tprune.checks.stock`); only
    its verdict is compared, its detail names lines of torch-pruning's source,
    which move with every release. ``export`` is each available exporter's
    status (:mod:`pytest_tprune.checks.export`), when the ``export`` check ran:
    written, compared and carried over like ``channels`` (:func:`carry_export`).
    """
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
        **({"recipe": outcome.recipe} if outcome.recipe else {}),
        "input_size": outcome.input_size,
        "device_note": note,
        "made_on": "cuda" if outcome.device.startswith("cuda") else "cpu",
        "versions": versions,
        "figures": {name: getattr(outcome, name) for name in FIGURES},
        "groups": group_accounting(outcome),
        **({"stock": stock} if stock is not None else {}),
        "output_shape": outcome.output_shape_after,
        **({"heads": outcome.attention} if outcome.attention else {}),
        "modules": outcome.modules_after,
        "shapes": outcome.shapes_after,
    }
    if outcome.left_whole:  # only where it happens, so other goldens keep their bytes
        content["left_whole"] = {f"{lw.root} ({lw.direction})": lw.reason for lw in outcome.left_whole}
    if channels is not None:
        content["channels"] = channels
    if export is not None:
        content["export"] = export
    return content


def carry_channels(content: dict[str, Any], path: Path) -> dict[str, Any]:
    """``content`` with the existing golden's ``channels`` block when this run did not check channels.

    Rewriting goldens with ``--tprune-checks`` leaving ``equivalence`` out must
    not delete what an earlier run with the check recorded.
    """
    if "channels" in content:
        return content
    try:
        previous = read_golden(path).get("channels")
    except GoldenError:
        return content
    return {**content, "channels": previous} if previous is not None else content


def carry_export(content: dict[str, Any], path: Path) -> dict[str, Any]:
    """``content`` with the existing golden's ``export`` entries for every exporter this run did not record.

    A run that leaves the ``export`` check out keeps the whole block, and a run
    where an optional exporter (onnx) is not installed keeps that exporter's
    entry, so the golden never depends on what the last machine to write it had.
    A carried optional exporter keeps the versions of its packages that the
    golden recorded with it: the status is still theirs.
    """
    from pytest_tprune.engine.identity import EXPORTER_PACKAGES

    try:
        old = read_golden(path)
    except GoldenError:
        return content
    previous = old.get("export")
    if not isinstance(previous, dict):
        return content
    obtained = content.get("export") or {}
    carried = [name for name in previous if name not in obtained]
    recorded = old.get("versions")
    made_with: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    versions = dict(content["versions"])
    for name in carried:
        versions.update({p: made_with[p] for p in EXPORTER_PACKAGES.get(name, ()) if p in made_with})
    return {**content, "versions": versions, "export": {**previous, **obtained}}


def export_changes(expected: dict[str, Any], obtained: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(exporter, golden, obtained) for each exporter this run recorded whose status differs from the golden.

    An optional exporter (onnx) is compared only where the golden records it:
    installing onnxruntime must not fail goldens written without it.
    """
    from pytest_tprune.checks.export import OPTIONAL_EXPORTERS

    golden = expected.get("export") or {}
    return [
        (name, golden.get(name), status)
        for name, status in obtained["export"].items()
        if golden.get(name) != status and (name in golden or name not in OPTIONAL_EXPORTERS)
    ]


def dumps(content: dict[str, Any]) -> str:
    """JSON with one entry per line and short lists (shapes) kept on their line."""
    text = json.dumps(content, indent=1)
    return re.sub(
        r"\[\s*([-\d.,\s]*?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text
    )


def write_golden(path: Path, content: dict[str, Any]) -> None:
    """Write atomically (:func:`~pytest_tprune.reports.atomic.write_text_atomic`): a crash leaves the old file."""
    write_text_atomic(path, dumps(content) + "\n")


REQUIRED = ("model", "config_id", "config", "input_size", "versions", "figures", "output_shape", "modules", "shapes")
"""Keys every golden holds: what the comparison reads, and the versions it reports."""
OBJECTS = ("config", "versions", "figures", "modules", "shapes", "left_whole", "channels", "stock", "export")
"""Keys whose value is looked up by name, so must be a JSON object."""
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


class GoldenError(ValueError):
    """A golden file that cannot be compared with: ``reason`` says what is wrong, in one line.

    ``newer`` is set when a later pytest-tprune wrote it (the fix is an upgrade,
    not a rewrite, unless this version is the one the project means to use).
    """

    def __init__(self, path: Path, reason: str, newer: bool = False) -> None:
        self.path = path
        self.reason = " ".join(reason.split())  # one line, whatever the OS or parser said
        self.newer = newer
        super().__init__(f"golden file {path} {self.reason}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def _parse(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GoldenError(path, f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GoldenError(path, f"is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise GoldenError(path, "is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "is truncated" if truncated else "is not valid JSON"
        where = f"{exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}"
        raise GoldenError(path, f"{what} ({where})") from None


def check_document(path: Path, data: Any) -> dict[str, Any]:
    """``data`` when it is a golden this version can compare with; else :class:`GoldenError` says why."""
    if not isinstance(data, dict):
        raise GoldenError(path, f"holds {_json_type(data)}, not a golden (a JSON object)")
    if "schema" not in data:
        raise GoldenError(path, "has no 'schema' key")
    schema = data["schema"]
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise GoldenError(path, f"has schema {json.dumps(schema)}, not an integer")
    if schema > SCHEMA:
        reason = f"was written by a newer pytest-tprune (schema {schema}; this version reads schema {SCHEMA})"
        raise GoldenError(path, reason, newer=True)
    if schema != SCHEMA:
        raise GoldenError(path, f"has schema {schema}, which no pytest-tprune writes (this version reads {SCHEMA})")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise GoldenError(path, f"lacks required key(s) {', '.join(repr(k) for k in missing)}")
    for key in OBJECTS:
        if key in data and not isinstance(data[key], dict):
            raise GoldenError(path, f"has {_json_type(data[key])} under {key!r}, not an object")
    return data


def read_golden(path: Path) -> dict[str, Any]:
    """The golden at ``path``, checked; :class:`GoldenError` (one line) when it is not one."""
    return check_document(path, _parse(path))


def update_command(case_id: str) -> str:
    """The command that (re)writes one case's golden, quoted as the user types it."""
    return f"'pytest --tprune-update-golden -k \"{case_id}\"'"


def broken_message(err: GoldenError, case_id: str) -> str:
    """The one line a case fails with when its golden is not a usable golden: what, where, how to fix."""
    if err.newer:
        return (
            f"{err}: upgrade pytest-tprune to compare with it, or rewrite it with this version: "
            f"{update_command(case_id)}"
        )
    return f"{err}: rewrite it with {update_command(case_id)} and review it before committing"


def same_content(path: Path, content: dict[str, Any]) -> bool:
    """True when the file already holds exactly this content (no rewrite needed); never raises."""
    try:
        return read_golden(path) == content
    except GoldenError:
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


def print_only(expected: str | None, obtained: str | None) -> bool:
    """Whether two module lines differ only in keywords one torch release prints and another omits.

    torch 2.1 prints ``LayerNorm((96,), eps=1e-06, elementwise_affine=True)``
    where later releases add ``bias=True``: the module and its tensors are the
    same, only its print-out grew. A line is print-only changed when the type
    is the same and every ``key=value`` token the two sides share is equal, so
    a changed width, a changed value or a renamed type is still a mismatch, and
    the tensor shapes (compared apart, exactly) catch what a print-out omits.
    """
    if expected is None or obtained is None:
        return False
    old_type, old_args = _split_line(expected)
    new_type, new_args = _split_line(obtained)
    if old_type != new_type or [a for a in old_args if "=" not in a] != [a for a in new_args if "=" not in a]:
        return False
    old_kw, new_kw = _keywords(old_args), _keywords(new_args)
    return all(old_kw[k] == new_kw[k] for k in old_kw.keys() & new_kw.keys())


def _split_line(line: str) -> tuple[str, list[str]]:
    """``Conv2d(3, 8, kernel_size=(3, 3))`` -> ``("Conv2d", ["3", "8", "kernel_size=(3, 3)"])``."""
    name, _, rest = line.partition("(")
    args, depth, current = [], 0, ""
    for char in rest[:-1] if rest.endswith(")") else rest:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += char
    return name, [a for a in [*args, current.strip()] if a]


def _keywords(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if "=" in a)


def _flat(block: Any) -> dict[str, Any]:
    """A block with nested objects spelled ``outer.inner``, so a diff names the one entry that changed."""
    if not isinstance(block, dict):
        return {"": block}
    flat: dict[str, Any] = {}
    for key, value in block.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{inner}": v for inner, v in _flat(value).items()})
        else:
            flat[key] = value
    return flat


def diff_golden(expected: dict[str, Any], obtained: dict[str, Any]) -> GoldenDiff:
    figures = _keyed_diff(expected.get("figures", {}), obtained["figures"])
    groups = _keyed_diff(expected.get("groups", {}), obtained.get("groups", {}))
    figures += [(f"groups {name}", old, new) for name, old, new in groups]
    if "stock" in obtained and (expected.get("stock") or {}).get("verdict") != obtained["stock"]["verdict"]:
        figures.append(("stock verdict", (expected.get("stock") or {}).get("verdict"), obtained["stock"]["verdict"]))
    if "channels" in obtained:  # compared only when this run checked channels
        channels = _keyed_diff(_flat(expected.get("channels", {})), _flat(obtained["channels"]))
        figures += [(f"channels {name}", old, new) for name, old, new in channels]
    if "export" in obtained:  # compared only when this run checked exporting
        figures += [(f"export {name}", old, new) for name, old, new in export_changes(expected, obtained)]
    for key in ("output_shape", "input_size", "config"):
        if expected.get(key) != obtained[key]:
            figures.append((key, expected.get(key), obtained[key]))
    heads = _keyed_diff(expected.get("heads", {}), obtained.get("heads", {}))
    figures += [(f"heads {name} [before, after, head_dim]", old, new) for name, old, new in heads]
    recipe = _keyed_diff(_flat(expected.get("recipe", {})), _flat(obtained.get("recipe", {})))
    figures += [(f"recipe {name}", old, new) for name, old, new in recipe]
    return GoldenDiff(
        modules=[d for d in _keyed_diff(expected.get("modules", {}), obtained["modules"]) if not print_only(*d[1:])],
        shapes=_keyed_diff(expected.get("shapes", {}), obtained["shapes"]),
        figures=figures,
        left_whole=_keyed_diff(expected.get("left_whole", {}), obtained.get("left_whole", {})),
    )


def _capped(lines: list[str], cap: int) -> list[str]:
    if len(lines) <= cap:
        return lines
    return [*lines[:cap], f"  ... and {len(lines) - cap} more not shown"]


def _shown(value: Any) -> str:
    return "<absent>" if value is None else str(value)


def _number_row(name: str, expected: Any, obtained: Any) -> str:
    if isinstance(expected, int) and isinstance(obtained, int):
        change = f"{obtained - expected:+d}"
        if expected:
            change += f" ({(obtained - expected) / expected:+.3%})"
    else:  # a status or a count that one side lacks: golden => obtained, like the module lines
        return f"  {name}: {_shown(expected)} => {_shown(obtained)}"
    return f"  {name:<18} {obtained!s:>16} {expected!s:>16}   {change}"


def versions_line(made: dict[str, str], now: dict[str, str]) -> str:
    """The versions that made a golden next to those running now, naming each one that moved.

    An optional exporter's packages the golden recorded but this run lacks are
    left out: that exporter is not installed here, so its status is not
    compared and its versions explain nothing in this diff.
    """
    from pytest_tprune.engine.identity import GUARDED_LIBRARIES

    shown = [k for k in sorted(set(made) | set(now)) if k in now or k in GUARDED_LIBRARIES]

    def fmt(v: dict[str, str]) -> str:
        return ", ".join(f"{k} {v.get(k, '?')}" for k in shown)

    changed = [f"{k} {made.get(k, '?')} -> {now.get(k, '?')}" for k in shown if made.get(k) != now.get(k)]
    if not changed:
        return f"golden made with the versions running now ({fmt(now)})"
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

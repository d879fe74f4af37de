"""The plugin's settings: command-line options and ini keys, parsed and validated.

Every option is a plain string or bool (xdist re-parses the command line in
each worker) and has an ini twin under ``[tool.pytest.ini_options]``; the
command line wins. Validation here is cheap (no torch or timm import), so a bad
value stops the run at start-up with one line; model patterns are checked when
the first test asks for cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_tprune.engine.config import parse_head_ratios, parse_modes, parse_ratios, split_list
from pytest_tprune.errors import UsageError

SLOW_LIMIT_S = 10.0
"""Default time limit of a known hang's or known-slow model's case: a quick crash still shows within it,
while the default run's budget is not spent on cases known to need minutes."""

# (name, help, default, is_flag)
OPTIONS: tuple[tuple[str, str, str | None, bool], ...] = (
    (
        "models",
        "comma-separated timm model names or fnmatch patterns, e.g. 'vit_*,resnet50' "
        "(default: the registered downstream models, else 'test_*')",
        None,
        False,
    ),
    ("exclude", "comma-separated names or patterns to leave out", None, False),
    ("ratios", "comma-separated pruning ratios in [0, 1) (default: 0.5)", "0.5", False),
    ("modes", "pruning modes: local, global or local,global (default: local,global)", "local,global", False),
    (
        "head-ratios",
        "comma-separated head pruning ratios in (0, 1): each adds, beside every ratio and mode, a config that "
        "also removes whole attention heads (prune_num_heads) (default: none)",
        None,
        False,
    ),
    ("device", "auto (CUDA when present), cpu, cuda or cuda:N (default: auto)", "auto", False),
    ("golden-dir", "directory of golden files (default: golden/ at the rootdir)", None, False),
    ("update-golden", "write missing golden files and rewrite changed ones", None, True),
    ("warn-unused", "only warn about golden files no selected case uses (default: fail)", None, True),
    ("max-params", "skip models with more parameters than this, e.g. 50e6 (default: no limit)", None, False),
    ("input-size", "cap the input's spatial size where the model allows (default: the model's own)", None, False),
    ("report", "write the JSON run report to this path", None, False),
    (
        "summary-md",
        "write the run's summary as markdown to this path (counts per outcome, failing cases, versions), "
        "e.g. to append to $GITHUB_STEP_SUMMARY",
        None,
        False,
    ),
    (
        "report-replace-complete",
        "let an interrupted run's incomplete report replace a complete one at --tprune-report's path "
        "(default: keep it and write NAME.incomplete.json next to it)",
        None,
        True,
    ),
    ("timeout", "per-case time limit in seconds, 0 for none (default: 300)", "300", False),
    (
        "slow-limit",
        "time limit in seconds for the cases of known hangs and known-slow models (a known failure starting "
        "'hang:' or 'slow:'), 0 for the run's --tprune-timeout, e.g. for a nightly job that judges them "
        f"(default: {SLOW_LIMIT_S:g})",
        f"{SLOW_LIMIT_S:g}",
        False,
    ),
    ("shard", "run only shard K of N of the cases, as K/N (deterministic)", None, False),
    ("seed", "seed of weight init and inputs (default: 0)", "0", False),
    (
        "checks",
        "checks check_all() runs, from forward,shapes,groups,equivalence,export,golden,reduction "
        "(default: all but export, which is opt-in); "
        "e.g. 'forward,shapes,reduction' for a zoo sweep without goldens",
        None,
        False,
    ),
    (
        "no-latency",
        "do not time each case's unpruned and pruned forward for the report's speed-up (default: time it, "
        "about a twentieth of the grid's time; never asserted)",
        None,
        True,
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("tprune", "structural pruning regression checks (pytest-tprune)")
    for name, help_text, _default, is_flag in OPTIONS:
        dest = f"tprune_{name.replace('-', '_')}"
        if is_flag:
            group.addoption(f"--tprune-{name}", action="store_true", default=None, dest=dest, help=help_text)
            parser.addini(dest, help_text, type="bool", default=False)
        else:
            group.addoption(f"--tprune-{name}", action="store", default=None, dest=dest, help=help_text)
            parser.addini(dest, help_text, type="string", default="")


def _raw(config: pytest.Config, name: str) -> tuple[str | bool | None, bool]:
    """(value, from_command_line): the command line wins over the ini file."""
    dest = f"tprune_{name.replace('-', '_')}"
    value = config.getoption(dest)
    if value is not None:
        return value, True
    ini = config.getini(dest)
    return (ini if ini not in ("", None) else None), False


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] | None
    exclude: tuple[str, ...]
    ratios: tuple[float, ...]
    modes: tuple[str, ...]
    device: str
    golden_dir: Path
    update_golden: bool
    warn_unused: bool
    max_params: float | None
    input_size: int | None
    report: Path | None
    timeout: float | None
    shard: tuple[int, int] | None
    seed: int
    checks: tuple[str, ...]
    configs_narrowed: bool = False
    """Ratios or modes came from the command line: goldens outside them are not judged unused."""
    report_replace_complete: bool = False
    """An incomplete run's report may replace a complete report at ``report`` (else it goes next to it)."""
    summary_md: Path | None = None
    """Where the controller writes the run's summary as markdown (``--tprune-summary-md``), if anywhere."""
    head_ratios: tuple[float, ...] = ()
    """Head pruning ratios (``--tprune-head-ratios``): each adds a head-pruning config per ratio and mode."""
    latency: bool = True
    """Time each case's unpruned and pruned forward for the report (off with ``--tprune-no-latency``)."""
    slow_limit: float | None = SLOW_LIMIT_S
    """Time limit of a known hang's or known-slow model's case (``--tprune-slow-limit``); None: ``timeout``."""


def _number(text: str, what: str, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--tprune-{what} expects a number, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"--tprune-{what} must be >= {minimum:g}, got {text!r}")
    return value


def parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--tprune-shard expects K/N such as 1/3, got {text!r}")
    index, total = int(parts[0]), int(parts[1])
    if not 1 <= index <= total:
        raise UsageError(f"--tprune-shard {text!r}: K must be between 1 and N")
    return index, total


def _path(config: pytest.Config, name: str) -> Path | None:
    value, from_cli = _raw(config, name)
    if value is None:
        return None
    base = config.invocation_params.dir if from_cli else config.rootpath
    return (Path(base) / str(value)).resolve()


def _text(config: pytest.Config, name: str, default: str | None) -> str | None:
    value = _raw(config, name)[0]
    return str(value) if value is not None else default


def _flag(config: pytest.Config, name: str) -> bool:
    return bool(_raw(config, name)[0])


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise UsageError(f"--tprune-device {text!r} is not a device: use auto, cpu, cuda or cuda:N")


def parse_settings(config: pytest.Config) -> Settings:
    """All settings, validated; raises UsageError with a one-line message."""
    models = _text(config, "models", None)
    exclude = _text(config, "exclude", None)
    max_params = _text(config, "max-params", None)
    input_size = _text(config, "input-size", None)
    timeout = _number(_text(config, "timeout", "300") or "300", "timeout", 0)
    slow_limit = _number(_text(config, "slow-limit", None) or f"{SLOW_LIMIT_S:g}", "slow-limit", 0)
    shard = _text(config, "shard", None)
    seed = _text(config, "seed", "0") or "0"
    head_ratios = _text(config, "head-ratios", None)
    if not seed.isdigit():
        raise UsageError(f"--tprune-seed expects a non-negative integer, got {seed!r}")
    return Settings(
        models=tuple(split_list(models, "model")) if models else None,
        exclude=tuple(split_list(exclude, "exclude")) if exclude else (),
        ratios=tuple(parse_ratios(_text(config, "ratios", "0.5") or "0.5")),
        modes=tuple(parse_modes(_text(config, "modes", "local,global") or "local,global")),
        device=_device(_text(config, "device", "auto") or "auto"),
        golden_dir=_path(config, "golden-dir") or (config.rootpath / "golden"),
        update_golden=_flag(config, "update-golden"),
        warn_unused=_flag(config, "warn-unused"),
        max_params=_number(max_params, "max-params", 1) if max_params else None,
        input_size=int(_number(input_size, "input-size", 8)) if input_size else None,
        report=_path(config, "report"),
        timeout=timeout or None,
        slow_limit=slow_limit or None,
        shard=parse_shard(shard) if shard else None,
        seed=int(seed),
        checks=parse_checks(_text(config, "checks", None)),
        configs_narrowed=_raw(config, "ratios")[1] or _raw(config, "modes")[1],
        report_replace_complete=_flag(config, "report-replace-complete"),
        summary_md=_path(config, "summary-md"),
        head_ratios=tuple(parse_head_ratios(head_ratios)) if head_ratios else (),
        latency=not _flag(config, "no-latency"),
    )


def check_report_path(path: Path, option: str = "--tprune-report") -> None:
    """Raise a UsageError unless the file ``option`` names can be written at ``path`` at the end of the run.

    Checked at start-up so that a typo costs seconds, not a run: the path must
    not be a directory, and its nearest existing ancestor must be a directory
    this process may create files in (missing folders are created when the
    file is written). Nothing is created or changed here.
    """
    example = path / ("summary.md" if option == "--tprune-summary-md" else "report.json")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file path such as {example}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is not a directory, so the file cannot go there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {ancestor} (permission denied)")


def parse_checks(text: str | None) -> tuple[str, ...]:
    from pytest_tprune.checks.case import CHECKS, DEFAULT_CHECKS

    if text is None:
        return DEFAULT_CHECKS
    chosen = split_list(text, "check")
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(CHECKS)}")
    return tuple(c for c in CHECKS if c in chosen)

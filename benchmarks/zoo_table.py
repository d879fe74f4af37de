"""Render the prunability table of a run: per timm family, models passing, known-failing and skipped.

Why: a JSON run report lists cases; what users read is the map by family
("does my model's family prune today, and if not, why?"). This turns one or
more reports (e.g. the shards of a zoo run, or the default selection) into a
markdown table with the date and library versions, grouping failures by cause.

Usage::

    python benchmarks/zoo_table.py REPORT.json [MORE.json ...] [--out docs/zoo.md] [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

KNOWN_PREFIX = "known failure: "


def family_of(model: str, modules: dict[str, str]) -> str:
    return modules.get(model, "(not a timm model)")


def timm_families(models: set[str]) -> dict[str, str]:
    """Model name -> timm module (family), as ``timm.list_modules`` groups them."""
    import timm

    found: dict[str, str] = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            if name in models:
                found[name] = module
    return found


def short_cause(row: dict[str, Any]) -> str:
    """A cause short enough for a table cell: the exception (and where), without the explanation."""
    text = str(row.get("reason") or row.get("failed_check") or "?").removeprefix(KNOWN_PREFIX)
    text = text.removeprefix("pytest_tprune.errors.PruneStepError: ").removeprefix("pytest_tprune.errors.")
    if text.startswith("hang:"):
        return "hang (time limit)"
    text = re.sub(r"\s*\[at ([^\]]+)\].*", r" @ \1", text)
    text = text.split(" after pruning")[0]
    return text[:140]


def left_whole_cell(rows: list[dict[str, Any]]) -> str:
    """``left whole / all groups`` over the passing cases, blank when none was left whole."""
    passing = [r for r in rows if r["outcome"] == "passed"]
    whole = sum(int(r.get("groups_left_whole") or 0) for r in passing)
    total = whole + sum(int(r.get("groups_pruned") or 0) for r in passing)
    return f"{whole} / {total}" if whole else ""


def render(cases: list[dict[str, Any]], environment: dict[str, Any], title: str) -> str:
    families = timm_families({c["model"] for c in cases})
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        by_family[family_of(case["model"], families)].append(case)
    totals: Counter[str] = Counter(c["outcome"] for c in cases)
    versions = ", ".join(f"{k} {environment.get(k)}" for k in ("python", "torch", "timm", "torch-pruning"))
    lines = [
        f"# {title}",
        "",
        f"Generated {time.strftime('%Y-%m-%d')} by `benchmarks/zoo_table.py` from the suite's JSON report; "
        f"{versions}; device {environment.get('device')}.",
        "",
        f"{len(cases)} cases in {len(by_family)} families: "
        + ", ".join(f"{totals[k]} {k}" for k in ("passed", "xfailed", "failed", "skipped", "xpassed") if totals[k])
        + ". A known failure (`xfailed`) is strict: its cause is in `pytest_tprune/known.py`.",
        "",
        "A pass may leave whole the groups torch-pruning cannot prune consistently, or whose pruning breaks a "
        "module's forward (`pytest_tprune/left_whole.py`): *left whole* counts them, as left whole / all groups, "
        "over the family's passing cases.",
        "",
        "| family | cases | passed | left whole | known failures (cause) | failed (cause) | skipped (reason) |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for family in sorted(by_family):
        rows = by_family[family]
        count: Counter[str] = Counter(r["outcome"] for r in rows)
        known = Counter(short_cause(r) for r in rows if r["outcome"] == "xfailed")
        skipped = Counter(str(r.get("reason") or "?")[:100] for r in rows if r["outcome"] == "skipped")
        failed = Counter(
            short_cause(r) if r["outcome"] != "xpassed" else "xpassed"
            for r in rows
            if r["outcome"] in ("failed", "error", "xpassed")
        )
        lines.append(
            f"| {family} | {len(rows)} | {count['passed']} | {left_whole_cell(rows)} | "
            + "; ".join(f"{n}x {cause}" for cause, n in known.most_common()).replace("|", "\\|")
            + " | "
            + "; ".join(f"{n}x {cause}" for cause, n in failed.most_common()).replace("|", "\\|")
            + " | "
            + "; ".join(f"{n}x {why}" for why, n in skipped.most_common()).replace("|", "\\|")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--title", default="Prunability by timm family")
    args = parser.parse_args(argv)
    cases: list[dict[str, Any]] = []
    environment: dict[str, Any] = {}
    for path in args.reports:
        data = json.loads(path.read_text())
        environment = environment or data.get("environment", {})
        cases += data["cases"]
    text = render(cases, environment, args.title)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The compatibility matrix: one selection's run reports under several library versions, by timm family.

``tprune matrix REPORT.json [MORE.json ...] [--output PAGE.md] [--title T]``

``tprune compare`` says what changed between two runs; a user choosing a
torch-pruning or timm release asks a wider question: "which versions prune my
model's family, and how?". This renders N reports of one selection (the same
tests, run under different library versions) as one markdown page: a column
per report, headed by the versions that differ between them, and a row per
family (the grouping ``tprune table`` uses), each cell summing up the family's
cases in that run in a few words: outcomes, stock torch-pruning's verdict and
the share of groups the engine left whole.

The page is a pure function of the reports and the command line: columns are
sorted by version, rows by family, and the date shown is the one each report
says it finished, so a committed page regenerates byte-identically (the
command that does so is part of it).

Cases are matched across reports as ``tprune compare`` matches them (by model
and config, plus the nodeid where that pair is not unique); a case one report
lacks (another selection, an incomplete run) is ``missing`` in its column.
Only the standard library is imported here: the caller names each model's
family (:func:`pytest_tprune.engine.zoo.family_of`).
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pytest_tprune.reports.compare import ambiguous_pairs, index_cases
from pytest_tprune.reports.schema import FAILING, Case, Key, Report, ReportError
from pytest_tprune.reports.table import NOT_TIMM, OUTCOME_ORDER, stock_counts, worst_stock

DEFAULT_TITLE = "Compatibility matrix"
LIBRARIES = {"torch-pruning": "tp", "timm": "timm", "torch": "torch"}
"""The libraries a column may be headed by (report environment key -> short name), in header order."""
DEFAULT_HEADED = ("torch-pruning", "timm")
"""What heads the columns when no library differs (one report, or reports of one library set)."""
RUN_KEYS = ("python", "torch", "timm", "torch-pruning", "pytest-tprune", "device")
"""The environment entries a run's line names; those every report shares are stated once above the table."""
OUTCOME_WORDS = {
    "passed": "pass",
    "xfailed": "xfail",
    "xpassed": "xpass",
    "failed": "fail",
    "error": "error",
    "crashed": "crashed",
    "skipped": "skipped",
    "interrupted": "interrupted",
}
WITH_CHECK = frozenset({"xfailed", "xpassed", "failed", "error"})
"""Outcomes whose cell names the check that failed (``fail (forward)``, ``xfail (timeout)``)."""
FAILED = FAILING | {"xpassed"}
"""What the totals row counts as failed: failures, errors, crashed workers and strict xfails that pass."""
MISSING = "missing"


@dataclass(frozen=True)
class Column:
    """One report as a column: its label, and its cases by the key they are matched with."""

    report: Report
    label: str
    cases: dict[Key, Case]


# --- columns --------------------------------------------------------------------------------------------------------


def version_key(version: Any) -> tuple[tuple[int, str], ...]:
    """A sort key reading ``1.10.0`` after ``1.6.1`` (numbers as numbers); a missing version sorts first."""
    parts = re.findall(r"\d+|[^\d.+]+", str(version or ""))
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in parts)


def column_order(report: Report) -> tuple[Any, ...]:
    """Oldest to newest: by torch-pruning, then timm, then torch, then path (argument order does not matter)."""
    env = report.environment
    return (*(version_key(env.get(name)) for name in LIBRARIES), report.path)


def headed_libraries(reports: Sequence[Report]) -> list[str]:
    """The libraries whose versions differ between the reports; the default pair when none does."""
    differing = [name for name in LIBRARIES if len({str(r.environment.get(name)) for r in reports}) > 1]
    return differing or list(DEFAULT_HEADED)


def column_labels(reports: Sequence[Report]) -> list[str]:
    """``tp 1.6.1 / timm 1.0.31`` per report; the file name (or path) is added where two would read the same."""
    headed = headed_libraries(reports)
    labels = [" / ".join(f"{LIBRARIES[name]} {r.environment.get(name, '?')}" for name in headed) for r in reports]
    names = [PurePath(r.path).name for r in reports]
    names = [name if names.count(name) == 1 else r.path for name, r in zip(names, reports, strict=True)]
    labels = [
        f"{label} ({name})" if labels.count(label) > 1 else label for label, name in zip(labels, names, strict=True)
    ]
    return [f"{label} (incomplete)" if not r.complete else label for label, r in zip(labels, reports, strict=True)]


def build_columns(reports: Sequence[Report]) -> list[Column]:
    """The reports in column order, their cases indexed; the same file twice or a case twice is bad input."""
    seen: set[str] = set()
    for report in reports:
        if report.path in seen:
            raise ReportError(f"{report.path} is given twice: name each report once")
        seen.add(report.path)
    ordered = sorted(reports, key=column_order)
    ambiguous = ambiguous_pairs(*ordered)
    labels = column_labels(ordered)
    return [
        Column(report, label, index_cases(report, ambiguous)) for report, label in zip(ordered, labels, strict=True)
    ]


def models(reports: Sequence[Report]) -> list[str]:
    """Every model any report names: what the caller maps to families."""
    return sorted({c["model"] for r in reports for c in r.cases})


# --- cells ----------------------------------------------------------------------------------------------------------


def outcome_part(cases: Sequence[Case | None]) -> str:
    """``pass``, ``xfail (timeout)``... when the cases agree; else ``3 pass, 1 fail (forward)``, in table order."""
    by_outcome: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_outcome[MISSING if case is None else case["outcome"]].append(case or {})
    words: list[tuple[int, str]] = []
    for outcome in (*OUTCOME_ORDER, MISSING):
        rows = by_outcome.get(outcome)
        if not rows:
            continue
        checks = (
            sorted({str(r["failed_check"]) for r in rows if r.get("failed_check")}) if outcome in WITH_CHECK else []
        )
        word = OUTCOME_WORDS.get(outcome, outcome)
        words.append((len(rows), f"{word} ({', '.join(checks)})" if checks else word))
    if len(words) == 1:
        return words[0][1]
    return ", ".join(f"{count} {word}" for count, word in words)


def stock_part(cases: list[Case]) -> str | None:
    """``stock crashes``; when the cases differ, the worst verdict and how many of them got it."""
    counts = stock_counts(cases)
    worst = worst_stock(counts)
    if worst is None:
        return None
    if len(counts) == 1:
        return f"stock {worst}"
    return f"stock {worst} ({counts[worst]} of {sum(counts.values())})"


def groups_offered(case: Case) -> int:
    """The groups torch-pruning offered the case (its accounting), else those pruned plus those left whole."""
    accounting = case.get("group_accounting")
    offered = accounting.get("offered") if isinstance(accounting, dict) else None
    whole_and_pruned = int(case.get("groups_left_whole") or 0) + int(case.get("groups_pruned") or 0)
    return offered if isinstance(offered, int) and offered >= whole_and_pruned else whole_and_pruned


def left_whole_part(cases: list[Case]) -> str | None:
    """``12% left whole`` over the passing cases (as ``tprune table`` counts them); None when nothing is."""
    passing = [c for c in cases if c["outcome"] == "passed"]
    whole = sum(int(c.get("groups_left_whole") or 0) for c in passing)
    offered = sum(groups_offered(c) for c in passing)
    if not whole or not offered:
        return None
    share = whole / offered
    return f"{'<1%' if share < 0.005 else f'{share:.0%}'} left whole"


def cell(cases: Sequence[Case | None]) -> str:
    """One family in one report: ``outcomes; stock verdict; left-whole share``, pipes escaped."""
    present = [c for c in cases if c is not None]
    parts = [outcome_part(cases), stock_part(present), left_whole_part(present)]
    return "; ".join(part for part in parts if part).replace("|", "\\|")


TOTALS = (("pass", {"passed"}), ("fail", FAILED), ("xfail", {"xfailed"}), ("skipped", {"skipped", "interrupted"}))
ALWAYS_COUNTED = ("pass", "fail", "xfail")
"""The totals row always names these, so the columns line up; skipped and missing cases only when there are any."""


def totals_cell(cases: Sequence[Case | None]) -> str:
    """A run in one line: passed, failed and known-failure cases, and how many stock torch-pruning prunes ``ok``."""
    present = [c for c in cases if c is not None]
    counts = [(word, sum(c["outcome"] in outcomes for c in present)) for word, outcomes in TOTALS]
    counts.append((MISSING, len(cases) - len(present)))
    words = ", ".join(f"{n} {word}" for word, n in counts if n or word in ALWAYS_COUNTED)
    stock = stock_counts(present)
    rated = sum(stock.values())
    return words + (f"; stock ok {stock['ok']} of {rated}" if rated else "; no stock verdicts")


# --- the page -------------------------------------------------------------------------------------------------------


def grouped_keys(columns: Sequence[Column], families: Mapping[str, str]) -> dict[str, list[Key]]:
    """family -> the keys of its cases in any report, families and keys sorted."""
    model_of = {key: case["model"] for column in columns for key, case in column.cases.items()}
    grouped: dict[str, list[Key]] = defaultdict(list)
    for key in sorted(model_of):
        grouped[families.get(model_of[key], NOT_TIMM)].append(key)
    return dict(sorted(grouped.items()))


def regenerate_command(columns: Sequence[Column], output: str | None, title: str | None) -> str:
    """The command line that writes this page again: reports in column order, then --output and --title."""
    argv = ["tprune", "matrix", *(c.report.path for c in columns)]
    argv += ["--output", output] if output else []
    argv += ["--title", title] if title is not None else []
    return shlex.join(argv)


def common_line(columns: Sequence[Column]) -> str:
    """The versions every run shares, and what the columns differ in."""
    envs = [c.report.environment for c in columns]
    shared = [name for name in RUN_KEYS if len({str(env.get(name)) for env in envs}) == 1 and name in envs[0]]
    differ = [name for name in RUN_KEYS if len({str(env.get(name)) for env in envs}) > 1]
    text = "Common to every run: " + (", ".join(f"{name} {envs[0][name]}" for name in shared) or "nothing") + "."
    return text + (f" The runs differ in {', '.join(differ)}." if differ else "")


def run_line(column: Column) -> str:
    """One column's source: its file, when it finished, every version, its case count, whether it is complete."""
    env = column.report.environment
    finished = str(column.report.document.get("finished") or "")
    day = finished[:10] if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", finished) else "an unknown day"
    versions = ", ".join(f"{name} {env[name]}" for name in RUN_KEYS if name in env)
    cut = "" if column.report.complete else f"; **incomplete**: {column.report.incomplete_reason}"
    return f"- **{column.label}**: `{column.report.path}`, finished {day}, {versions}; {len(column.cases)} cases{cut}."


def notes(columns: Sequence[Column], grouped: Mapping[str, list[Key]]) -> list[str]:
    """The lines above the table for incomplete runs and for reports that do not list the same cases."""
    lines = [
        f"**Incomplete run:** `{c.report.path}` ({c.report.incomplete_reason}): only the cases that finished are "
        "in it; its column counts the others as `missing`."
        for c in columns
        if not c.report.complete
    ]
    total = sum(len(keys) for keys in grouped.values())
    absent = sum(any(key not in c.cases for c in columns) for keys in grouped.values() for key in keys)
    if absent:
        lines.append(
            f"**Different selections:** {absent} of {total} cases are not in every report; a column counts the "
            "cases its report lacks as `missing`."
        )
    return [line for note in lines for line in (note, "")]


def differing_line(rows: Mapping[str, list[str]], multi: bool) -> list[str]:
    """Which families read differently between the columns (in bold in the table)."""
    if not multi:
        return []
    changed = [family for family, cells in rows.items() if len(set(cells)) > 1]
    if not changed:
        return [f"Every one of the {len(rows)} families reads the same in every column.", ""]
    return [f"{len(changed)} of {len(rows)} families read differently between the columns: {', '.join(changed)}.", ""]


LEGEND = [
    "Each cell sums up the family's cases in one run, in up to three parts:",
    "",
    "- **outcome**: `pass`, `xfail (CHECK)` (a strict known failure), `xpass` (a known failure that passes), "
    "`fail (CHECK)`, `error (CHECK)`, `crashed` (its worker died), `skipped`, `interrupted`, `missing` (not in "
    "that report), with the check that failed; when the family's cases differ, how many of each "
    "(`3 pass, 1 xfail (groups)`).",
    "- **`stock VERDICT`**: what plain torch-pruning, without the engine's fallbacks, does with the cases: `ok`, "
    "`skips groups`, `breaks the forward`, `crashes` or `hangs` (best to worst); when the cases differ, the worst "
    "and how many of the cases with a verdict got it (`stock crashes (4 of 16)`). No stock part: no case has a "
    "verdict (a timeout).",
    "- **`N% left whole`**: the share of the groups torch-pruning offered that the engine left whole (it cannot "
    "prune them consistently, or pruning them breaks a module), over the passing cases; shown when above 0.",
    "",
    "A family in **bold** reads differently in some column. *all families* counts passed, failed (`fail`, `error`, "
    "`crashed`, `xpass`) and known-failure cases, then the cases stock torch-pruning prunes `ok` of those with a "
    "verdict.",
]


def table_lines(
    columns: Sequence[Column], rows: Mapping[str, list[str]], grouped: Mapping[str, list[Key]]
) -> list[str]:
    """The markdown table: the totals row, then a row per family, bold where the columns differ."""
    all_keys = [key for keys in grouped.values() for key in keys]
    lines = [
        "| family | cases | " + " | ".join(c.label for c in columns) + " |",
        "|---|---:|" + "---|" * len(columns),
        f"| *all families* | {len(all_keys)} | "
        + " | ".join(totals_cell([c.cases.get(key) for key in all_keys]) for c in columns)
        + " |",
    ]
    for family, cells in rows.items():
        name = f"**{family}**" if len(set(cells)) > 1 else family
        lines.append(f"| {name} | {len(grouped[family])} | " + " | ".join(cells) + " |")
    return lines


def render_matrix(
    reports: Sequence[Report], families: Mapping[str, str], title: str | None = None, output: str | None = None
) -> str:
    """The markdown page for ``reports``; ``title`` and ``output`` as given on the command line (for its own line)."""
    columns = build_columns(reports)
    grouped = grouped_keys(columns, families)
    rows = {family: [cell([c.cases.get(key) for key in keys]) for c in columns] for family, keys in grouped.items()}
    lines = [
        f"# {title if title is not None else DEFAULT_TITLE}",
        "",
        f"Rendered by `tprune matrix` from {len(columns)} run report(s); regenerate with "
        f"`{regenerate_command(columns, output, title)}`.",
        "",
        common_line(columns),
        "",
        *notes(columns, grouped),
        *differing_line(rows, len(columns) > 1),
        *table_lines(columns, rows, grouped),
        "",
        *LEGEND,
        "",
        "Runs, left to right:",
        "",
        *(run_line(c) for c in columns),
    ]
    return "\n".join(lines) + "\n"


def incomplete_warnings(reports: Sequence[Report]) -> list[str]:
    """One stderr line per incomplete report, in column order: the page is shown, but cannot be trusted whole."""
    return [
        f"{r.path} is an incomplete run ({r.incomplete_reason}): only the cases that finished are in its column"
        for r in sorted(reports, key=column_order)
        if not r.complete
    ]

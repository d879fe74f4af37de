"""The prunability table: run reports rendered as a map by timm family.

``tprune table REPORT.json [MORE.json ...] [--title T] [--out PAGE.md]``

A report lists cases; what a user reads is "does my model's family prune
today, and if not, why?". This merges the reports of one run (the shards of a
zoo run, checked as ``tprune merge`` checks them), then renders a markdown
page: when and with which libraries the run was made, the totals by outcome
and by cause, and one row per family naming the models behind every cause and
what stock torch-pruning (without the engine's fallbacks) does with them.

Causes are grouped by kind rather than by message. A report's reasons are
free text that names the model ("pruning vit_huge... ran past the per-case
time limit of 60 s"), so without grouping a zoo run with a hundred timeouts
would show a hundred distinct causes. The kinds recognised here (timeouts,
memory-guard skips, models with every group left whole) are the ones the
plugin words itself; anything else keeps its first line, with the model's own
name taken out so the same failure in two models is one cause.

Only the standard library is imported here: the caller names the family of
each model (:func:`pytest_tprune.engine.zoo.family_of`).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_tprune.errors import CheckFailed
from pytest_tprune.reports.schema import STOCK_VERDICTS, Case

NOT_TIMM = "(not a timm model)"
KNOWN_PREFIX = "known failure: "
OUTCOME_ORDER = ("passed", "xfailed", "xpassed", "failed", "error", "crashed", "skipped", "interrupted")
CAUSE_WIDTH = 140  # characters of a free-text cause kept in a cell
NAMES_PER_CAUSE = 12
"""Models named per cause in a cell; the rest are counted. A zoo run's vision_transformer row has dozens of
memory-guard skips and timeouts, and a cell listing all of them buries the causes (the reports name every one)."""

_TIMEOUT = re.compile(r"ran past the per-case time limit of (\S+) s")
_MEMORY = re.compile(r"need about ([\d.]+) GiB, over this worker's share of memory \(([\d.]+) GiB\)")
_GROUP_COUNT = re.compile(r"\b\d+ group\(s\)")  # "[shapes] 3 group(s) break the shape rule": one cause
_WHERE = re.compile(r"\s*\[at ([^\]]+)\].*")


@dataclass(frozen=True)
class Cause:
    """Why one case did not pass: the column it belongs to, a label shared across models, a per-model detail."""

    column: str  # "known", "failed" or "skipped"
    label: str
    detail: str | None = None


# --- causes ---------------------------------------------------------------------------------------------------------


def _without_model(text: str, case: Case) -> str:
    """The text with the case's own model (and case id) taken out, so one failure in two models reads the same."""
    model = str(case["model"])
    text = text.replace(f" {model}-{case['config_id']}", "").replace(f" for {model}", "")
    return text.replace(model, "the model")


def free_text_cause(case: Case) -> str:
    """The first line of a reason, short enough for a table cell: the exception and where, not the explanation."""
    text = str(case.get("reason") or case.get("failed_check") or "no reason recorded").removeprefix(KNOWN_PREFIX)
    text = text.removeprefix("pytest_tprune.errors.PruneStepError: ").removeprefix("pytest_tprune.errors.")
    text = text.removeprefix("pytest_tprune.case.")
    text = _WHERE.sub(r" @ \1", _without_model(text.splitlines()[0] if text else text, case))
    text = _GROUP_COUNT.sub("groups", text.split(" after pruning")[0]).rstrip(":")
    return text if len(text) <= CAUSE_WIDTH else text[: CAUSE_WIDTH - 3].rstrip() + "..."


def known_cause(case: Case) -> Cause:
    """A known failure's cell: a known-slow model that ran out of its limit says whether it passes when let
    finish (its cause names no check) or which check it then fails."""
    reason = str(case.get("reason") or "").removeprefix(KNOWN_PREFIX)
    if reason.startswith("hang: slow"):  # how reports written before 2026-12-03 spell a known-slow model
        return Cause("known", "slow pass, over the hang time limit")
    if reason.startswith("known slow: "):
        check = CheckFailed.named_in(reason.removeprefix("known slow: "))
        if check:
            return Cause("known", f"slow, over the hang time limit; fails {check} when let finish")
        return Cause("known", "slow pass, over the hang time limit")
    if reason.startswith("hang:"):
        return Cause("known", "hang (time limit)")
    return Cause("known", free_text_cause(case))


def skip_cause(case: Case) -> Cause:
    reason = str(case.get("reason") or "no reason recorded")
    memory = _MEMORY.search(reason)
    if memory:
        return Cause("skipped", f"memory guard (over a worker's {memory[2]} GiB)", f"{memory[1]} GiB")
    return Cause("skipped", free_text_cause(case))


def nothing_pruned(case: Case) -> bool:
    """A reduction failure where torch-pruning had groups but every one was left whole."""
    return (
        case.get("failed_check") == "reduction"
        and not case.get("groups_pruned")
        and bool(case.get("groups_left_whole"))
    )


def crash_cause(case: Case) -> Cause:
    """A crashed worker, grouped by how it died (``signal 11 SIGSEGV``, ``exit code 1``); the worker per model."""
    found = case.get("crash")
    crash: dict[str, Any] = found if isinstance(found, dict) else {}
    if crash.get("signal") is not None:
        how = f"signal {crash['signal']} {crash.get('signal_name') or ''}".rstrip()
    elif crash.get("exit_code") is not None:
        how = f"exit code {crash['exit_code']}"
    else:
        how = "exit status unknown"
    return Cause("failed", f"crashed its worker ({how})", str(crash.get("worker_id") or "") or None)


def failure_cause(case: Case) -> Cause:
    if case["outcome"] == "crashed":
        return crash_cause(case)
    if case["outcome"] == "interrupted":
        return Cause("skipped", "interrupted: the run stopped before the case finished")
    if case["outcome"] == "xpassed":
        return Cause("failed", "passes although known to fail: drop its known failure")
    timeout = _TIMEOUT.search(str(case.get("reason") or ""))
    if timeout:
        return Cause("failed", f"timeout at {timeout[1]} s")
    if nothing_pruned(case):
        return Cause("failed", "nothing pruned: every group left whole", f"{case['groups_left_whole']} groups")
    return Cause("failed", free_text_cause(case))


def cause_of(case: Case) -> Cause | None:
    """Why ``case`` did not pass, or None when it passed."""
    outcome = case["outcome"]
    if outcome == "passed":
        return None
    if outcome == "xfailed":
        return known_cause(case)
    if outcome == "skipped":
        return skip_cause(case)
    return failure_cause(case)


# --- families -------------------------------------------------------------------------------------------------------


def by_family(cases: list[Case], families: Mapping[str, str]) -> dict[str, list[Case]]:
    grouped: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        grouped[families.get(case["model"], NOT_TIMM)].append(case)
    return dict(sorted(grouped.items()))


# --- rendering ------------------------------------------------------------------------------------------------------


def case_names(cases: list[Case]) -> dict[str, str]:
    """nodeid -> how a cell names the case: the model, plus its config where the model has several cases."""
    per_model = Counter(c["model"] for c in cases)
    return {c["nodeid"]: c["model"] if per_model[c["model"]] == 1 else f"{c['model']} {c['config_id']}" for c in cases}


def cause_cell(rows: list[Case], column: str, names: Mapping[str, str]) -> str:
    """``Nx label: `model` (detail), ...`` per cause of one column, the commonest first; pipes escaped."""
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        cause = cause_of(row)
        if cause is not None and cause.column == column:
            name = names[row["nodeid"]]
            members[cause.label].append((name, f"`{name}` ({cause.detail})" if cause.detail else f"`{name}`"))
    ranked = sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
    cells = (f"{len(who)}x {label}: {named([shown for _, shown in sorted(who)])}" for label, who in ranked)
    return "; ".join(cells).replace("|", "\\|")


def named(shown: list[str]) -> str:
    """The first :data:`NAMES_PER_CAUSE` names, then how many more."""
    if len(shown) <= NAMES_PER_CAUSE:
        return ", ".join(shown)
    return ", ".join(shown[:NAMES_PER_CAUSE]) + f" and {len(shown) - NAMES_PER_CAUSE} more"


def left_whole_cell(rows: list[Case]) -> str:
    """``left whole / all groups`` over the passing cases, blank when none was left whole."""
    passing = [r for r in rows if r["outcome"] == "passed"]
    whole = sum(int(r.get("groups_left_whole") or 0) for r in passing)
    total = whole + sum(int(r.get("groups_pruned") or 0) for r in passing)
    return f"{whole} / {total}" if whole else ""


def stock_counts(rows: list[Case]) -> Counter[str]:
    """How many of ``rows`` got each stock torch-pruning verdict; cases without one (a timeout) are not counted."""
    found = (r.get("stock") for r in rows)
    return Counter(str(stock["verdict"]) for stock in found if isinstance(stock, dict) and stock.get("verdict"))


def stock_rank(verdict: str) -> int:
    """A verdict's place from best to worst, as ``tprune compare`` ranks them (an unknown one ranks worst)."""
    return STOCK_VERDICTS.index(verdict) if verdict in STOCK_VERDICTS else len(STOCK_VERDICTS)


def worst_stock(counts: Counter[str]) -> str | None:
    """The worst verdict among ``counts``: the one an upgrade guard cares about; None when there is none."""
    return max(counts, key=lambda verdict: (stock_rank(verdict), verdict)) if counts else None


def stock_cell(rows: list[Case]) -> str:
    """The family's stock verdict: one word when its cases agree, else ``Nx verdict`` per verdict, worst first.

    Counts rather than only the worst, because a family where one case of
    twenty crashes stock torch-pruning reads differently from one where all do.
    """
    counts = stock_counts(rows)
    if len(counts) <= 1:
        return next(iter(counts), "")
    ranked = sorted(counts, key=lambda verdict: (-stock_rank(verdict), verdict))
    return ", ".join(f"{counts[verdict]}x {verdict}" for verdict in ranked)


def family_rows(grouped: dict[str, list[Case]], names: Mapping[str, str]) -> list[str]:
    lines = [
        "| family | cases | passed | left whole | stock | known failures (cause) | failed (cause) | skipped (reason) |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for family, rows in grouped.items():
        passed = sum(r["outcome"] == "passed" for r in rows)
        cells = [cause_cell(rows, column, names) for column in ("known", "failed", "skipped")]
        lines.append(
            f"| {family} | {len(rows)} | {passed} | {left_whole_cell(rows)} | {stock_cell(rows)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def totals_by_cause(cases: list[Case]) -> list[str]:
    """One bullet per column that has cases: how many, by cause, the commonest first."""
    titles = {"known": "Known failures and slow models (xfail)", "failed": "Failed", "skipped": "Skipped"}
    counts: dict[str, Counter[str]] = {column: Counter() for column in titles}
    for case in cases:
        cause = cause_of(case)
        if cause is not None:
            counts[cause.column][cause.label] += 1
    return [
        f"- **{title}: {sum(counts[column].values())}.** "
        + "; ".join(f"{n} {label}" for label, n in sorted(counts[column].items(), key=lambda i: (-i[1], i[0])))
        for column, title in titles.items()
        if counts[column]
    ]


def run_line(document: Mapping[str, Any], written: str) -> str:
    env = document.get("environment") or {}
    names = ("python", "torch", "timm", "torch-pruning", "pytest-tprune")
    versions = ", ".join(f"{name} {env[name]}" for name in names if name in env)
    settings = document.get("settings") or {}
    shards = settings.get("merged_shards")
    shard_text = f"; {len(shards)} shards merged" if isinstance(shards, list) and shards else ""
    return f"Run on {written} with {versions}; device {env.get('device')}{shard_text}. Rendered by `tprune table`."


def incomplete_note(document: Mapping[str, Any]) -> list[str]:
    """The header's line for a report (or a shard of it) whose run was interrupted, else nothing."""
    if document.get("complete", True) is not False:
        return []
    reason = str(document.get("incomplete_reason") or "the run stopped before every test finished")
    return [f"**Incomplete run:** {reason}; only the cases that finished are counted.", ""]


def render(
    document: Mapping[str, Any], families: Mapping[str, str], title: str, written: str, partial: str | None = None
) -> str:
    """The markdown page for one (merged) report document; ``partial`` says what part of the run is missing."""
    cases: list[Case] = list(document["cases"])
    grouped = by_family(cases, families)
    outcomes = Counter(c["outcome"] for c in cases)
    clean = sum(all(r["outcome"] == "passed" for r in rows) for rows in grouped.values())
    share = f" ({outcomes['passed'] / len(cases):.0%})" if cases else ""
    lines = [
        f"# {title}",
        "",
        run_line(document, written),
        "",
        *incomplete_note(document),
        *([f"**Partial run:** {partial}.", ""] if partial else []),
        f"**{outcomes['passed']} of {len(cases)} cases pass every check{share}**, in {len(grouped)} families; "
        f"in {clean} of them every case passes. "
        + ", ".join(f"{outcomes[k]} {k}" for k in OUTCOME_ORDER if outcomes[k])
        + ".",
        "",
        *totals_by_cause(cases),
        "",
        "A known failure (`xfailed`) is strict, a known-slow model's timeout is not (finishing in time gets a "
        "verdict); their causes are in `pytest_tprune/engine/known.py`. A pass may leave "
        "whole the groups torch-pruning cannot prune consistently, or whose pruning breaks a module's forward "
        "(`pytest_tprune/engine/left_whole.py`): *left whole* counts them, as left whole / all groups, over the "
        "family's passing cases. *stock* is what plain torch-pruning, without the engine's fallbacks, does with the "
        "family's cases (`ok`, `skips groups`, `breaks the forward`, `crashes`, `hangs`): one verdict when they "
        "agree, else how many cases got each, the worst first; blank when no case has one (a timeout).",
        "",
        *family_rows(grouped, case_names(cases)),
    ]
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------------------


def written_date(document: Mapping[str, Any], paths: Sequence[str]) -> str:
    """The day the run finished (UTC), stable however often the page is rendered.

    Reports say when they were written (``finished``; a merge keeps the
    latest), which survives a clone; older reports fall back to the newest
    file's modification time.
    """
    finished = str(document.get("finished") or "")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", finished):
        return finished[:10]
    newest = max(Path(path).stat().st_mtime for path in paths)
    return time.strftime("%Y-%m-%d", time.gmtime(newest))

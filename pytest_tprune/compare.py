"""Compare two run reports, and merge shard reports: guarding library upgrades.

``tprune compare OLD.json NEW.json`` reads two reports written by
``pytest --tprune-report`` (typically: the pinned, known-good torch/timm/
torch-pruning set and the candidate upgrade) and groups what differs:

* **regressions**: cases that did not fail in OLD and fail or error in NEW;
* **disappeared**: cases of OLD that NEW does not have;
* **fixed**: cases that failed or errored in OLD and pass in NEW;
* **changed behaviour**: every other outcome change (passed -> skipped,
  xfailed -> xpassed, still failing but at another check, ...), to review;
* **figures changed**: params and MACs (both counters: torch-pruning's and
  FlopCounterMode's) of cases present in both, largest relative change first;
* **appeared**: cases of NEW that OLD does not have;
* **durations**: cases at least FACTOR times slower or faster, by at least a second.

Exit status: 1 when anything regressed (a regression or a disappeared case),
0 otherwise, 2 with one line on stderr for bad input. A strict xfail that now
passes (``xpassed``) is changed behaviour, not a regression: the library got
better, and the run itself already fails until the known failure is dropped. A
case that appeared is never a regression, even when it fails: it has no past to
regress from (its outcome is shown in the appeared group).

``tprune merge OUT.json IN.json...`` merges the reports of the shards of one run
(``--tprune-shard K/N``) into one report that ``compare`` reads.

Only the standard library is imported here: comparing reports needs no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pytest_tprune.report import OUTCOMES, REPORT_SCHEMA, write_json_atomic

EXIT_OK, EXIT_REGRESSED, EXIT_USAGE = 0, 1, 2
FORMATS = ("text", "markdown", "json")
COMPARE_SCHEMA = 1  # version of the ``--format json`` document
DEFAULT_DURATION_FACTOR = 2.0
MIN_DURATION_DELTA = 1.0  # seconds: a duration change below this is noise, whatever its factor
FAILING = frozenset({"failed", "error"})

# The raw figures compared, with their labels: both MAC counters, as the report has them.
FIGURES: tuple[tuple[str, str], ...] = (
    ("params_before", "params before"),
    ("params_after", "params after"),
    ("macs_before", "MACs before (torch-pruning)"),
    ("macs_after", "MACs after (torch-pruning)"),
    ("flop_macs_before", "MACs before (FlopCounterMode)"),
    ("flop_macs_after", "MACs after (FlopCounterMode)"),
)
FIGURE_LABELS = dict(FIGURES)
ENV_ORDER = ("torch", "timm", "torch-pruning", "python", "cuda", "cudnn", "device", "platform")

# Group name -> title, in the order they are shown; the first two make the exit status 1.
GROUPS: tuple[tuple[str, str], ...] = (
    ("regressions", "Regressions: newly failing"),
    ("disappeared", "Disappeared: counted as regressions"),
    ("fixed", "Fixed: newly passing"),
    ("changed", "Changed behaviour: to review"),
    ("figures", "Figures changed: largest relative change first"),
    ("appeared", "Appeared: not regressions"),
    ("durations", "Duration changes"),
)
# How the verdict line counts each group: "2 newly failing, 1 disappeared, ...".
SUMMARY_WORDS = {
    "regressions": "newly failing",
    "disappeared": "disappeared",
    "fixed": "fixed",
    "changed": "changed behaviour",
    "figures": "with changed figures",
    "appeared": "appeared",
    "durations": "with a duration change",
}

# Hints for outcome changes that are not regressions but need someone to act.
HINTS: dict[tuple[str, str], str] = {
    ("xfailed", "xpassed"): "a known failure now passes: drop its known_failure",
    ("passed", "skipped"): "no longer runs: check the skip reason",
    ("passed", "xfailed"): "now marked as a known failure",
    ("passed", "xpassed"): "now marked as a known failure, which does not fail",
}

Key = tuple[str, ...]
Case = dict[str, Any]


class ReportError(Exception):
    """Bad input: a file that cannot be read or is no usable report (exit status 2)."""


# --- reading --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One run report, checked: its path, environment, settings and cases."""

    path: str
    document: dict[str, Any]

    @property
    def environment(self) -> dict[str, Any]:
        env = self.document.get("environment")
        return env if isinstance(env, dict) else {}

    @property
    def settings(self) -> dict[str, Any]:
        settings = self.document.get("settings")
        return settings if isinstance(settings, dict) else {}

    @property
    def cases(self) -> list[Case]:
        cases: list[Case] = self.document["cases"]
        return cases


def read_json(path: str) -> Any:
    """The JSON content of ``path``; a :class:`ReportError` saying why not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not JSON (not UTF-8 text)") from None
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise ReportError(f"{path} is not usable JSON ({type(err).__name__})") from None


def check_case(path: str, index: int, case: Any) -> None:
    """Raise a :class:`ReportError` unless ``case`` has what a comparison reads."""
    if not isinstance(case, dict):
        raise ReportError(f"{path} is not a valid pytest-tprune report: case {index} is not an object")
    for name in ("nodeid", "model", "config_id", "outcome"):
        if not isinstance(case.get(name), str):
            raise ReportError(f"{path} is not a valid pytest-tprune report: case {index} has no text '{name}'")
    if case["outcome"] not in OUTCOMES:
        raise ReportError(f"{path}: case {index} has an unknown outcome {case['outcome']!r}")


def load_report(path: str) -> Report:
    """Read and check one report; a :class:`ReportError` with one line for anything unusable."""
    document = read_json(path)
    if not isinstance(document, dict) or document.get("tool") != "pytest-tprune":
        raise ReportError(f"{path} is not a pytest-tprune report (write one with pytest --tprune-report PATH)")
    schema = document.get("schema")
    if schema != REPORT_SCHEMA:
        raise ReportError(
            f"{path} has report schema {schema!r}, this pytest-tprune reads schema {REPORT_SCHEMA}: "
            "compare reports written by the same pytest-tprune version"
        )
    cases = document.get("cases")
    if not isinstance(cases, list):
        raise ReportError(f"{path} is not a valid pytest-tprune report: 'cases' is not a list")
    for index, case in enumerate(cases):
        check_case(path, index, case)
    return Report(path, document)


# --- matching -------------------------------------------------------------------------------------------------------


def ambiguous_pairs(*reports: Report) -> set[tuple[str, str]]:
    """(model, config_id) pairs that occur in several tests of one report: those are keyed by nodeid too."""
    found: set[tuple[str, str]] = set()
    for report in reports:
        counts = Counter((c["model"], c["config_id"]) for c in report.cases)
        found |= {pair for pair, count in counts.items() if count > 1}
    return found


def case_key(case: Case, ambiguous: set[tuple[str, str]]) -> Key:
    """(model, config_id), plus the nodeid when that pair alone does not name one case."""
    pair = (case["model"], case["config_id"])
    return (*pair, case["nodeid"]) if pair in ambiguous else pair


def index_cases(report: Report, ambiguous: set[tuple[str, str]]) -> dict[Key, Case]:
    """The report's cases by key; the same key twice is bad input."""
    indexed: dict[Key, Case] = {}
    for case in report.cases:
        key = case_key(case, ambiguous)
        if key in indexed:
            raise ReportError(f"{report.path} has case {case['nodeid']} twice")
        indexed[key] = case
    return indexed


def case_label(key: Key) -> str:
    """How a case is named in the output: ``model [config_id]``, then the nodeid where needed."""
    label = f"{key[0]} [{key[1]}]"
    return f"{label} ({key[2]})" if len(key) > 2 else label


# --- comparing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseChange:
    """One case in a group: its key and its row in each report (None where absent)."""

    key: Key
    old: Case | None
    new: Case | None

    @property
    def label(self) -> str:
        return case_label(self.key)

    @property
    def hint(self) -> str | None:
        if self.old is None or self.new is None:
            return None
        old, new = self.old, self.new
        still_failing = old["outcome"] in FAILING and old["outcome"] == new["outcome"]
        if still_failing and old.get("failed_check") != new.get("failed_check"):
            return "still failing, at another check"
        return HINTS.get((self.old["outcome"], self.new["outcome"]))


@dataclass(frozen=True)
class FigureChange:
    """One figure of one case: old and new value, relative change (inf from zero)."""

    name: str
    old: float
    new: float

    @property
    def relative(self) -> float:
        if self.old == 0:
            return math.inf
        return (self.new - self.old) / abs(self.old)


@dataclass(frozen=True)
class FiguresChange:
    """The figures of one case that differ between the reports."""

    case: CaseChange
    changes: list[FigureChange]

    @property
    def largest(self) -> float:
        return max(abs(c.relative) for c in self.changes)


@dataclass(frozen=True)
class DurationChange:
    """A notable duration change, with the step that changed most when both reports time steps."""

    case: CaseChange
    old: float
    new: float
    step: str | None = None
    step_delta: float = 0.0

    @property
    def factor(self) -> float:
        """How many times slower (> 1) or faster (< 1)."""
        return math.inf if self.old == 0 else self.new / self.old


@dataclass
class Comparison:
    """Everything ``compare`` reports, grouped; :attr:`regressed` decides the exit status."""

    old_path: str
    new_path: str
    environment: list[tuple[str, Any, Any]]
    unchanged_environment: list[tuple[str, Any]]
    settings: list[tuple[str, Any, Any]]
    compared: int
    duration_factor: float
    regressions: list[CaseChange] = field(default_factory=list)
    disappeared: list[CaseChange] = field(default_factory=list)
    fixed: list[CaseChange] = field(default_factory=list)
    changed: list[CaseChange] = field(default_factory=list)
    figures: list[FiguresChange] = field(default_factory=list)
    appeared: list[CaseChange] = field(default_factory=list)
    durations: list[DurationChange] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.disappeared)

    @property
    def exit_status(self) -> int:
        return EXIT_REGRESSED if self.regressed else EXIT_OK

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name, _ in GROUPS}


def outcome_group(old: Case, new: Case) -> str | None:
    """Which group an outcome change belongs to: regressions, fixed, changed, or None (no change)."""
    before, after = old["outcome"], new["outcome"]
    if after in FAILING and before not in FAILING:
        return "regressions"
    if before in FAILING and after == "passed":
        return "fixed"
    if before != after:
        return "changed"
    if before in FAILING and old.get("failed_check") != new.get("failed_check"):
        return "changed"
    return None


def _number(value: Any) -> float | None:
    """A figure as a number; None for anything else (absent, null, text, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def figure_changes(old: Case, new: Case) -> list[FigureChange]:
    """The raw figures (params, both MAC counters, before and after) that differ; absent ones are skipped."""
    changes = []
    for name, _ in FIGURES:
        before, after = _number(old.get(name)), _number(new.get(name))
        if before is not None and after is not None and before != after:
            changes.append(FigureChange(name, before, after))
    return changes


def duration_change(case: CaseChange, factor: float) -> DurationChange | None:
    """A :class:`DurationChange` when the case got ``factor`` times slower or faster by at least a second."""
    assert case.old is not None and case.new is not None
    before, after = _number(case.old.get("duration")), _number(case.new.get("duration"))
    if before is None or after is None or abs(after - before) < MIN_DURATION_DELTA:
        return None
    if min(before, after) * factor > max(before, after):
        return None
    step, delta = largest_step_change(case.old.get("durations"), case.new.get("durations"))
    return DurationChange(case, before, after, step, delta)


def largest_step_change(old: Any, new: Any) -> tuple[str | None, float]:
    """The timed step (build, trace, prune, forward, golden...) whose time changed most, and by how much."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None, 0.0
    deltas = {}
    for step in old.keys() & new.keys():
        before, after = _number(old[step]), _number(new[step])
        if before is not None and after is not None:
            deltas[step] = after - before
    if not deltas:
        return None, 0.0
    step = max(sorted(deltas), key=lambda s: abs(deltas[s]))
    return step, deltas[step]


def _env_order(name: str) -> tuple[int, str]:
    return (ENV_ORDER.index(name) if name in ENV_ORDER else len(ENV_ORDER), name)


def dict_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for every key whose value differs; an absent key reads as None."""
    names = sorted(old.keys() | new.keys(), key=_env_order)
    return [(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)]


def compare_reports(old: Report, new: Report, duration_factor: float = DEFAULT_DURATION_FACTOR) -> Comparison:
    """Match the cases of two reports by (model, config_id) and sort every difference into its group."""
    ambiguous = ambiguous_pairs(old, new)
    before, after = index_cases(old, ambiguous), index_cases(new, ambiguous)
    env_changes = dict_changes(old.environment, new.environment)
    changed_names = {name for name, _, _ in env_changes}
    result = Comparison(
        old_path=old.path,
        new_path=new.path,
        environment=env_changes,
        unchanged_environment=[
            (n, v) for n, v in sorted(new.environment.items(), key=lambda i: _env_order(i[0])) if n not in changed_names
        ],
        settings=dict_changes(old.settings, new.settings),
        compared=len(before.keys() & after.keys()),
        duration_factor=duration_factor,
    )
    for key in sorted(before.keys() | after.keys()):
        case = CaseChange(key, before.get(key), after.get(key))
        if case.new is None:
            result.disappeared.append(case)
        elif case.old is None:
            result.appeared.append(case)
        else:
            sort_common_case(result, case)
    result.appeared.sort(key=lambda c: (c.new is None or c.new["outcome"] not in FAILING, c.key))
    result.figures.sort(key=lambda f: (-f.largest, f.case.key))
    result.durations.sort(key=lambda d: (-abs(d.new - d.old), d.case.key))
    return result


def sort_common_case(result: Comparison, case: CaseChange) -> None:
    """File a case present in both reports under its outcome, figures and duration groups."""
    assert case.old is not None and case.new is not None
    group = outcome_group(case.old, case.new)
    if group is not None:
        getattr(result, group).append(case)
    changes = figure_changes(case.old, case.new)
    if changes:
        result.figures.append(FiguresChange(case, changes))
    duration = duration_change(case, result.duration_factor)
    if duration is not None:
        result.durations.append(duration)


# --- formatting helpers ---------------------------------------------------------------------------------------------


def describe(case: Case | None) -> str:
    """An outcome as shown: ``failed (golden)``, ``passed``, ``absent``."""
    if case is None:
        return "absent"
    check = case.get("failed_check")
    return f"{case['outcome']} ({check})" if check else case["outcome"]


def one_line(text: Any, limit: int = 160) -> str:
    """A reason on one line, shortened to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def case_reason(case: CaseChange) -> str | None:
    """The reason worth showing: the new row's, else (for a disappeared case) the old one's."""
    row = case.new if case.new is not None else case.old
    reason = row.get("reason") if row is not None else None
    return one_line(reason) if reason else None


def fmt_value(value: Any) -> str:
    """An environment or settings value: None reads as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(fmt_value(v) for v in value)
    return str(value)


def fmt_figure(value: float) -> str:
    """A figure exactly, with thousands separators: 11,689,512."""
    return f"{value:,.0f}" if value == int(value) else f"{value:,.4f}"


def fmt_relative(value: float) -> str:
    """A relative change as a signed percentage; 'new' when the old value was zero."""
    if math.isinf(value):
        return "new"
    text = f"{value:+.2%}"
    return f"{value * 100:+.2g}%" if text in ("+0.00%", "-0.00%") else text


def fmt_factor(change: DurationChange) -> str:
    """``4.67x slower`` or ``3.10x faster``."""
    if change.new >= change.old:
        return "slower (was 0 s)" if change.old == 0 else f"{change.factor:.2f}x slower"
    return "faster" if change.new == 0 else f"{1 / change.factor:.2f}x faster"


def fmt_step(change: DurationChange) -> str:
    return f"most in {change.step}: {change.step_delta:+.2f} s" if change.step else ""


def environment_line(comparison: Comparison, quote: Callable[[str], str] = str) -> str:
    """``timm 1.0.29 -> 1.0.31, torch-pruning 1.6.0 -> 1.6.1``, or 'unchanged'."""
    parts = [f"{n} {quote(fmt_value(o))} -> {quote(fmt_value(v))}" for n, o, v in comparison.environment]
    return ", ".join(parts) if parts else "unchanged"


def unchanged_line(comparison: Comparison, quote: Callable[[str], str] = str) -> str:
    return ", ".join(f"{n} {quote(fmt_value(v))}" for n, v in comparison.unchanged_environment if n != "platform")


def summary_line(comparison: Comparison) -> str:
    """``REGRESSED: 1 newly failing, 1 disappeared, ...``: the verdict and the non-empty groups."""
    parts = [f"{n} {SUMMARY_WORDS[name]}" for name, n in comparison.counts().items() if n]
    verdict = "REGRESSED" if comparison.regressed else "OK"
    details = ", ".join(parts) if parts else "no differences"
    return f"{verdict}: {details} ({comparison.compared} cases in both reports)"


def duration_title(comparison: Comparison) -> str:
    return f"Duration changes: >= {comparison.duration_factor:g}x and >= {MIN_DURATION_DELTA:g} s"


# --- text -----------------------------------------------------------------------------------------------------------


def text_case_lines(case: CaseChange) -> list[str]:
    """A case in the text output: the outcome change, then its reason and hint when there are."""
    if case.old is None:
        line = f"  {case.label}: {describe(case.new)}"
    elif case.new is None:
        line = f"  {case.label}: was {describe(case.old)}"
    else:
        line = f"  {case.label}: {describe(case.old)} -> {describe(case.new)}"
    lines = [line]
    reason = case_reason(case)
    if reason:
        lines.append(f"      reason: {reason}")
    if case.hint:
        lines.append(f"      note: {case.hint}")
    return lines


def text_figures_lines(change: FiguresChange) -> list[str]:
    lines = [f"  {change.case.label}: up to {fmt_relative(change.largest).lstrip('+')}"]
    width = max(len(FIGURE_LABELS[c.name]) for c in change.changes)
    for c in change.changes:
        label = FIGURE_LABELS[c.name]
        lines.append(f"      {label:<{width}}  {fmt_figure(c.old)} -> {fmt_figure(c.new)} ({fmt_relative(c.relative)})")
    return lines


def text_duration_lines(change: DurationChange) -> list[str]:
    step = fmt_step(change)
    extra = f"; {step}" if step else ""
    return [f"  {change.case.label}: {change.old:.2f} s -> {change.new:.2f} s ({fmt_factor(change)}{extra})"]


def render_text(comparison: Comparison) -> str:
    """The terminal output: header, one section per non-empty group, the verdict last."""
    lines = [f"tprune compare: {comparison.old_path} -> {comparison.new_path}"]
    lines.append(f"environment: {environment_line(comparison)}")
    unchanged = unchanged_line(comparison)
    if unchanged:
        lines.append(f"  unchanged: {unchanged}")
    for name, old, new in comparison.settings:
        lines.append(f"settings differ: {name} {fmt_value(old)} -> {fmt_value(new)}")
    for name, title in GROUPS:
        items: list[Any] = getattr(comparison, name)
        if not items:
            continue
        heading = duration_title(comparison) if name == "durations" else title
        lines += ["", f"{heading} ({len(items)})"]
        for item in items:
            if isinstance(item, FiguresChange):
                lines += text_figures_lines(item)
            elif isinstance(item, DurationChange):
                lines += text_duration_lines(item)
            else:
                lines += text_case_lines(item)
    lines += ["", summary_line(comparison)]
    return "\n".join(lines) + "\n"


# --- markdown -------------------------------------------------------------------------------------------------------

DETAILS_OVER = 15  # rows: a longer table is folded into <details>


def md_cell(text: Any) -> str:
    """Table-safe cell text: one line, pipes escaped."""
    return one_line(text if text is not None else "", 200).replace("|", "\\|")


def md_case(case: CaseChange) -> str:
    key = case.key
    cell = f"`{key[0]}` {key[1]}"
    return cell + (f" ({md_cell(key[2])})" if len(key) > 2 else "")


def md_table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, folded into ``<details>`` when long."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if len(rows) > DETAILS_OVER:
        return [f"<details><summary>{len(rows)} rows</summary>", "", *lines, "", "</details>"]
    return lines


def md_case_rows(cases: list[CaseChange]) -> list[list[str]]:
    rows = []
    for case in cases:
        note = " ".join(part for part in (case_reason(case), case.hint and f"({case.hint})") if part)
        rows.append([md_case(case), describe(case.old), describe(case.new), md_cell(note)])
    return rows


def md_figure_rows(changes: list[FiguresChange]) -> list[list[str]]:
    rows = []
    for change in changes:
        for index, c in enumerate(change.changes):
            case = md_case(change.case) if index == 0 else ""
            rows.append([case, FIGURE_LABELS[c.name], fmt_figure(c.old), fmt_figure(c.new), fmt_relative(c.relative)])
    return rows


def md_duration_rows(changes: list[DurationChange]) -> list[list[str]]:
    return [[md_case(d.case), f"{d.old:.2f} s", f"{d.new:.2f} s", fmt_factor(d), fmt_step(d)] for d in changes]


def md_section(comparison: Comparison, name: str, title: str) -> list[str]:
    """One group as a heading and a table; nothing for an empty group."""
    items: list[Any] = getattr(comparison, name)
    if not items:
        return []
    if name == "figures":
        table = md_table(["case", "figure", "before", "after", "change"], md_figure_rows(items))
    elif name == "durations":
        title = duration_title(comparison)
        table = md_table(["case", "before", "after", "change", "step"], md_duration_rows(items))
    else:
        table = md_table(["case", "before", "after", "reason / note"], md_case_rows(items))
    return ["", f"### {title} ({len(items)})", "", *table]


def render_markdown(comparison: Comparison) -> str:
    """A pull-request comment: verdict heading, environment, one table per non-empty group."""

    def code(text: str) -> str:
        return f"`{text}`"

    verdict = "regressed" if comparison.regressed else "no regression"
    lines = [f"## tprune compare: {verdict}", "", f"**{summary_line(comparison)}**", ""]
    lines.append(f"`{comparison.old_path}` -> `{comparison.new_path}`")
    lines += ["", f"**Environment:** {environment_line(comparison, code)}"]
    unchanged = unchanged_line(comparison, code)
    if unchanged:
        lines += ["", f"Unchanged: {unchanged}"]
    for name, old, new in comparison.settings:
        lines += ["", f"**Settings differ:** {name} `{fmt_value(old)}` -> `{fmt_value(new)}`"]
    for name, title in GROUPS:
        lines += md_section(comparison, name, title)
    return "\n".join(lines) + "\n"


# --- json -----------------------------------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    """JSON has no infinity: an infinite ratio (from zero) is null."""
    return None if math.isinf(value) else round(value, 6)


def json_side(case: Case | None) -> dict[str, Any] | None:
    if case is None:
        return None
    return {"nodeid": case["nodeid"], **{k: case.get(k) for k in ("outcome", "failed_check", "reason", "duration")}}


def json_case(case: CaseChange) -> dict[str, Any]:
    return {
        "model": case.key[0],
        "config_id": case.key[1],
        "label": case.label,
        "hint": case.hint,
        "old": json_side(case.old),
        "new": json_side(case.new),
    }


def json_figures(change: FiguresChange) -> dict[str, Any]:
    figures = {c.name: {"old": c.old, "new": c.new, "relative": _finite(c.relative)} for c in change.changes}
    return {**json_case(change.case), "largest_relative": _finite(change.largest), "figures": figures}


def json_duration(change: DurationChange) -> dict[str, Any]:
    return {
        **json_case(change.case),
        "old_seconds": change.old,
        "new_seconds": change.new,
        "factor": _finite(change.factor),
        "step": change.step,
        "step_delta": round(change.step_delta, 4),
    }


def render_json(comparison: Comparison) -> str:
    """The same groups as a machine-readable document."""
    document: dict[str, Any] = {
        "schema": COMPARE_SCHEMA,
        "tool": "pytest-tprune compare",
        "old": comparison.old_path,
        "new": comparison.new_path,
        "verdict": "regressed" if comparison.regressed else "ok",
        "exit_status": comparison.exit_status,
        "compared": comparison.compared,
        "counts": comparison.counts(),
        "environment": {
            "changed": {n: {"old": o, "new": v} for n, o, v in comparison.environment},
            "unchanged": dict(comparison.unchanged_environment),
        },
        "settings": {n: {"old": o, "new": v} for n, o, v in comparison.settings},
        "duration_factor": comparison.duration_factor,
        "min_duration_delta": MIN_DURATION_DELTA,
    }
    for name, _ in GROUPS:
        items: list[Any] = getattr(comparison, name)
        if name == "figures":
            document[name] = [json_figures(i) for i in items]
        elif name == "durations":
            document[name] = [json_duration(i) for i in items]
        else:
            document[name] = [json_case(i) for i in items]
    return json.dumps(document, indent=1) + "\n"


RENDERERS: dict[str, Callable[[Comparison], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}


# --- command lines --------------------------------------------------------------------------------------------------


class UsageExit(Exception):
    """argparse's usage error, turned into a return value instead of SystemExit."""


class SubcommandParser(argparse.ArgumentParser):
    """argparse whose usage errors come back to :func:`parse_or_status` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageExit(message)


def compare_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(
        prog="tprune compare",
        description="Compare two pytest-tprune JSON run reports "
        "(exit 1 when a case newly fails or disappeared, 2 for bad input).",
    )
    parser.add_argument("old", metavar="OLD.json", help="the baseline report (e.g. the pinned library versions)")
    parser.add_argument("new", metavar="NEW.json", help="the report to check (e.g. the upgraded libraries)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (default), markdown or json")
    parser.add_argument(
        "--duration-threshold",
        type=float,
        default=DEFAULT_DURATION_FACTOR,
        metavar="FACTOR",
        help=f"report cases this many times slower or faster, by at least {MIN_DURATION_DELTA:g} s "
        f"(default {DEFAULT_DURATION_FACTOR:g})",
    )
    return parser


def merge_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(prog="tprune merge", description="Merge the JSON reports of the shards of one run.")
    parser.add_argument("out", metavar="OUT.json", help="the merged report to write")
    parser.add_argument("inputs", nargs="+", metavar="IN.json", help="shard reports (--tprune-shard K/N) of one run")
    return parser


def parse_or_status(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status argparse chose (0 after --help, 2 for a usage error)."""
    try:
        return parser.parse_args(list(argv))
    except UsageExit as err:
        print(f"{parser.prog}: error: {err} (see '{parser.prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def emit(text: str) -> None:
    """Write to stdout; a closed pipe (``| head``) is not an error worth a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet


def compare_main(argv: Sequence[str]) -> int:
    """``tprune compare OLD.json NEW.json [--format F] [--duration-threshold X]``: 0, 1 regressed, 2 bad input."""
    args = parse_or_status(compare_parser(), argv)
    if isinstance(args, int):
        return args
    if not args.duration_threshold > 1 or math.isinf(args.duration_threshold):
        print(
            f"tprune compare: error: --duration-threshold must be a factor above 1, got {args.duration_threshold:g}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        old, new = load_report(args.old), load_report(args.new)
        comparison = compare_reports(old, new, args.duration_threshold)
    except ReportError as err:
        print(f"tprune compare: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    emit(RENDERERS[args.format](comparison))
    return comparison.exit_status


# --- merge ----------------------------------------------------------------------------------------------------------

MERGE_FREE_ENV = ("platform",)  # may differ between the machines of one run's shards (kernel patch level)


def merge_environment(reports: list[Report]) -> dict[str, Any]:
    """The common environment; library versions, python, device, CUDA must agree, platforms are joined."""
    first = reports[0]
    for report in reports[1:]:
        for name, old, new in dict_changes(first.environment, report.environment):
            if name not in MERGE_FREE_ENV:
                raise ReportError(
                    f"{report.path} ran with {name} {fmt_value(new)}, {first.path} with {fmt_value(old)}: "
                    "merge only the shards of one run"
                )
    merged = dict(first.environment)
    for name in MERGE_FREE_ENV:
        values = sorted({str(r.environment[name]) for r in reports if name in r.environment})
        if values:
            merged[name] = " | ".join(values)
    return merged


def _shard(settings: dict[str, Any]) -> tuple[int, int] | None:
    shard = settings.get("shard")
    if isinstance(shard, list | tuple) and len(shard) == 2 and all(isinstance(n, int) for n in shard):
        return int(shard[0]), int(shard[1])
    return None


def merge_settings(reports: list[Report]) -> tuple[dict[str, Any], str | None]:
    """The common settings (all but the shard must agree) and a warning when shards are missing."""
    first = reports[0]
    for report in reports[1:]:
        for name, old, new in dict_changes(first.settings, report.settings):
            if name not in ("shard", "merged_shards"):
                raise ReportError(
                    f"{report.path} ran with {name} {fmt_value(new)}, {first.path} with {fmt_value(old)}: "
                    "merge only the shards of one run"
                )
    shards = [s for s in (_shard(r.settings) for r in reports) if s is not None]
    merged = {k: v for k, v in first.settings.items() if k not in ("shard", "merged_shards")}
    merged["shard"] = None
    if not shards:
        return merged, None
    totals = {total for _, total in shards}
    if len(totals) > 1:
        raise ReportError(f"the reports are shards of different splits ({', '.join(f'{k}/{n}' for k, n in shards)})")
    total = totals.pop()
    merged["merged_shards"] = [list(s) for s in sorted(set(shards))]
    missing = [k for k in range(1, total + 1) if (k, total) not in shards]
    if not missing:
        return merged, None
    return merged, f"shard(s) {shard_ranges(missing, total)} missing: the merged report covers part of the run"


def shard_ranges(numbers: list[int], total: int) -> str:
    """``2/32, 5-32/32``: sorted shard numbers with consecutive runs folded, so 28 missing shards read as one."""
    runs: list[list[int]] = []
    for k in numbers:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{run[0]}/{total}" if len(run) == 1 else f"{run[0]}-{run[-1]}/{total}" for run in runs)


def merge_cases(reports: list[Report]) -> list[Case]:
    """All cases, sorted as a report sorts them; the same nodeid in two reports is an error."""
    seen: dict[str, str] = {}
    cases: list[Case] = []
    for report in reports:
        for case in report.cases:
            if case["nodeid"] in seen:
                raise ReportError(f"case {case['nodeid']} is in both {seen[case['nodeid']]} and {report.path}")
            seen[case["nodeid"]] = report.path
            cases.append(case)
    return sorted(cases, key=lambda c: (c["model"], c["config_id"], c["nodeid"]))


def _union(reports: Iterable[Report], name: str) -> list[Any]:
    values: set[str] = set()
    for report in reports:
        found = report.document.get(name)
        values |= {str(v) for v in found} if isinstance(found, list) else set()
    return sorted(values)


def merge_reports(reports: list[Report]) -> tuple[dict[str, Any], str | None]:
    """One report document from the shards of one run, and a warning (missing shards) or None."""
    settings, warning = merge_settings(reports)
    finished = sorted(str(r.document["finished"]) for r in reports if r.document.get("finished"))
    document = {
        **reports[0].document,
        **({"finished": finished[-1]} if finished else {}),
        "environment": merge_environment(reports),
        "settings": settings,
        "unused_goldens": _union(reports, "unused_goldens"),
        "golden_written": _union(reports, "golden_written"),
        "cases": merge_cases(reports),
    }
    return document, warning


def merge_main(argv: Sequence[str]) -> int:
    """``tprune merge OUT.json IN.json...``: 0 written, 2 bad or inconsistent input."""
    args = parse_or_status(merge_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        reports = [load_report(path) for path in args.inputs]
        document, warning = merge_reports(reports)
    except ReportError as err:
        print(f"tprune merge: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        write_json_atomic(Path(args.out), document)
    except OSError as err:
        print(f"tprune merge: error: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    if warning:
        print(f"tprune merge: warning: {warning}", file=sys.stderr)
    emit(f"tprune merge: {len(reports)} report(s), {len(document['cases'])} case(s) -> {args.out}\n")
    return EXIT_OK

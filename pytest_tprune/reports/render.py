"""Render a :class:`~pytest_tprune.reports.compare.Comparison` as text, markdown or JSON."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from pytest_tprune.reports.compare import (
    FIGURE_LABELS,
    GROUPS,
    MIN_DURATION_DELTA,
    SUMMARY_WORDS,
    CaseChange,
    Comparison,
    DurationChange,
    FallbackChange,
    FiguresChange,
    SpeedupChange,
)
from pytest_tprune.reports.fallbacks import Finding
from pytest_tprune.reports.render_json import render_json
from pytest_tprune.reports.schema import FAILING, Case

DETAIL_GROUPS = ("regressions", "changed")
"""Groups whose failing cases show their failure's whole message (a golden diff), not only its first line."""
TEXT_DETAIL_LINES = 40  # the terminal shows this much of a detail; the markdown shows it all, folded

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


def fmt_cpu(change: DurationChange) -> str:
    """``CPU 1.90 s -> 2.10 s`` when both reports timed the case's CPU, else empty."""
    if change.old_cpu is None or change.new_cpu is None:
        return ""
    return f"CPU {change.old_cpu:.2f} s -> {change.new_cpu:.2f} s"


def fmt_load(load: Any) -> str:
    """A run's 1-minute load average as ``0.52 -> 1.80`` (start -> end), ``unknown`` when not recorded."""
    if not isinstance(load, dict):
        return "unknown"
    start, end = load.get("start"), load.get("end")
    text = " -> ".join(f"{v:.2f}" if isinstance(v, int | float) else "?" for v in (start, end))
    shards = load.get("shards")
    return f"{text} (highest of {shards} shards)" if isinstance(shards, int) and shards > 1 else text


def load_line(comparison: Comparison) -> str | None:
    """What made the two runs' wall times (in)comparable: each run's machine load at its start and end."""
    old, new = comparison.load
    if old is None and new is None:
        return None
    return f"machine load (1-min average, start -> end): old run {fmt_load(old)}, new run {fmt_load(new)}"


def fmt_finding_value(finding: Finding, value: Any) -> str:
    return f"{value:.2%}" if finding.kind == "kept" else str(value)


def failure_detail(case: CaseChange) -> list[str]:
    """The new row's whole failure message as lines, when it is failing and has more than its first line."""
    row = case.new
    if row is None or row.get("outcome") not in FAILING or not isinstance(row.get("detail"), str):
        return []
    lines: list[str] = row["detail"].splitlines()
    return lines if len(lines) > 1 else []


def environment_line(comparison: Comparison, quote: Callable[[str], str] = str) -> str:
    """``timm 1.0.29 -> 1.0.31, torch-pruning 1.6.0 -> 1.6.1``, or 'unchanged'."""
    parts = [f"{n} {quote(fmt_value(o))} -> {quote(fmt_value(v))}" for n, o, v in comparison.environment]
    return ", ".join(parts) if parts else "unchanged"


def unchanged_line(comparison: Comparison, quote: Callable[[str], str] = str) -> str:
    return ", ".join(f"{n} {quote(fmt_value(v))}" for n, v in comparison.unchanged_environment if n != "platform")


def summary_line(comparison: Comparison) -> str:
    """``REGRESSED: 1 newly failing, 1 disappeared, ...``: the verdict and the non-empty groups."""
    parts = [f"{n} {SUMMARY_WORDS[name]}" for name, n in comparison.counts().items() if n]
    if comparison.speedups:
        parts.append(f"{len(comparison.speedups)} with a speed-up drop")
    verdict = comparison.verdict.upper()
    details = ", ".join(parts) if parts else "no differences"
    return f"{verdict}: {details} ({comparison.compared} cases in both reports)"


def incomplete_line(comparison: Comparison) -> str | None:
    """One line naming the incomplete report(s): why it cannot be trusted, and that it sets exit status 1."""
    if not comparison.incomplete:
        return None
    which = "; ".join(f"{path} ({one_line(why, 200)})" for path, why in comparison.incomplete)
    return (
        f"INCOMPLETE report: {which}: it lists only the cases that finished, "
        "so this comparison cannot be trusted (exit status 1)"
    )


def speedup_title(comparison: Comparison) -> str:
    return (
        f"Speed-up drops: fell by more than {comparison.speedup_drop:.0%} (not regressions, "
        f"latency is as noisy as the machine) ({len(comparison.speedups)})"
    )


def fmt_speedup(change: SpeedupChange) -> str:
    """``2.09x -> 1.20x (-42.6%)``: the speed-up of the pruned model over the unpruned one, before and after."""
    return f"{change.old['speedup']:.2f}x -> {change.new['speedup']:.2f}x (-{change.drop:.1%})"


def fmt_latency(row: dict[str, Any]) -> str:
    """``5.85 -> 2.80 ms``: unpruned -> pruned forward time of one report's row."""

    def ms(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, int | float) else "?"

    return f"{ms(row.get('unpruned_ms'))} -> {ms(row.get('pruned_ms'))} ms"


def speedup_lines(comparison: Comparison) -> list[str]:
    """The speed-up section of the text output, apart from the groups; nothing when no speed-up fell."""
    if not comparison.speedups:
        return []
    lines = ["", speedup_title(comparison)]
    for change in comparison.speedups:
        threads = change.new.get("threads")
        lines.append(
            f"  {change.case.label}: {fmt_speedup(change)}; old {fmt_latency(change.old)}, "
            f"new {fmt_latency(change.new)} (batch {change.new.get('batch')}, {threads} thread(s))"
        )
    load = load_line(comparison)
    return [*lines, f"  {load}"] if load else lines


def duration_title(comparison: Comparison) -> str:
    return f"Duration changes: >= {comparison.duration_factor:g}x and >= {MIN_DURATION_DELTA:g} s"


# --- text -----------------------------------------------------------------------------------------------------------


def text_case_lines(case: CaseChange, with_detail: bool = False) -> list[str]:
    """A case in the text output: the outcome change, then its reason (and the rest of its message) and hint."""
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
    detail = failure_detail(case)[1:TEXT_DETAIL_LINES] if with_detail else []
    lines += [f"        {line}" for line in detail]
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


def text_fallback_lines(change: FallbackChange) -> list[str]:
    """A case that prunes less (or whose stock verdict changed): its outcomes, then one line per finding."""
    case = change.case
    lines = [f"  {case.label}: {describe(case.old)} -> {describe(case.new)}"]
    return lines + [f"      {one_line(finding.text())}" for finding in change.findings]


def text_duration_lines(change: DurationChange) -> list[str]:
    extra = "".join(f"; {part}" for part in (fmt_step(change), fmt_cpu(change)) if part)
    return [f"  {change.case.label}: {change.old:.2f} s -> {change.new:.2f} s ({fmt_factor(change)}{extra})"]


def render_text(comparison: Comparison) -> str:
    """The terminal output: header, one section per non-empty group, the verdict last."""
    lines = [f"tprune compare: {comparison.old_path} -> {comparison.new_path}"]
    incomplete = incomplete_line(comparison)
    if incomplete:
        lines.append(incomplete)
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
        load = load_line(comparison) if name == "durations" else None
        if load:
            lines.append(f"  {load}")
        for item in items:
            if isinstance(item, FiguresChange):
                lines += text_figures_lines(item)
            elif isinstance(item, DurationChange):
                lines += text_duration_lines(item)
            elif isinstance(item, FallbackChange):
                lines += text_fallback_lines(item)
            else:
                lines += text_case_lines(item, with_detail=name in DETAIL_GROUPS)
    lines += speedup_lines(comparison)
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
    return [
        [
            md_case(d.case),
            f"{d.old:.2f} s",
            f"{d.new:.2f} s",
            fmt_factor(d),
            fmt_step(d),
            fmt_cpu(d).removeprefix("CPU "),
        ]
        for d in changes
    ]


def md_fallback_rows(changes: list[FallbackChange]) -> list[list[str]]:
    """One row per finding; the case is named on its first row."""
    rows = []
    for change in changes:
        for index, f in enumerate(change.findings):
            case = f"{md_case(change.case)} ({describe(change.case.new)})" if index == 0 else ""
            old, new = fmt_finding_value(f, f.old), fmt_finding_value(f, f.new)
            rows.append([case, md_cell(f.what), md_cell(old), md_cell(new), md_cell(f.note)])
    return rows


def md_details(cases: list[CaseChange]) -> list[str]:
    """Each failing case's whole message (a golden diff: versions, modules golden => obtained), folded."""
    lines: list[str] = []
    for case in cases:
        detail = failure_detail(case)
        if not detail:
            continue
        fence = "````" if any("```" in line for line in detail) else "```"
        summary = html.escape(f"{case.label}: {describe(case.new)}, the whole message")
        lines += ["", f"<details><summary>{summary}</summary>", "", f"{fence}text", *detail, fence, "", "</details>"]
    return lines


def md_section(comparison: Comparison, name: str, title: str) -> list[str]:
    """One group as a heading and a table; nothing for an empty group."""
    items: list[Any] = getattr(comparison, name)
    if not items:
        return []
    intro: list[str] = []
    if name == "figures":
        table = md_table(["case", "figure", "before", "after", "change"], md_figure_rows(items))
    elif name == "durations":
        title = duration_title(comparison)
        load = load_line(comparison)
        intro = [load[0].upper() + load[1:], ""] if load else []
        table = md_table(["case", "before", "after", "change", "step", "CPU"], md_duration_rows(items))
    elif name in ("absorbed", "stock_better"):
        table = md_table(["case", "what", "before", "after", "note"], md_fallback_rows(items))
    else:
        table = md_table(["case", "before", "after", "reason / note"], md_case_rows(items))
        if name in DETAIL_GROUPS:
            table += md_details(items)
    return ["", f"### {title} ({len(items)})", "", *intro, *table]


def render_markdown(comparison: Comparison) -> str:
    """A pull-request comment: verdict heading, environment, one table per non-empty group."""

    def code(text: str) -> str:
        return f"`{text}`"

    verdict = {"regressed": "regressed", "incomplete": "incomplete report", "ok": "no regression"}[comparison.verdict]
    lines = [f"## tprune compare: {verdict}", "", f"**{summary_line(comparison)}**", ""]
    incomplete = incomplete_line(comparison)
    if incomplete:
        lines += [f"**{incomplete}**", ""]
    lines.append(f"`{comparison.old_path}` -> `{comparison.new_path}`")
    lines += ["", f"**Environment:** {environment_line(comparison, code)}"]
    unchanged = unchanged_line(comparison, code)
    if unchanged:
        lines += ["", f"Unchanged: {unchanged}"]
    for name, old, new in comparison.settings:
        lines += ["", f"**Settings differ:** {name} `{fmt_value(old)}` -> `{fmt_value(new)}`"]
    for name, title in GROUPS:
        lines += md_section(comparison, name, title)
    if comparison.speedups:
        rows = [
            [
                md_case(c.case),
                f"{c.old['speedup']:.2f}x",
                f"{c.new['speedup']:.2f}x",
                f"-{c.drop:.1%}",
                fmt_latency(c.old),
                fmt_latency(c.new),
            ]
            for c in comparison.speedups
        ]
        header = ["case", "speed-up before", "after", "drop", "old unpruned -> pruned", "new unpruned -> pruned"]
        lines += ["", f"### {speedup_title(comparison)}", "", *md_table(header, rows)]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Comparison], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}

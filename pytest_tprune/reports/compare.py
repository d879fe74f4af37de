"""Compare two run reports, and merge shard reports: guarding library upgrades.

``tprune compare OLD.json NEW.json`` reads two reports written by
``pytest --tprune-report`` (typically: the pinned, known-good torch/timm/
torch-pruning set and the candidate upgrade) and groups what differs:

* **regressions**: cases that did not fail in OLD and fail or error in NEW;
* **absorbed by fallbacks**: cases that prune less in NEW, though they may
  still pass: more groups left whole or skipped, a kept fraction grown by more
  than a tolerance, or a worse stock torch-pruning verdict
  (:mod:`pytest_tprune.reports.fallbacks`);
* **disappeared**: cases of OLD that NEW does not have;
* **fixed**: cases that failed or errored in OLD and pass in NEW;
* **stock better**: cases whose stock torch-pruning verdict improved;
* **changed behaviour**: every other outcome change (passed -> skipped,
  xfailed -> xpassed, still failing but at another check, ...), to review;
* **figures changed**: params and MACs (both counters: torch-pruning's and
  FlopCounterMode's) of cases present in both, largest relative change first;
* **appeared**: cases of NEW that OLD does not have;
* **durations**: cases at least FACTOR times slower or faster, by at least a second,
  shown with their CPU time and each run's machine load, which say whether
  the two wall times are comparable; never a regression;
* **speed-up drops**: cases whose measured speed-up of the pruned model over
  the unpruned one (``latency.speedup``, eager, batch 1) fell by more than
  ``--speedup-drop`` (default 25%), shown apart from the groups above and
  never deciding the exit status: latency is as noisy as the machine.

Exit status: 1 when anything regressed (a regression, a case absorbed by fallbacks or a disappeared case)
or when either report is incomplete (an interrupted run lists only the cases
that finished, so every "disappeared" and every "unchanged" is in doubt: the
comparison is still shown, with one line saying which report is incomplete),
0 otherwise, 2 with one line on stderr for bad input. A ``crashed`` case (its
xdist worker died) is failing: a regression when it did not fail before. A strict xfail that now
passes (``xpassed``) is changed behaviour, not a regression: the library got
better, and the run itself already fails until the known failure is dropped. A
case that appeared is never a regression, even when it fails: it has no past to
regress from (its outcome is shown in the appeared group).

``tprune merge OUT.json IN.json...`` merges the reports of the shards of one run
(``--tprune-shard K/N``) into one report that ``compare`` reads.

The renderers are in :mod:`pytest_tprune.reports.render`, shard merging in
:mod:`pytest_tprune.reports.merge`, the command lines in :mod:`pytest_tprune.cli`.
Only the standard library is imported here: comparing reports needs no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pytest_tprune.errors import EXIT_FAILED, EXIT_OK
from pytest_tprune.reports.fallbacks import DEFAULT_KEPT_TOLERANCE, Finding, fallback_findings
from pytest_tprune.reports.schema import FAILING, MACHINE_LOAD_KEY, Case, Key, Report, ReportError

FORMATS = ("text", "markdown", "json")
COMPARE_SCHEMA = 1  # version of the ``--format json`` document
DEFAULT_DURATION_FACTOR = 2.0
MIN_DURATION_DELTA = 1.0  # seconds: a duration change below this is noise, whatever its factor
DEFAULT_SPEEDUP_DROP = 0.25
"""How much a case's speed-up may fall (relative: 2.0x -> 1.5x is 25%) before compare shows it."""

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
ENV_ORDER = (
    "torch",
    "timm",
    "torch-pruning",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "python",
    "cuda",
    "cudnn",
    "device",
    "platform",
)

# Group name -> title, in the order they are shown; the first three make the exit status 1.
GROUPS: tuple[tuple[str, str], ...] = (
    ("regressions", "Regressions: newly failing"),
    ("absorbed", "Regressions: absorbed by fallbacks (pruned less, or stock torch-pruning worse)"),
    ("disappeared", "Disappeared: counted as regressions"),
    ("fixed", "Fixed: newly passing"),
    ("stock_better", "Better: stock torch-pruning improved"),
    ("changed", "Changed behaviour: to review"),
    ("figures", "Figures changed: largest relative change first"),
    ("appeared", "Appeared: not regressions"),
    ("durations", "Duration changes"),
)
# How the verdict line counts each group: "2 newly failing, 1 disappeared, ...".
SUMMARY_WORDS = {
    "regressions": "newly failing",
    "absorbed": "absorbed by fallbacks",
    "disappeared": "disappeared",
    "fixed": "fixed",
    "stock_better": "with a better stock verdict",
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
    ("passed", "interrupted"): "did not finish: its run was interrupted",
}


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
class FallbackChange:
    """A case of both reports that prunes less in NEW (or whose stock verdict changed): what, case by case."""

    case: CaseChange
    findings: list[Finding]


@dataclass(frozen=True)
class DurationChange:
    """A notable duration change, with the step that changed most and CPU times when both reports have them."""

    case: CaseChange
    old: float
    new: float
    step: str | None = None
    step_delta: float = 0.0
    old_cpu: float | None = None
    new_cpu: float | None = None

    @property
    def factor(self) -> float:
        """How many times slower (> 1) or faster (< 1)."""
        return math.inf if self.old == 0 else self.new / self.old


@dataclass(frozen=True)
class SpeedupChange:
    """A case whose pruned-over-unpruned speed-up fell by more than the threshold, with both latency rows."""

    case: CaseChange
    old: dict[str, Any]
    new: dict[str, Any]

    @property
    def drop(self) -> float:
        """The relative fall of the speed-up: 0.4 when 2.0x became 1.2x."""
        return 1 - float(self.new["speedup"]) / float(self.old["speedup"])


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
    kept_tolerance: float = DEFAULT_KEPT_TOLERANCE
    load: tuple[Any, Any] = (None, None)
    """Each report's machine load (``environment.load_1min``: start and end of its run), for the durations."""
    regressions: list[CaseChange] = field(default_factory=list)
    absorbed: list[FallbackChange] = field(default_factory=list)
    disappeared: list[CaseChange] = field(default_factory=list)
    fixed: list[CaseChange] = field(default_factory=list)
    stock_better: list[FallbackChange] = field(default_factory=list)
    changed: list[CaseChange] = field(default_factory=list)
    figures: list[FiguresChange] = field(default_factory=list)
    appeared: list[CaseChange] = field(default_factory=list)
    durations: list[DurationChange] = field(default_factory=list)
    incomplete: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of each report whose run did not finish: the comparison cannot be trusted."""
    speedup_drop: float = DEFAULT_SPEEDUP_DROP
    speedups: list[SpeedupChange] = field(default_factory=list)
    """Cases whose speed-up fell by more than ``speedup_drop``: shown apart, not a group, never the exit status."""

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.absorbed or self.disappeared)

    @property
    def exit_status(self) -> int:
        return EXIT_FAILED if self.regressed or self.incomplete else EXIT_OK

    @property
    def verdict(self) -> str:
        """``regressed``, ``incomplete`` (nothing regressed, but a report is incomplete) or ``ok``."""
        if self.regressed:
            return "regressed"
        return "incomplete" if self.incomplete else "ok"

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
    cpu_before, cpu_after = _number(case.old.get("cpu_time")), _number(case.new.get("cpu_time"))
    return DurationChange(case, before, after, step, delta, cpu_before, cpu_after)


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


def _speedup(case: Case) -> dict[str, Any] | None:
    """The case's ``latency`` row when it has a positive speed-up, else None (not measured, or an error)."""
    latency = case.get("latency")
    if not isinstance(latency, dict):
        return None
    value = _number(latency.get("speedup"))
    return latency if value is not None and value > 0 else None


def speedup_change(case: CaseChange, threshold: float) -> SpeedupChange | None:
    """A :class:`SpeedupChange` when both reports measured the case and its speed-up fell by more than ``threshold``."""
    assert case.old is not None and case.new is not None
    before, after = _speedup(case.old), _speedup(case.new)
    if before is None or after is None:
        return None
    change = SpeedupChange(case, before, after)
    return change if change.drop > threshold + 1e-12 else None


def _env_order(name: str) -> tuple[int, str]:
    return (ENV_ORDER.index(name) if name in ENV_ORDER else len(ENV_ORDER), name)


def dict_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for every key whose value differs; an absent key reads as None."""
    names = sorted(old.keys() | new.keys(), key=_env_order)
    return [(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)]


def comparable_environment(report: Report) -> dict[str, Any]:
    """The environment without the machine's load, which differs between any two runs and is shown with durations."""
    return {name: value for name, value in report.environment.items() if name != MACHINE_LOAD_KEY}


def compare_reports(
    old: Report,
    new: Report,
    duration_factor: float = DEFAULT_DURATION_FACTOR,
    kept_tolerance: float = DEFAULT_KEPT_TOLERANCE,
    speedup_drop: float = DEFAULT_SPEEDUP_DROP,
) -> Comparison:
    """Match the cases of two reports by (model, config_id) and sort every difference into its group."""
    ambiguous = ambiguous_pairs(old, new)
    before, after = index_cases(old, ambiguous), index_cases(new, ambiguous)
    old_env, new_env = comparable_environment(old), comparable_environment(new)
    env_changes = dict_changes(old_env, new_env)
    changed_names = {name for name, _, _ in env_changes}
    result = Comparison(
        old_path=old.path,
        new_path=new.path,
        environment=env_changes,
        unchanged_environment=[
            (n, v) for n, v in sorted(new_env.items(), key=lambda i: _env_order(i[0])) if n not in changed_names
        ],
        settings=dict_changes(old.settings, new.settings),
        compared=len(before.keys() & after.keys()),
        duration_factor=duration_factor,
        kept_tolerance=kept_tolerance,
        load=(old.environment.get(MACHINE_LOAD_KEY), new.environment.get(MACHINE_LOAD_KEY)),
        incomplete=[(r.path, r.incomplete_reason) for r in (old, new) if not r.complete],
        speedup_drop=speedup_drop,
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
    result.speedups.sort(key=lambda d: (-d.drop, d.case.key))
    return result


def sort_common_case(result: Comparison, case: CaseChange) -> None:
    """File a case present in both reports under its outcome, figures and duration groups."""
    assert case.old is not None and case.new is not None
    group = outcome_group(case.old, case.new)
    if group is not None:
        getattr(result, group).append(case)
    worse, better = fallback_findings(case.old, case.new, result.kept_tolerance)
    if worse:
        result.absorbed.append(FallbackChange(case, worse))
    if better is not None:
        result.stock_better.append(FallbackChange(case, [better]))
    changes = figure_changes(case.old, case.new)
    if changes:
        result.figures.append(FiguresChange(case, changes))
    duration = duration_change(case, result.duration_factor)
    if duration is not None:
        result.durations.append(duration)
    speedup = speedup_change(case, result.speedup_drop)
    if speedup is not None:
        result.speedups.append(speedup)

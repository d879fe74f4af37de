"""Run the full timm zoo through the suite, shard by shard, resumably, and render its map.

Why: the zoo is 1371 models, about 3.5 hours of a 2-core machine, longer than
one working session. Each shard's JSON report is kept in a committed folder
(``docs/zoo-run/``), so a run spans sessions: every invocation runs only the
shards that have no report yet from this very engine and these libraries, and
re-renders the map from the reports present. A report made by another
revision of pytest-tprune (its fingerprint is in the report's environment) or
other library versions is run again rather than merged: one table, one engine.
So is a report marked ``"complete": false`` (the shard was interrupted, or
its workers crashed past the restart limit): it lists only the cases that
finished, so counting it as done would drop the others from the map.

Each shard is the README's zoo-mode command in a child pytest process, run
from this checkout with ``PYTHONPATH`` pointing at it, so a clone of the
repository at a fixed commit runs its own code while the working tree is
being edited. The plugin writes the report atomically at the end of the
session, so a shard that is interrupted leaves nothing half-written.

Usage::

    python benchmarks/zoo_run.py                       # every missing shard, then the map
    python benchmarks/zoo_run.py --stop-after 120      # start no shard after 120 minutes
    python benchmarks/zoo_run.py --only 3,4 --workers 2
    python benchmarks/zoo_run.py --status              # which shards are done, with which engine
    python benchmarks/zoo_run.py --table-only          # re-render docs/zoo-full.md
    python benchmarks/zoo_run.py --summary             # the figures docs/zoo.md quotes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "docs" / "zoo-run"
PAGE = ROOT / "docs" / "zoo-full.md"
TITLE = "The timm zoo: prunability by family"
SHARDS = 32
TIMEOUT_S = 60
INPUT_CAP = 224
RUN_CONTROLLED = ("python", "device", "torch", "timm", "torch-pruning", "pytest-tprune")
"""Environment entries that must match for a shard's report to count as done (platform may differ)."""


def zoo_command(shard: int, shards: int, workers: int, timeout: int, report: Path) -> list[str]:
    """The README's zoo-mode pytest command for one shard."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_zoo.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        str(workers),
        "--tprune-models=*",
        "--tprune-ratios=0.5",
        "--tprune-modes=local",
        "--tprune-checks=forward,shapes,reduction",
        f"--tprune-input-size={INPUT_CAP}",
        f"--tprune-timeout={timeout}",
        f"--tprune-shard={shard}/{shards}",
        f"--tprune-report={report}",
    ]


def current_environment() -> dict[str, Any]:
    """What this checkout would write in a report's environment, without importing torch."""
    sys.path.insert(0, str(ROOT))
    from pytest_tprune.engine.identity import run_identity

    return {**run_identity(), "device": "cpu"}


def report_path(shard: int, shards: int) -> Path:
    return REPORTS / f"shard-{shard:02d}-of-{shards:02d}.json"


def stale_because(path: Path, env: dict[str, Any]) -> str | None:
    """Why the shard's report does not count as done (None when it does)."""
    if not path.exists():
        return "no report"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        found = document.get("environment") or {}
    except (OSError, ValueError, AttributeError) as err:
        return f"unreadable report ({err})"
    if document.get("complete", True) is False:  # reports from before "complete" existed were all complete
        return f"incomplete report ({document.get('incomplete_reason') or 'the run was interrupted'})"
    changed = [f"{k} {found.get(k)} != {env.get(k)}" for k in RUN_CONTROLLED if found.get(k) != env.get(k)]
    return "; ".join(changed) or None


def run_shard(shard: int, shards: int, workers: int, timeout: int) -> bool:
    """Run one shard into its report; False when pytest itself failed (not a case)."""
    path = report_path(shard, shards)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start, started_at = time.monotonic(), time.time()
    log = path.with_suffix(".log")
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            zoo_command(shard, shards, workers, timeout, path), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    minutes = (time.monotonic() - start) / 60
    if done.returncode not in (0, 1):  # 0: all passed, 1: some cases failed; anything else is a broken run
        print(f"shard {shard}/{shards}: pytest exited {done.returncode} after {minutes:.1f} min; see {log}")
        return False
    log.unlink(missing_ok=True)
    sidecar = path.with_name(f"{path.stem}.incomplete.json")  # where the plugin puts an incomplete run's report
    if sidecar.exists() and sidecar.stat().st_mtime >= started_at:
        print(f"shard {shard}/{shards}: INCOMPLETE after {minutes:.1f} min; kept {path.name}, see {sidecar.name}")
        return True
    document = json.loads(path.read_text(encoding="utf-8"))
    counts = Counter(c["outcome"] for c in document["cases"])
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    note = "" if document.get("complete", True) is not False else f"; INCOMPLETE: {document.get('incomplete_reason')}"
    print(f"shard {shard}/{shards}: {len(document['cases'])} cases in {minutes:.1f} min: {tally}{note}", flush=True)
    return True


def present_reports(shards: int) -> list[Path]:
    """The shard reports on disk, in shard order (the map and the summary read the same set)."""
    return [path for path in (report_path(k, shards) for k in range(1, shards + 1)) if path.exists()]


def render_table(shards: int) -> None:
    """Render the map from every report present (a partial run says which shards are missing)."""
    paths = [str(path) for path in present_reports(shards)]
    if not paths:
        print("no shard reports yet: nothing to render")
        return
    command = [sys.executable, "-m", "pytest_tprune", "table", *paths, "--title", TITLE, "--out", str(PAGE)]
    subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


OUTCOME_LABELS = {
    ("passed", None): "pass every check",
    ("skipped", None): "skipped (memory guard or input)",
    ("failed", "timeout"): "timeouts",
    ("xfailed", "timeout"): "known failures (hang)",
    ("failed", "reduction"): "prune nothing (reduction check)",
    ("failed", "shapes"): "break the shape rule",
    ("failed", "prune:forward"): "forward fails (prune step)",
}
"""How ``--summary`` names each (outcome, failed check) pair; any other pair is shown raw."""


def summarize(shards: int, listed: int = 20) -> None:
    """Print the zoo-mode figures docs/zoo.md quotes, from every report present.

    Why: the summary in the docs is written by hand from these counts; deriving
    them from the reports keeps the page honest when shards are added or re-run.
    """
    present = present_reports(shards)
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in present]
    cases = [case for report in reports for case in report["cases"]]
    if not cases:
        print("no shard reports yet: nothing to summarize")
        return
    engines = sorted({str(r["environment"].get("pytest-tprune")) for r in reports})
    print(f"{len(present)} of {shards} shards, engine {', '.join(engines)}: {len(cases)} models")
    groups: dict[tuple[str, str | None], list[str]] = {}
    for case in cases:
        groups.setdefault((case["outcome"], case["failed_check"]), []).append(case["model"])
    for key, models in sorted(groups.items(), key=lambda item: -len(item[1])):
        label = OUTCOME_LABELS.get(key, f"{key[0]} {key[1]}")
        more = f", ... ({len(models) - listed} more)" if len(models) > listed else ""
        print(f"  {len(models):4d} {label}: {', '.join(sorted(models)[:listed])}{more}")
    passed = len(groups.get(("passed", None), []))
    ran = len(cases) - len(groups.get(("skipped", None), []))
    finished = ran - len(groups.get(("failed", "timeout"), [])) - len(groups.get(("xfailed", "timeout"), []))
    for whole, what in ((len(cases), "of all"), (ran, "of those run"), (finished, "of those finished")):
        if whole:  # a shard of memory-guard skips only has no rate among those run
            print(f"  pass rate {what}: {passed}/{whole} = {100 * passed / whole:.0f}%")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=SHARDS, help=f"how many shards split the zoo ({SHARDS})")
    parser.add_argument("--only", default="", help="comma-separated shard numbers to run (default: all missing)")
    parser.add_argument("--workers", type=int, default=2, help="xdist workers per shard (2)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help=f"per-case time limit, s ({TIMEOUT_S})")
    parser.add_argument("--stop-after", type=float, default=None, help="start no shard after this many minutes")
    parser.add_argument("--status", action="store_true", help="list the shards and whether each is done")
    parser.add_argument("--table-only", action="store_true", help="only re-render the map")
    parser.add_argument("--summary", action="store_true", help="print the outcome counts over the reports present")
    args = parser.parse_args(argv)
    if args.shards < 1 or args.workers < 1 or args.timeout < 1:
        parser.error("--shards, --workers and --timeout must be positive")
    try:
        args.only = sorted({int(k) for k in args.only.split(",") if k.strip()})
    except ValueError:
        parser.error(f"--only takes comma-separated shard numbers, got {args.only!r}")
    if any(not 1 <= k <= args.shards for k in args.only):
        parser.error(f"--only: shard numbers run from 1 to {args.shards}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_only:
        render_table(args.shards)
        return 0
    if args.summary:
        summarize(args.shards)
        return 0
    env = current_environment()
    wanted = args.only or list(range(1, args.shards + 1))
    why = {k: stale_because(report_path(k, args.shards), env) for k in wanted}  # each report read once
    if args.status:
        for k, reason in why.items():
            print(f"shard {k}/{args.shards}: {reason or 'done'}")
        return 0
    todo = [k for k, reason in why.items() if reason]
    print(f"engine {env['pytest-tprune']}; {len(todo)} shard(s) to run: {', '.join(map(str, todo)) or 'none'}")
    start = time.monotonic()
    for shard in todo:
        if args.stop_after is not None and (time.monotonic() - start) / 60 >= args.stop_after:
            print(f"--stop-after {args.stop_after:g} min reached: shards left for the next run")
            break
        if not run_shard(shard, args.shards, args.workers, args.timeout):
            return 1
    render_table(args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())

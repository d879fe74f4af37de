"""What one pruning case costs through the suite, next to the bare torch-pruning recipe.

Why: the floor for a case is build the model, one trace for the dependency
graph, the pruning, one forward and the counting. Everything the suite adds
(checks, goldens, bookkeeping) is overhead, and this script measures it, per
model and per step, so that speed work is led by figures rather than guesses.

For every model, in fresh subprocesses (so peak RSS is the case's own):

* (a) **bare**: seeded ``timm.create_model(pretrained=False)``, MetaPruner with
  L2 group magnitude at ratio 0.5, uniform, classifier ignored, heads for
  attention; one forward; ``count_ops_and_params`` before and after.
* (b) **suite**: ``pytest`` on that one case (``r0.50-local``, every check,
  export included, goldens compared, latency timed) in a scratch project; its
  goldens are written by an unmeasured first run, so the measured run is the
  CI path.
* (c) **amortised**: the project's own ``tests/test_zoo.py`` narrowed to the
  model, in one process, every check on (export in every case, not only at the
  seed's config as the suite does): the model's cases of the default selection
  (the grid, ``round_to=8``, Taylor and head pruning for a grid model; the
  run's four ratio x mode configs for any other), measured time over the
  cases, so what a model's cases share (the pristine model, its baseline, the
  perturbed copy, the walk caches) is paid once, as in CI. Goldens again come
  from an unmeasured first run. The input is the model's own size on all three
  sides (the project's ``tprune_input_size`` cap is lifted with ``-o``).

Each side runs ``--repeats`` times (default ``REPEATS``) and keeps its fastest run.

Both sides are timed from after the imports (the suite's figure is the test
item's setup + call + teardown), because imports are paid once per process,
not once per case. The breakdown of (b) comes from the plugin's JSON report.

``--throughput`` then runs the project's grid (``tests/test_zoo.py::test_prune``)
with ``-n 1`` and ``-n 2`` and reports cases per minute, the speed-up and each
worker's memory high-water mark against the largest single case.

Usage::

    python benchmarks/case_cost.py [--models a,b] [--repeats N] [--no-amortised] [--throughput] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("test_vit", "resnet50", "vit_base_patch32_224", "convnext_tiny", "efficientnet_b0")
RATIO = 0.5
SEED = 0
HEAVIEST_GRID_CASES = ("vit_base_patch32_224", "test_coatnet", "test_maxvit")
"""The grid's largest single cases by peak memory: ViT-B/32, and the two known hangs, whose
dependency-graph loop grows memory until the time limit stops it."""
BREAKDOWN = (
    "pristine",
    "build",
    "count",
    "trace",
    "prune",
    "adapt",
    "forward",
    "shapes",
    "groups",
    "equivalence",
    "export",
    "stock",
    "golden",
    "reduction",
    "latency",
)
"""The steps of a case the plugin's JSON report times, in the order a case runs them (``golden`` includes
``stock``, the stock run it records; ``latency`` is timed last, from the report row)."""
ALL_CHECKS = "forward,shapes,groups,equivalence,export,golden,reduction"
"""Every check, the opt-in ``export`` included."""
UNCAPPED = ("-o", "tprune_input_size=")
"""Lifts the project's input cap (``tprune_input_size`` in pyproject.toml): every side runs at the model's own size."""

BARE_CHILD = r"""
import json, resource, sys, time
import timm, torch, torch_pruning as tp
from pytest_tprune.engine.adapters import apply_adapters
from pytest_tprune.engine.models import timm_input_size
from pytest_tprune.engine.recipe import attention_heads, classifier_layers

name, ratio, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
torch.manual_seed(seed)
model = timm.create_model(name, pretrained=False).eval()
inputs = torch.randn(1, *timm_input_size(name), generator=torch.Generator().manual_seed(seed))
built = time.perf_counter()
macs_before, params_before = tp.utils.count_ops_and_params(model, inputs)
pruner = tp.pruner.MetaPruner(
    model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
    ignored_layers=classifier_layers(model), num_heads=attention_heads(model), global_pruning=False,
)
pruner.step()
apply_adapters(model, {})  # the head_dim / norm fixes today's timm needs (the seed script patched by hand)
with torch.no_grad():
    out = model(inputs)
macs_after, params_after = tp.utils.count_ops_and_params(model, inputs)
done = time.perf_counter()
print(json.dumps({
    "work_s": done - start, "build_s": built - start, "params": [params_before, params_after],
    "macs": [macs_before, macs_after], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

SUITE_CHILD = r"""
import json, resource, sys, time
import pytest

class Durations:
    def __init__(self):
        self.seconds = {}
    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

durations = Durations()
start = time.perf_counter()
code = pytest.main(sys.argv[1:], plugins=[durations])
print(json.dumps({
    "exit": int(code), "wall_s": time.perf_counter() - start, "items": durations.seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

TEST_FILE = "def test_prune(tprune_case):\n    tprune_case.check_all()\n"
"""The lone case: ``check_all()`` with ``--tprune-checks`` naming every check (export included)."""


def run_json(args: list[str], cwd: Path | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run a child Python and parse the JSON object on its last stdout line."""
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"child failed ({done.returncode}): {' '.join(args[:3])}\n{tail}")
    return dict(json.loads(lines[-1]))


REPEATS = 3
"""Each side is measured this many times and the fastest run kept: on a shared 2-core machine a
single run can be off by 2x, and the minimum is the figure closest to the code's own cost."""


def bare(model: str, repeats: int = REPEATS) -> dict[str, Any]:
    runs = [run_json(["-c", BARE_CHILD, model, str(RATIO), str(SEED)]) for _ in range(repeats)]
    return min(runs, key=lambda r: float(r["work_s"]))


def child_args(model: str, *extra: str) -> list[str]:
    """``SUITE_CHILD`` arguments that run ``model``'s cases in one process without xdist, every check on, at the
    model's own input size."""
    return [
        "-c",
        SUITE_CHILD,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        f"--tprune-models={model}",
        f"--tprune-seed={SEED}",
        f"--tprune-checks={ALL_CHECKS}",
        *UNCAPPED,
        *extra,
    ]


def one_case_args(model: str, *extra: str) -> list[str]:
    """:func:`child_args` narrowed to ``model``'s r0.50-local case."""
    return child_args(model, f"--tprune-ratios={RATIO}", "--tprune-modes=local", *extra)


def suite(model: str, scratch: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """One case through pytest: an unmeasured run writes its goldens, the measured one compares."""
    project = scratch / model
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (project / "test_case.py").write_text(TEST_FILE)
    report = project / "report.json"
    common = one_case_args(model, "--rootdir", str(project), str(project / "test_case.py"))
    run_json([*common, "--tprune-update-golden"], cwd=project)
    runs = []
    for _ in range(repeats):
        measured = run_json([*common, f"--tprune-report={report}"], cwd=project)
        if measured["exit"] != 0:
            raise SystemExit(f"the suite failed on {model}: exit {measured['exit']}")
        (row,) = json.loads(report.read_text())["cases"]
        measured["case_s"] = sum(measured["items"].values())
        measured["durations"] = row["durations"]
        runs.append(measured)
    return min(runs, key=lambda r: float(r["case_s"]))


def amortised(model: str, scratch: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """``model``'s cases of the default selection in one process (``tests/test_zoo.py`` narrowed to it), every
    check on: measured seconds per case, the fastest of ``repeats`` runs, goldens written by a first run."""
    golden = scratch / f"amortised-{model}"
    report = scratch / f"amortised-{model}.json"
    args = child_args(model, str(ROOT / "tests" / "test_zoo.py"), f"--tprune-golden-dir={golden}")
    run_json([*args, "--tprune-update-golden"], cwd=ROOT)
    runs = []
    for _ in range(repeats):
        measured = run_json([*args, f"--tprune-report={report}"], cwd=ROOT)
        rows = json.loads(report.read_text())["cases"]
        failed = [row["nodeid"] for row in rows if row["outcome"] not in ("passed", "xfailed")]
        if measured["exit"] != 0 or failed:
            raise SystemExit(f"the suite failed on {model}'s cases: exit {measured['exit']}, {failed}")
        measured["cases"] = len(rows)
        measured["per_case_s"] = sum(measured["items"].values()) / len(rows)
        measured["configs"] = sorted(row["config_id"] for row in rows)
        runs.append(measured)
    return min(runs, key=lambda r: float(r["per_case_s"]))


def single_case_peak(model: str, scratch: Path) -> float:
    """Peak RSS of one process running just ``model``'s r0.50-local grid case (known failures included)."""
    project = scratch / f"alone-{model}"
    project.mkdir(parents=True, exist_ok=True)
    grid_test = f"{ROOT / 'tests' / 'test_zoo.py'}::test_prune"
    args = one_case_args(model, f"--tprune-golden-dir={project}", "--tprune-update-golden", grid_test)
    return float(run_json(args, cwd=ROOT)["peak_rss_mb"])


def grid_throughput(workers: int, report: Path) -> dict[str, Any]:
    args = ["-m", "pytest", "tests/test_zoo.py::test_prune", "-q", "-p", "no:cacheprovider", "-n", str(workers)]
    args.append("--tprune-warn-unused")  # the other tests' goldens are unused by this narrowed run, not stale
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args, f"--tprune-report={report}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"grid run with -n {workers} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    cases = json.loads(report.read_text())["cases"]
    by_worker: dict[str, float] = {}
    for case in cases:
        if case.get("worker") and case.get("peak_rss_mb"):  # cases that stopped early carry no figures
            worker = case["worker"]
            by_worker[worker] = max(by_worker.get(worker, 0.0), case["peak_rss_mb"])
    per_min = len(cases) / wall * 60
    return {"workers": workers, "cases": len(cases), "wall_s": wall, "per_min": per_min, "peaks": by_worker}


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "timm", "torch-pruning", "pytest", "pytest-xdist")
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def machine() -> str:
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"


def render(rows: list[dict[str, Any]], grid: list[dict[str, Any]], single_peak: float | None) -> str:
    lines = [
        "| model | bare (s) | suite case (s) | b/a | cases | amortised per case (s) | c/a | bare peak RSS (MB) "
        "| suite peak RSS (MB) | suite wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b, c = row["bare"], row["suite"], row.get("amortised")
        shared = f"{c['cases']} | {c['per_case_s']:.2f} | {c['per_case_s'] / a['work_s']:.2f}" if c else "- | - | -"
        lines.append(
            f"| `{row['model']}` | {a['work_s']:.2f} | {b['case_s']:.2f} | {b['case_s'] / a['work_s']:.2f} | "
            f"{shared} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | {b['wall_s']:.1f} |"
        )
    configs = {row["model"]: row["amortised"]["configs"] for row in rows if row.get("amortised")}
    if configs:
        lines += ["", "Cases amortised over: " + "; ".join(f"`{m}` {', '.join(c)}" for m, c in configs.items())]
    lines += ["", "Breakdown of the suite case (s), from the plugin's JSON report:", ""]
    lines.append("| model | " + " | ".join(BREAKDOWN) + " |")
    lines.append("|---|" + "---:|" * len(BREAKDOWN))
    for row in rows:
        spent = row["suite"]["durations"]
        lines.append(f"| `{row['model']}` | " + " | ".join(f"{spent.get(k, 0.0):.2f}" for k in BREAKDOWN) + " |")
    if grid:
        lines += ["", "Throughput over `tests/test_zoo.py::test_prune` (the tiny models and ViT-B/32 grid):", ""]
        lines += ["| workers | cases | wall (s) | cases/min | worker peak RSS (MB) |", "|---:|---:|---:|---:|---|"]
        for g in grid:
            peaks = ", ".join(f"{w}: {p:.0f}" for w, p in sorted(g["peaks"].items()))
            lines.append(f"| {g['workers']} | {g['cases']} | {g['wall_s']:.1f} | {g['per_min']:.1f} | {peaks} |")
        if len(grid) == 2:
            lines.append(f"\nSpeed-up of `-n 2` over `-n 1`: {grid[1]['per_min'] / grid[0]['per_min']:.2f}x")
        if single_peak:
            worst = max(p for g in grid for p in g["peaks"].values())
            lines.append(
                f"\nLargest worker high-water mark {worst:.0f} MB against {single_peak:.0f} MB for the largest "
                f"single case run alone ({', '.join(HEAVIEST_GRID_CASES)} at r0.50-local, each in its own "
                f"process): {worst / single_peak:.2f}x"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated timm models")
    parser.add_argument("--throughput", action="store_true", help="also time the grid with -n 1 and -n 2")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs per side, fastest kept (default {REPEATS})")
    parser.add_argument("--no-amortised", action="store_true", help="leave out column (c), the model's cases together")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tprune-bench-") as tmp:
        scratch = Path(tmp)
        for model in [m for m in args.models.split(",") if m]:
            row = {"model": model, "bare": bare(model, args.repeats), "suite": suite(model, scratch, args.repeats)}
            if not args.no_amortised:
                row["amortised"] = amortised(model, scratch, args.repeats)
            rows.append(row)
            shared = f", amortised {row['amortised']['per_case_s']:.2f} s a case" if "amortised" in row else ""
            lone = f"{model}: bare {row['bare']['work_s']:.2f} s, suite {row['suite']['case_s']:.2f} s"
            print(lone + shared, flush=True)
        grid = []
        single = None
        if args.throughput:
            single = max(single_case_peak(model, scratch) for model in HEAVIEST_GRID_CASES)
            for workers in (1, 2):
                grid.append(grid_throughput(workers, scratch / f"grid-{workers}.json"))
                print(f"-n {workers}: {grid[-1]['per_min']:.1f} cases/min", flush=True)
    header = f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions()}.\n\n"
    text = header + render(rows, grid, single)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

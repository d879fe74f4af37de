"""What Python's cyclic garbage collector costs a case, with and without the imports frozen.

Why: building, deep-copying and pruning timm models allocates millions of
objects, so full (generation 2) collections run dozens of times per model,
and each walks everything alive, the half million objects torch, timm and
torch-pruning left behind at import included. The plugin freezes those once
per worker (:func:`pytest_tprune.engine.resources.freeze_imports_for_gc`);
this script measures what that saves and checks that it costs no memory and
changes no outcome.

For each arm, in a fresh process without xdist, the family cases of the
named models (``tests/test_zoo.py::test_family[<model>-r0.50-local]``, every
check the suite runs there) with a garbage-collector callback timing every
collection:

* **frozen**: the plugin as it is;
* **not frozen**: the same, with the freeze replaced by a no-op.

Each arm runs ``--repeats`` times and keeps its fastest run (a shared 2-core
machine can be off by a quarter from one run to the next). Printed per arm:
the wall time of the cases, the time inside collections and their number per
generation, the objects frozen, the peak RSS and the test outcomes (which must
agree).

Usage::

    python benchmarks/gc_cost.py [--models a,b,c] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from case_cost import run_json  # the sibling script's child runner: a child Python, its last JSON line

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("coat_tiny", "densenet121", "efficientvit_m0")
"""Three family representatives: a hybrid attention model, a deep CNN of many small layers, an efficient ViT."""
REPEATS = 2

CHILD = r"""
import gc, json, resource, sys, time
import pytest

class GcTimer:
    '''Times every collection, by generation, from the first test on.'''
    def __init__(self):
        self.seconds, self.counts, self._start, self._generation = [0.0] * 3, [0] * 3, 0.0, 0
        self.outcomes = {}
    def __call__(self, phase, info):
        if phase == "start":
            self._start, self._generation = time.perf_counter(), info["generation"]
        else:
            self.seconds[self._generation] += time.perf_counter() - self._start
            self.counts[self._generation] += 1
    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome

class NoFreeze:
    '''The "not frozen" arm: the plugin's freeze does nothing.'''
    def pytest_configure(self, config):
        from pytest_tprune.checks import case
        case.freeze_imports_for_gc = lambda: 0

timer = GcTimer()
gc.callbacks.append(timer)
plugins = [timer] + ([NoFreeze()] if sys.argv[1] == "not frozen" else [])
start = time.perf_counter()
code = pytest.main(sys.argv[2:], plugins=plugins)
print(json.dumps({
    "exit": int(code), "wall_s": time.perf_counter() - start, "gc_s": timer.seconds, "collections": timer.counts,
    "frozen": gc.get_freeze_count(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "outcomes": timer.outcomes,
}))
"""

ARMS = ("frozen", "not frozen")


def run_arm(arm: str, models: list[str], cache: Path) -> dict[str, Any]:
    """One run of ``arm`` over the models' family cases; the JSON object its child prints."""
    nodes = [f"tests/test_zoo.py::test_family[{model}-r0.50-local]" for model in models]
    result = run_json(["-c", CHILD, arm, "-q", "-p", "no:xdist", "-o", f"cache_dir={cache}", *nodes], cwd=ROOT)
    if result["exit"] != 0:
        raise SystemExit(f"the {arm} arm's cases did not all pass (exit {result['exit']}): {result['outcomes']}")
    return result


def row(arm: str, result: dict[str, Any]) -> str:
    gc_s, counts = result["gc_s"], result["collections"]
    per_generation = " / ".join(f"{n} ({s:.2f} s)" for n, s in zip(counts, gc_s, strict=True))
    return (
        f"| {arm} | {result['wall_s']:.1f} | {sum(gc_s):.2f} | {per_generation} | {result['frozen']} "
        f"| {result['peak_rss_mb']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="family representatives, comma-separated")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per arm; the fastest is kept")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tprune-gc-") as cache:
        for _ in range(max(args.repeats, 1)):
            for arm in ARMS:  # interleaved, so that a slow spell of the machine hits both arms
                result = run_arm(arm, models, Path(cache))
                if arm not in best or result["wall_s"] < best[arm]["wall_s"]:
                    best[arm] = result
    print(f"models: {', '.join(models)}; fastest of {args.repeats} run(s) per arm, no xdist")
    print("| arm | wall (s) | in collections (s) | collections gen 0 / 1 / 2 | objects frozen | peak RSS (MB) |")
    print("|---|---:|---:|---|---:|---:|")
    for arm in ARMS:
        print(row(arm, best[arm]))
    same = best["frozen"]["outcomes"] == best["not frozen"]["outcomes"]
    print(f"outcomes identical: {'yes' if same else 'NO'} ({len(best['frozen']['outcomes'])} cases)")
    saved = best["not frozen"]["wall_s"] - best["frozen"]["wall_s"]
    print(f"wall saved by the freeze: {saved:.1f} s ({saved / best['not frozen']['wall_s']:.1%})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

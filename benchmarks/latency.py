"""What pruning buys at inference, and whether the pruned model still deploys.

Why: params and MACs say how much a prune removed; this says whether that
turns into eager speed at batch 1 (thin layers can leave a model bound by
overheads), and whether each exporter that handled the unpruned model still
handles the pruned one. For every model, in this process, one case at the
given ratio (uniform by default): prune a deep copy of the pristine model
(:class:`~pytest_tprune.checks.case.TpruneCase`), time the unpruned and pruned
forwards with the suite's own measurement (:mod:`pytest_tprune.engine.latency`:
warm-up, median of up to 7, one thread, ``inference_mode``), then run every
exporter on both (:mod:`pytest_tprune.checks.export`: export, run the artifact,
compare with the eager output).

Models: the grid (timm's ``test_*`` models and ``vit_base_patch32_224``), or with
``--families`` the family representatives (``engine/data/zoo_representatives.json``)
that are not ``test_*`` models. Known hangs are skipped; a prune that fails is a row
saying so.

Usage::

    python benchmarks/latency.py [--families] [--ratio 0.5] [--global] [--threads 1] [--max-params 100e6]
        [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRID_EXTRA = ("vit_base_patch32_224",)
CASE_LIMIT_S = 300.0
"""A prune that runs longer than this is stopped and reported as timed out."""


def grid_models() -> list[str]:
    import timm

    return sorted(timm.list_models("test_*")) + list(GRID_EXTRA)


def family_models() -> list[str]:
    from pytest_tprune.engine.zoo import representatives

    return sorted({m for m in representatives().values() if not m.startswith("test_")})


def exporter_statuses(model: Any, inputs: Any, reference: Any) -> dict[str, str]:
    """Exporter -> ``ok``, ``not available`` or the exception type that stopped it (``mismatch`` included)."""
    from pytest_tprune.checks import export

    found = {}
    for name in export.EXPORTERS:
        if not export.available(name):
            found[name] = export.UNAVAILABLE
            continue
        exc = export.attempt(name, model, inputs, reference)
        found[name] = export.OK if exc is None else export.pruned_status(exc).removeprefix("fails: ")
    return found


def measure_case(name: str, ratio: float, global_pruning: bool, threads: int) -> dict[str, Any]:
    """One model's row: its latency before and after, and each exporter's status before and after."""
    from pytest_tprune.checks.case import CaseSettings, TpruneCase
    from pytest_tprune.engine import latency
    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.known import is_hang
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.resources import STORE, share_cores

    spec = timm_spec(name)
    config = PruneConfig(ratio, global_pruning=global_pruning)
    row: dict[str, Any] = {"model": name, "config": config.config_id}
    if is_hang(spec.failure_reason(config.config_id)):
        return {**row, "error": "known hang: skipped"}
    share_cores()
    latency.THREADS = threads
    case = TpruneCase(spec, config, CaseSettings(checks=(), timeout=CASE_LIMIT_S))
    start = time.perf_counter()
    try:
        pruned = case.pruned
    except Exception as exc:
        return {**row, "error": f"prune fails: {type(exc).__name__}", "seconds": time.perf_counter() - start}
    lat = case.latency or {}
    unpruned = copy.deepcopy(STORE.pristine(spec, 0).model).to(pruned.inputs.device).eval()
    before = exporter_statuses(unpruned, pruned.inputs, pruned.base_output)
    del unpruned
    after = exporter_statuses(pruned.model, pruned.inputs, pruned.output)
    seconds = time.perf_counter() - start
    kept = pruned.outcome.params_after / pruned.outcome.params_before
    return {**row, "latency": lat, "before": before, "after": after, "seconds": seconds, "kept": kept}


def fmt_exporters(statuses: dict[str, str]) -> str:
    from pytest_tprune.checks import export

    shown = [f"{n}: {s}" for n, s in statuses.items() if s != export.UNAVAILABLE]
    return ", ".join(shown) if shown else "-"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table: model, config, unpruned ms, pruned ms, speed-up, kept params, exporters before/after."""
    lines = [
        "| model | config | unpruned ms | pruned ms | speed-up | kept params | exporters before | exporters after |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| `{row['model']}` | {row['config']} | - | - | - | - | {row['error']} | |")
            continue
        lat = row["latency"]
        kept = row["kept"]
        lines.append(
            f"| `{row['model']}` | {row['config']} | {lat.get('unpruned_ms', 0):.2f} | {lat.get('pruned_ms', 0):.2f} "
            f"| {lat.get('speedup', 0):.2f}x | {kept:.1%} | {fmt_exporters(row['before'])} "
            f"| {fmt_exporters(row['after'])} |"
        )
    return lines


def export_counts(rows: list[dict[str, Any]]) -> list[str]:
    """Per exporter: how many models export before pruning, after, and which lost it."""
    from pytest_tprune.checks import export

    measured = [r for r in rows if "error" not in r]
    lines = ["| exporter | export unpruned | export pruned | lost by pruning |", "|---|---:|---:|---|"]
    for name in export.EXPORTERS:
        if any(r["before"][name] == export.UNAVAILABLE for r in measured):
            lines.append(f"| {name} | not available | not available | |")
            continue
        before = sum(r["before"][name] == "ok" for r in measured)
        after = sum(r["after"][name] == "ok" for r in measured)
        lost = [
            f"`{r['model']}` ({r['after'][name]})" for r in measured if r["before"][name] == "ok" != r["after"][name]
        ]
        lines.append(f"| {name} | {before}/{len(measured)} | {after}/{len(measured)} | {', '.join(lost) or 'none'} |")
    failures = Counter(s for r in measured for s in r["before"].values() if s not in ("ok", export.UNAVAILABLE))
    if failures:
        lines += ["", "Unpruned failures by type: " + ", ".join(f"{t} {n}" for t, n in failures.most_common())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", action="store_true", help="the family representatives instead of the grid")
    parser.add_argument("--models", help="comma-separated timm names instead of either list")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--global", dest="global_pruning", action="store_true", help="global instead of uniform")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the latency (default 1)")
    parser.add_argument("--max-params", type=float, default=None, help="skip models with more parameters")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)

    import torch

    from pytest_tprune.engine.models import meta_param_count, timm_spec
    from pytest_tprune.engine.resources import STORE, release_memory

    names = args.models.split(",") if args.models else family_models() if args.families else grid_models()
    started = time.perf_counter()
    rows = []
    for name in names:
        if args.max_params is not None and (meta_param_count(timm_spec(name)) or 0) > args.max_params:
            rows.append({"model": name, "config": "-", "error": f"over --max-params {args.max_params:g}: skipped"})
            continue
        rows.append(measure_case(name, args.ratio, args.global_pruning, args.threads))
        STORE.clear()
        release_memory()
        print(f"{name}: {rows[-1].get('seconds', 0):.1f} s", file=sys.stderr, flush=True)
    took = time.perf_counter() - started
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}; latency at batch 1, {args.threads} thread(s), warm-up then median of up to 7; "
        f"{len(names)} model(s) in {took:.0f} s."
    )
    text = "\n".join([header, "", *table(rows), "", *export_counts(rows)]) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

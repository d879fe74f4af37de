"""Sweep one representative model per timm family through our engine and the upstream recipe.

Why: the regression suite covers a handful of chosen models, but timm has ~100
model families, and each brings its own blocks (attention variants, layer
scales, custom reshapes) that can break structural pruning. Pruning the
smallest model of every family at ratio 0.5 finds the blocks that still need an
adapter, and running the seed script's recipe on the same model says which of
those failures our engine already fixes and which are new.

Every model is pruned in a fresh subprocess (one for our engine, one for the
upstream recipe) so that a hang, a crash or a memory blow-up costs one row, not
the sweep; the parent enforces the timeout and reads the child's peak RSS from
``wait4``. Results are written after every model (atomic replace), so an
interrupted sweep resumes where it stopped. The children import a snapshot of
the package taken when the sweep starts, so edits made while it runs do not
mix two versions of the engine into one table (``--live`` turns that off).

Usage::

    /root/venv/bin/python benchmarks/zoo_sweep.py [--models a,b] [--timeout S] [--fresh]
    /root/venv/bin/python benchmarks/zoo_sweep.py --report-only   # re-render docs/zoo_sweep.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "zoo_sweep.json"
REPORT = ROOT / "docs" / "zoo_sweep.md"
EXTRA_MODELS = {"vit_base_patch32_224": "vision_transformer"}
"""Models swept besides the family representatives: the seed script's own model."""

RATIO = 0.5
SEED = 0
DEFAULT_TIMEOUT = 120.0
MEMORY_BUDGET = 12e9
BYTES_PER_PARAM = 4
MEMORY_FACTOR = 6
"""A pruning case holds ~6 copies of the weights (pristine, working copy, grads,
dependency graph, counters): more than the budget risks the shared machine."""

SIDES = ("ours", "upstream")


# -- helpers shared by parent and children -------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, sort_keys=True)
        file.write("\n")
    os.replace(tmp, path)


def first_line(text: str, limit: int = 300) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/zoo-snapshot/"):
        if marker in filename:
            return filename.split(marker)[-1]
    return filename


def frame_locations(exc: BaseException) -> tuple[str | None, str | None]:
    """(innermost frame, innermost frame outside torch itself) as ``file:line in func``.

    The innermost frame is often deep in ``torch/nn/functional.py``; the
    innermost timm, torch-pruning or pytest_tprune frame is the block or
    library code that called it, which is where an adapter has to look.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None, None

    def fmt(frame: traceback.FrameSummary) -> str:
        return f"{_short_path(frame.filename)}:{frame.lineno} in {frame.name}"

    ours = ("timm/", "torch_pruning/", "pytest_tprune/", "benchmarks/")
    origin = next((f for f in reversed(frames) if _short_path(f.filename).startswith(ours)), frames[-1])
    return fmt(frames[-1]), fmt(origin)


def describe_error(err: BaseException) -> dict[str, Any]:
    """Exception type, first message line and location; a PruneStepError is unwrapped."""
    from pytest_tprune.errors import PruneStepError

    inner = err.exc if isinstance(err, PruneStepError) else err
    location, origin = frame_locations(inner)
    info: dict[str, Any] = {
        "type": type(inner).__name__,
        "message": first_line(str(inner)),
        "location": location,
        "origin": origin,
    }
    if isinstance(err, PruneStepError):
        info["error"] = first_line(str(err))
        info["module"] = err.module
    return info


class Progress:
    """The child's result file, rewritten at every phase so a timeout says where it hung."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {"phase": "start", **fields}
        self.start = time.perf_counter()
        self.save()

    def save(self) -> None:
        self.data["wall_s"] = round(time.perf_counter() - self.start, 3)
        write_json(self.path, self.data)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.data["phase"] = name
        self.save()
        yield

    def finish(self, status: str, **fields: Any) -> None:
        import resource

        self.data.update(status=status, phase="done", **fields)
        self.data["child_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self.save()


def _child_setup() -> None:
    import torch

    torch.set_num_threads(1)


# -- child: our engine --------------------------------------------------------


def run_ours(name: str, progress: Progress) -> None:
    """Prune with pytest_tprune (build once, prune a copy) and run the three checks."""
    from pytest_tprune.checks.case import CaseSettings, TpruneCase
    from pytest_tprune.engine.config import PruneConfig
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.resources import STORE
    from pytest_tprune.errors import PruneStepError

    spec = timm_spec(name, input_cap=None)
    settings = CaseSettings(device="cpu", golden_dir=Path("/tmp/unused"), update_golden=False, seed=SEED, timeout=None)
    case = TpruneCase(spec, PruneConfig(ratio=RATIO, global_pruning=False), settings)
    progress.data["input_size"] = list(spec.input_size)
    with progress.phase("pristine"):
        try:
            STORE.pristine(spec, SEED)  # build + unpruned backward: a failure here is not pruning's
        except Exception as exc:
            progress.finish("failed:pristine", error=describe_error(exc))
            return
    with progress.phase("prune"):
        try:
            outcome = case.outcome
        except PruneStepError as exc:
            progress.finish(f"failed:{exc.step}", error=describe_error(exc))
            return
        except Exception as exc:  # raised by the case around prune(): copying the pristine model
            progress.finish("failed:case", error=describe_error(exc))
            return
    progress.data["outcome"] = {
        "params_before": outcome.params_before,
        "params_after": outcome.params_after,
        "macs_before": outcome.macs_before,
        "macs_after": outcome.macs_after,
        "flop_macs_before": outcome.flop_macs_before,
        "flop_macs_after": outcome.flop_macs_after,
        "groups": len(outcome.groups),
        "heads": len(outcome.heads),
        "ignored": outcome.ignored,
        "adapted": len(outcome.adapted),
        "timings": outcome.timings,
        "warnings": outcome.warnings[:10],
    }
    checks: dict[str, str] = {}
    failure: tuple[str, dict[str, Any]] | None = None
    for check, method in (
        ("forward", case.check_forward),
        ("shapes", case.check_shapes),
        ("reduction", case.check_reduction),
    ):
        with progress.phase(f"check_{check}"):
            try:
                method()
                checks[check] = "passed"
            except Exception as exc:  # CheckFailed or an error raised while checking
                checks[check] = "failed"
                if failure is None:
                    failure = (check, describe_error(exc))
    progress.data["checks"] = checks
    if failure is None:
        progress.finish("passed")
    else:
        progress.finish(f"failed:{failure[0]}", error=failure[1])


# -- child: the upstream recipe -----------------------------------------------


def run_upstream(name: str, progress: Progress) -> None:
    """The seed script's recipe as it would run today, with no adapters of ours.

    Same weights and inputs as our engine (same spec and seed); heads only for
    modules with ``qkv`` and ``num_heads``; ``model.head`` left whole when it
    exists and has parameters; ``head_dim``/``attn_dim`` patched afterwards.
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    from pytest_tprune.engine.measure import output_tensor
    from pytest_tprune.engine.models import build_model, timm_spec

    spec = timm_spec(name, input_cap=None)
    progress.data["input_size"] = list(spec.input_size)

    def step(phase: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        with progress.phase(phase):
            try:
                return True, fn()
            except Exception as exc:
                progress.finish(f"failed:{phase}", error=describe_error(exc))
                return False, None

    ok, model = step("build", lambda: build_model(spec, SEED))
    if not ok:
        return
    inputs = spec.make_inputs(1, SEED)

    def forward() -> list[int]:
        with torch.no_grad():
            return list(output_tensor(model(inputs)).shape)

    ok, base_shape = step("base_forward", forward)
    if not ok:
        return
    params_before = sum(p.numel() for p in model.parameters())

    def make_pruner() -> Any:
        head = getattr(model, "head", None)
        ignored = [head] if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else []
        heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
        return tp.pruner.MetaPruner(
            model,
            inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO,
            global_pruning=False,
            ignored_layers=ignored,
            num_heads=heads,
        )

    ok, pruner = step("trace", make_pruner)
    if not ok:
        return
    ok, _ = step("prune", pruner.step)
    if not ok:
        return

    def patch() -> None:
        for m in model.modules():
            if hasattr(m, "num_heads") and hasattr(m, "qkv"):
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
                if hasattr(m, "attn_dim"):
                    m.attn_dim = m.num_heads * m.head_dim

    ok, _ = step("adapt", patch)
    if not ok:
        return
    ok, shape = step("forward", forward)
    if not ok:
        return
    progress.data.update(
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        output_shape_before=base_shape,
        output_shape_after=shape,
    )
    if shape != base_shape:
        error = {"type": "ShapeMismatch", "message": f"output shape {shape} != unpruned {base_shape}"}
        progress.finish("failed:shape", error={**error, "location": None, "origin": None})
    else:
        progress.finish("passed")


def child_main(side: str, name: str, result: Path) -> int:
    _child_setup()
    progress = Progress(result, side=side, model=name)
    try:
        (run_ours if side == "ours" else run_upstream)(name, progress)
    except Exception as exc:  # anything the runners did not attribute to a step
        progress.finish("failed:harness", error=describe_error(exc))
    return 0


# -- parent -------------------------------------------------------------------


def snapshot_package(live: bool) -> tuple[str | None, str]:
    """Copy the package aside for the children; returns (PYTHONPATH entry, source digest)."""
    source = ROOT / "pytest_tprune"
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.py")):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    if live:
        return None, digest.hexdigest()[:16]
    target = Path(tempfile.mkdtemp(prefix="zoo-snapshot-")) / "zoo-snapshot"
    shutil.copytree(source, target / "pytest_tprune", ignore=shutil.ignore_patterns("__pycache__"))
    return str(target), digest.hexdigest()[:16]


def run_child(side: str, name: str, timeout: float, pythonpath: str | None) -> dict[str, Any]:
    """Run one side for one model in a fresh process group; kill the group on timeout."""
    workdir = Path(tempfile.mkdtemp(prefix="zoo-child-"))
    result, log = workdir / "result.json", workdir / "child.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--models",
        name,
        "--result",
        str(result),
    ]
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    timed_out, status, usage = False, 0, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    data: dict[str, Any] = {}
    if result.exists():
        try:
            data = json.loads(result.read_text())
        except json.JSONDecodeError:
            data = {}
    record: dict[str, Any] = {k: v for k, v in data.items() if k not in ("side", "model")}
    record["elapsed_s"] = round(elapsed, 2)
    record["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1) if usage else None
    if timed_out:
        record["status"] = "timeout"
        record["error"] = {"type": "Timeout", "message": f"killed after {timeout:g} s in phase {data.get('phase')}"}
    elif "status" not in record:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        record["status"] = f"crashed:{proc.returncode}"
        record["error"] = {
            "type": "Crash",
            "message": f"exit status {proc.returncode} in phase {data.get('phase')}",
            "log_tail": tail,
        }
    shutil.rmtree(workdir, ignore_errors=True)
    return record


def model_plan(selected: list[str] | None) -> list[tuple[str, str, int | None]]:
    """(family, model, meta params) to sweep: every family's representative plus the extras."""
    from pytest_tprune.engine import zoo

    reps = zoo.load_representatives()
    params = zoo.load_representative_params()
    plan = {model: family for family, model in reps.items()}
    plan.update({m: f for m, f in EXTRA_MODELS.items() if m not in plan})
    if selected:
        family_of = {m: f for f, names in zoo.families().items() for m in names}
        unknown = [m for m in selected if m not in family_of]
        if unknown:
            raise SystemExit(f"not timm models: {', '.join(unknown)}")
        plan = {m: family_of[m] for m in selected}
    rows = []
    for model, family in plan.items():
        count = params[model] if model in params else zoo.meta_param_count(model)
        rows.append((family, model, count))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def load_results(fresh: bool) -> dict[str, Any]:
    if RESULTS.exists() and not fresh:
        data: dict[str, Any] = json.loads(RESULTS.read_text())
        return data
    return {"results": {}}


def versions() -> dict[str, str]:
    """Installed distribution versions (torch-pruning's ``__version__`` lags its releases)."""
    from importlib.metadata import version

    packages = {"torch": "torch", "timm": "timm", "torch_pruning": "torch-pruning"}
    return {"python": sys.version.split()[0], **{key: version(dist) for key, dist in packages.items()}}


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    selected = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    plan = model_plan(selected)
    data = load_results(args.fresh)
    results: dict[str, Any] = data.setdefault("results", {})
    pythonpath, digest = snapshot_package(args.live)
    data["meta"] = {
        **versions(),
        "ratio": RATIO,
        "global_pruning": False,
        "seed": SEED,
        "device": "cpu",
        "timeout_s": args.timeout,
        "memory_guard": f"skip when params x {BYTES_PER_PARAM} B x {MEMORY_FACTOR} > {MEMORY_BUDGET / 1e9:g} GB",
        "package_digest": digest,
    }
    todo = [row for row in plan if row[1] not in results]
    print(f"{len(plan)} models planned, {len(plan) - len(todo)} already done, {len(todo)} to run", flush=True)
    try:
        for index, (family, model, params) in enumerate(todo, 1):
            row: dict[str, Any] = {"family": family, "model": model, "params": params, "package_digest": digest}
            if params is not None and params * BYTES_PER_PARAM * MEMORY_FACTOR > MEMORY_BUDGET:
                need = params * BYTES_PER_PARAM * MEMORY_FACTOR / 1e9
                skip = {"status": "skipped:memory", "error": {"type": "Skipped", "message": f"needs ~{need:.1f} GB"}}
                row.update(ours=dict(skip), upstream=dict(skip))
            else:
                for side in SIDES:
                    row[side] = run_child(side, model, args.timeout, pythonpath)
            results[model] = row
            write_json(RESULTS, data)
            print(
                f"[{index}/{len(todo)}] {family:24} {model:40} ours={row['ours']['status']:22} "
                f"upstream={row['upstream']['status']:22} "
                f"{sum(row[s].get('elapsed_s', 0) for s in SIDES):6.1f}s",
                flush=True,
            )
    finally:
        if pythonpath:
            shutil.rmtree(Path(pythonpath).parent, ignore_errors=True)
    return data


# -- summary and report -------------------------------------------------------


def display_status(record: dict[str, Any]) -> str:
    """The status with check failures told apart from the step of the same name.

    ``failed:forward`` is both a pruning step (the forward inside ``prune()``)
    and a check (``check_forward``); a record that reached the checks has them.
    """
    status: str = record["status"]
    if status.startswith("failed:") and "checks" in record:
        return f"failed:check_{status.split(':', 1)[1]}"
    return status


def status_counts(results: dict[str, Any], side: str) -> Counter[str]:
    return Counter(display_status(row[side]) for row in results.values())


def _normalise(message: str) -> str:
    """Message with numbers and quoted names blanked, so that one cause groups together."""
    text = re.sub(r"\d+", "N", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    return text


def cause_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """(status, exception, where) identifying one failure cause."""
    status = display_status(record)
    error = record.get("error") or {}
    kind = error.get("type", "")
    where = error.get("origin") or error.get("location") or ""
    message = error.get("message", "")
    if kind in ("CheckFailed", "ShapeMismatch", "Timeout", "Crash", "Skipped") or not where:
        # the location of a failed check is the check itself: the message is the cause
        where = _normalise(message.split(":")[0] if kind == "CheckFailed" else message)
        where = re.sub(r"in phase (\S+)", r"in phase \1", where)
    return status, kind, where


def cause_text(record: dict[str, Any]) -> str:
    error = record.get("error")
    if not error:
        return ""
    where = error.get("origin") or error.get("location")
    module = error.get("module")
    text = f"{error.get('type')}: {error.get('message', '')}"
    if module and ".py:" not in module:
        text += f" (module {module})"
    return f"{text} @ {where}" if where else text


def grouped_causes(results: dict[str, Any], side: str) -> list[tuple[tuple[str, str, str], list[dict[str, Any]]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in results.values():
        record = row[side]
        if record["status"] != "passed":
            groups[cause_key(record)].append(row)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _params(count: int | None) -> str:
    return "?" if count is None else f"{count / 1e6:.2f}M"


def coverage_note(results: dict[str, Any]) -> str:
    """How much of the planned sweep the results hold: an interrupted sweep must say so."""
    from pytest_tprune.engine import zoo

    planned = set(zoo.load_representatives().values()) | set(EXTRA_MODELS)
    missing = sorted(planned - set(results))
    if not missing:
        return f"Coverage: all {len(planned)} planned models."
    return (
        f"Coverage: **{len(planned & set(results))} of {len(planned)} planned models** "
        f"(the sweep was stopped; resume with `benchmarks/zoo_sweep.py`). Not yet run: "
        + ", ".join(f"`{m}`" for m in missing)
        + "."
    )


def render_report(data: dict[str, Any]) -> str:
    results = data["results"]
    meta = data.get("meta", {})
    lines = [
        "# timm zoo sweep: one representative per family",
        "",
        "Generated by `benchmarks/zoo_sweep.py` (raw data: `docs/zoo_sweep.json`). Each family's smallest model "
        "(by meta-device parameter count, `pytest_tprune/data/zoo_representatives.json`) plus `vit_base_patch32_224` "
        f"is pruned at ratio {meta.get('ratio', RATIO)}, uniform (local), seed {meta.get('seed', SEED)}, on CPU, "
        f"at its pretrained input size, in a fresh subprocess with a "
        f"{meta.get('timeout_s', DEFAULT_TIMEOUT):g} s timeout.",
        "",
        "- **ours**: `pytest_tprune` (`prune()` with adapters), then the `forward`, `shapes` and `reduction` checks.",
        "- **upstream**: the seed script's recipe as it runs today: `MetaPruner` with `GroupMagnitudeImportance(p=2)`, "
        "`ignored_layers=[model.head]` when the model has a `head` with parameters, `num_heads` for modules with "
        "`qkv` and `num_heads`, then `head_dim`/`attn_dim` patched; passes when the forward runs and the output "
        "shape is unchanged.",
        "",
        f"Versions: torch {meta.get('torch')}, timm {meta.get('timm')}, torch-pruning {meta.get('torch_pruning')}, "
        f"python {meta.get('python')}; package sources digest `{meta.get('package_digest')}`.",
        "",
        coverage_note(results),
        "",
        "## Summary",
        "",
        "| status | ours | upstream |",
        "|---|---:|---:|",
    ]
    ours, upstream = status_counts(results, "ours"), status_counts(results, "upstream")
    for status in sorted(set(ours) | set(upstream), key=lambda s: (s != "passed", s)):
        lines.append(f"| {status} | {ours.get(status, 0)} | {upstream.get(status, 0)} |")
    lines.append(f"| **total** | {sum(ours.values())} | {sum(upstream.values())} |")
    lines += [
        "",
        "## Per family",
        "",
        "| family | model | params | ours | cause (ours) | upstream | cause (upstream) "
        "| time ours / up (s) | peak RSS (MB) |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for row in sorted(results.values(), key=lambda r: (r["family"], r["model"])):
        o, u = row["ours"], row["upstream"]
        times = f"{o.get('elapsed_s', '-')} / {u.get('elapsed_s', '-')}"
        rss = max((r.get("peak_rss_mb") or 0) for r in (o, u)) or "-"
        lines.append(
            f"| {row['family']} | `{row['model']}` | {_params(row['params'])} | {display_status(o)} | "
            f"{_cell(cause_text(o))} | {display_status(u)} | {_cell(cause_text(u))} | {times} | {rss} |"
        )
    for side, title in (("ours", "our engine"), ("upstream", "the upstream recipe")):
        lines += ["", f"## Failure causes of {title}, most common first", ""]
        groups = grouped_causes(results, side)
        if not groups:
            lines.append("None.")
        for (status, kind, where), rows in groups:
            models = ", ".join(f"`{r['model']}`" for r in rows)
            messages = sorted({first_line((r[side].get("error") or {}).get("message", ""), 240) for r in rows})
            lines.append(f"- **{len(rows)}** x `{status}` {kind} at `{where}`: {models}")
            for message in messages[:4]:
                shown = _cell(message, 240).replace("`", "'")
                lines.append(f"  - `{shown}`")
            if len(messages) > 4:
                lines.append(f"  - … and {len(messages) - 4} more distinct messages")
    return "\n".join(lines) + "\n"


def print_summary(data: dict[str, Any]) -> None:
    results = data["results"]
    for side in SIDES:
        counts = status_counts(results, side)
        shown = ", ".join(f"{status}={n}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"{side:9} ({sum(counts.values())} models): {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", help="comma-separated timm models (default: every family representative)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per model and side")
    parser.add_argument("--fresh", action="store_true", help="ignore and overwrite results already recorded")
    parser.add_argument("--live", action="store_true", help="children import the working tree, not a snapshot")
    parser.add_argument("--report-only", action="store_true", help="only re-render docs/zoo_sweep.md")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.models, args.result)
    data = load_results(False) if args.report_only else sweep(args)
    REPORT.write_text(render_report(data), encoding="utf-8")
    print_summary(data)
    print(f"results: {RESULTS}\nreport:  {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

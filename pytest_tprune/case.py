"""One pruning case as the ``tprune_case`` fixture sees it, with one method per check.

Each check raises ``CheckFailed`` whose message starts with the check's name,
so a failing test says exactly which property broke. Models are built once per
worker and kept pristine; every case prunes a deep copy, because pruning
mutates in place and a pruned model must never leak into the next case.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tprune import expectations as exp
from pytest_tprune.config import PruneConfig
from pytest_tprune.errors import CaseTimeout
from pytest_tprune.models import ModelSpec, build_model

if TYPE_CHECKING:
    from torch import nn

    from pytest_tprune.pruning import Baseline, Pruned, PruneOutcome

CHECKS = ("forward", "shapes", "golden", "reduction")


class CheckFailed(AssertionError):
    """A check failed; ``check`` names which one (for the report)."""

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        super().__init__(f"[{check}] {message}")


@dataclass
class CaseSettings:
    """The run-wide settings a case needs (a plain subset of the plugin's)."""

    device: str = "cpu"
    golden_dir: Path = Path("golden")
    update_golden: bool = False
    seed: int = 0
    timeout: float | None = None
    checks: tuple[str, ...] = CHECKS


@dataclass
class _Pristine:
    key: tuple[str, int]
    model: nn.Module
    spec: ModelSpec
    baselines: dict[str, Baseline] = field(default_factory=dict)  # by device
    _unreached: frozenset[str] | None = None

    @property
    def unreached(self) -> frozenset[str]:
        """Parameters the unpruned model's backward does not reach, probed on first use.

        Only a case whose pruned model leaves some parameter without a gradient
        needs this, so most models never pay for the probe's copy, forward and
        backward.
        """
        if self._unreached is None:
            # Probe a copy: a forward leaves caches of non-leaf tensors in some models
            # (attention-bias caches), and those cannot be deep-copied afterwards.
            inputs = self.spec.make_inputs(2, self.key[1])
            self._unreached = unreached_parameters(copy.deepcopy(self.model), inputs, train=True)
        return self._unreached


RELEASE_ABOVE_PARAMS = 10_000_000
"""Switching away from a model this large runs :func:`release_memory` (about 0.2 s with torch
loaded); smaller models leave too little behind to be worth it."""


class ModelStore:
    """Keeps the most recently built pristine model of this worker.

    One entry suffices because cases are sorted by model, and it bounds a
    worker's memory to the largest model rather than the sum of all.
    """

    def __init__(self) -> None:
        self._entry: _Pristine | None = None
        self.builds = 0

    def pristine(self, spec: ModelSpec, seed: int) -> _Pristine:
        key = (spec.name, seed)
        if self._entry is None or self._entry.key != key:
            previous, self._entry = self._entry, None  # release the previous model before building the next
            if previous is not None and sum(p.numel() for p in previous.model.parameters()) > RELEASE_ABOVE_PARAMS:
                del previous
                release_memory()
            self._entry = _Pristine(key, build_model(spec, seed), spec)
            self.builds += 1
        return self._entry

    def clear(self) -> None:
        self._entry = None


STORE = ModelStore()


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, between models and after failed cases.

    torch-pruning's dependency graph is full of reference cycles, which only
    the cyclic collector frees; a case that times out leaves gigabytes of them
    behind. And glibc keeps freed memory in its arenas, so without a trim a
    worker's resident size ratchets up with every large model it has seen.
    """
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@functools.cache
def share_cores() -> int:
    """Give this process its share of the CPU cores for torch's intra-op threads.

    torch sizes its thread pool to every core of the machine, so ``-n 2`` on
    2 cores runs 4 busy threads and each worker slows the other. Once per
    process, the first time a case runs, a worker gets ``cores // workers``
    threads (at least 1). An explicit ``OMP_NUM_THREADS`` wins.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(workers, 1))
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def unreached_parameters(model: nn.Module, inputs: Any, train: bool = False) -> frozenset[str]:
    """Parameters a backward pass from the output does not reach, in eval or train mode.

    Computed on the unpruned model too, so that parameters a model never uses
    (e.g. an unused auxiliary head) are not blamed on pruning; the mode must
    be the one the pruned model's backward ran in.
    """
    from pytest_tprune.measure import output_tensor

    model.zero_grad(set_to_none=True)
    model.train(train)
    output_tensor(model(inputs)).float().sum().backward()
    model.eval()
    unreached = frozenset(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    model.zero_grad(set_to_none=True)
    return unreached


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (a worker's high-water mark)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


BYTES_PER_PARAM = 24
"""Peak bytes per parameter of one case: pristine model, pruned copy, gradients and
torch-pruning's graph (measured: convnext_xxlarge, 846 M parameters, peaks near 10 GB
for the bare prune; the checks' backward adds the rest)."""


def memory_budget_bytes() -> int | None:
    """Physical memory divided among the xdist workers sharing it."""
    import os

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return total // max(workers, 1)


def too_big_reason(spec: ModelSpec) -> str | None:
    """Why a model must be skipped up front rather than be killed by the OOM killer."""
    from pytest_tprune.models import meta_param_count

    budget = memory_budget_bytes()
    count = meta_param_count(spec)
    if budget is None or count is None or count * BYTES_PER_PARAM <= budget:
        return None
    return (
        f"{spec.name}: {count / 1e6:.0f} M parameters need about {count * BYTES_PER_PARAM / 2**30:.1f} GiB, "
        f"over this worker's share of memory ({budget / 2**30:.1f} GiB); run it with fewer workers"
    )


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Interrupt a case stuck in a Python loop (e.g. a dependency-graph hang).

    Uses SIGALRM, so it works on POSIX main threads (pytest and xdist workers
    run tests there) and is a no-op elsewhere.
    """
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise CaseTimeout(f"{what} ran past the per-case time limit of {seconds:g} s (--tprune-timeout)")

    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_timer = signal.getitimer(signal.ITIMER_REAL)
    if previous_timer[0] and previous_timer[0] < float(seconds):  # type: ignore[arg-type]
        yield  # an enclosing limit expires first: let it rule
        return
    signal.signal(signal.SIGALRM, expire)
    # Re-fire every second after expiry, in case library code swallowed the first one.
    signal.setitimer(signal.ITIMER_REAL, float(seconds), 1.0)  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


@dataclass
class TpruneCase:
    """A model x config case: prunes lazily, then checks on demand."""

    spec: ModelSpec
    config: PruneConfig
    settings: CaseSettings
    check_times: dict[str, float] = field(default_factory=dict)
    golden_written: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<TpruneCase {self.case_id} on {self.settings.device}>"

    @property
    def case_id(self) -> str:
        return f"{self.spec.name}-{self.config.config_id}"

    def reproduce_command(self) -> str:
        return " ".join(
            ["tprune", "--model", self.spec.name, *self.config.cli_args(), "--device", self.settings.device]
        )

    @cached_property
    def pruned(self) -> Pruned:
        from pytest_tprune.pruning import prune

        share_cores()
        with time_limit(self.settings.timeout, f"pruning {self.case_id}"):
            start = time.perf_counter()
            pristine = STORE.pristine(self.spec, self.settings.seed)
            self.check_times["pristine"] = time.perf_counter() - start
            device = self.settings.device
            pruned = prune(
                self.spec,
                self.config,
                device,
                self.settings.seed,
                model=lambda: copy.deepcopy(pristine.model),  # a retry after a broken forward takes another copy
                baseline=pristine.baselines.get(device),
            )
            pristine.baselines[device] = pruned.baseline  # the next config of this model skips measuring it
            return pruned

    @property
    def outcome(self) -> PruneOutcome:
        return self.pruned.outcome

    @property
    def model(self) -> nn.Module:
        """The pruned model."""
        return self.pruned.model

    @contextmanager
    def _timed(self, check: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with time_limit(self.settings.timeout, f"check '{check}' of {self.case_id}"):
                yield
        finally:
            self.check_times[check] = self.check_times.get(check, 0.0) + time.perf_counter() - start

    # -- checks ---------------------------------------------------------------

    def check_forward(self) -> None:
        """Eval output at batch 1 has the unpruned shape and is finite; a train-mode forward at
        batch 2 has the right shape, is finite, and its backward reaches every parameter the
        unpruned model's train-mode backward reached."""
        __tracebackhide__ = True
        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("forward"):
            problems = self._forward_problems()
        if problems:
            raise CheckFailed("forward", "; ".join(problems))

    def _forward_problems(self) -> list[str]:
        """Two passes, not four: the eval pass at batch 1 is the one counting already ran
        (``Pruned.output``), and the train-mode pass at batch 2 also carries the backward."""
        import torch

        pruned = self.pruned
        base_shape = list(pruned.base_output.shape)
        problems = []
        if self.outcome.output_shape_after != base_shape:
            problems.append(f"eval output shape {self.outcome.output_shape_after} != unpruned {base_shape}")
        if not torch.isfinite(pruned.output).all():
            problems.append("eval output at batch 1 has non-finite values")
        batch = self.spec.make_inputs(2, self.settings.seed).to(pruned.inputs.device)
        return problems + self._train_problems(batch, [2, *base_shape[1:]])

    def _train_problems(self, batch: Any, expected: list[int]) -> list[str]:
        from pytest_tprune.measure import output_tensor

        model = self.pruned.model
        model.zero_grad(set_to_none=True)
        model.train()
        try:
            out = output_tensor(model(batch))
            if list(out.shape) != expected:
                return [f"train-mode output shape at batch 2 {list(out.shape)} != {expected}"]
            problems = [] if out.isfinite().all() else ["train-mode output at batch 2 has non-finite values"]
            out.float().sum().backward()
        except Exception as exc:
            return [f"train-mode forward/backward failed: {type(exc).__name__}: {exc}"]
        finally:
            model.eval()
        missed = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
        model.zero_grad(set_to_none=True)
        if missed:  # blame pruning only for what the unpruned model reaches
            allowed = STORE.pristine(self.spec, self.settings.seed).unreached
            missed = [n for n in missed if n not in allowed]
        if missed:
            problems.append(f"backward reaches no gradient to {len(missed)} parameter(s): {', '.join(missed[:5])}")
        return problems

    def check_shapes(self) -> None:
        """Uniform mode: every pruned group removed what ratio and round_to predict;
        ignored layers kept their output size."""
        __tracebackhide__ = True
        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("shapes"):
            violations = exp.shape_violations(self.outcome)
        if violations:
            shown = "\n".join(f"  {v.group}: {v.detail}" for v in violations[:20])
            more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
            raise CheckFailed("shapes", f"{len(violations)} group(s) break the shape rule:\n{shown}{more}")

    def check_golden(self) -> None:
        """Compare with (or, with --tprune-update-golden, write) the case's golden file."""
        __tracebackhide__ = True
        from pytest_tprune import golden

        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("golden"):
            versions = golden.library_versions()
            content = golden.golden_content(self.outcome, versions)
            path = golden.golden_path(self.settings.golden_dir, self.spec.name, self.config.config_id)
            if self.settings.update_golden:
                if not golden.same_content(path, content):
                    try:
                        golden.write_golden(path, content)  # atomic: a failed write leaves no file behind
                    except OSError as exc:
                        raise CheckFailed(
                            "golden",
                            f"cannot write golden {path}: {type(exc).__name__}: {exc}; existing goldens untouched "
                            "(make the golden directory writable or point --tprune-golden-dir elsewhere)",
                        ) from None
                    self.golden_written.append(str(path))
                return
            if not path.exists():
                raise CheckFailed(
                    "golden",
                    f"golden file {path} is missing: create it with "
                    f"'pytest --tprune-update-golden -k \"{self.case_id}\"' and review it before committing",
                )
            expected = golden.read_golden(path)
            diff = golden.diff_golden(expected, content)
        if diff:
            raise CheckFailed(
                "golden",
                f"{self.case_id} differs from {path}:\n{golden.render_diff(diff, expected, versions)}\n"
                "if the change is intended, rewrite it with --tprune-update-golden and review the diff",
            )

    def check_reduction(self) -> None:
        """Params and MACs strictly decrease for ratio > 0 and stay in the rule's band."""
        __tracebackhide__ = True
        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("reduction"):
            problems = self._reduction_problems()
        if problems:
            raise CheckFailed("reduction", "; ".join(problems))

    def _reduction_problems(self) -> list[str]:
        out = self.outcome
        problems = []
        pairs = {
            "params": (out.params_before, out.params_after),
            "MACs (torch-pruning)": (out.macs_before, out.macs_after),
            "MACs (FlopCounterMode)": (out.flop_macs_before, out.flop_macs_after),
        }
        for what, (before, after) in pairs.items():
            if self.config.ratio > 0 and not after < before:
                problems.append(f"{what} did not decrease: {before} => {after}")
            if self.config.ratio == 0 and after != before:
                problems.append(f"{what} changed at ratio 0: {before} => {after}")
        band = exp.param_band(out, self.spec.reduction_band, self.spec.reduction_band_reason)
        if band is not None:
            kept = (
                exp.fraction(out.params_after, out.params_before)
                if self.spec.reduction_band
                else exp.pruned_param_fraction(out)
            )
            if kept is not None and not band.contains(kept):
                problems.append(f"{band.what} {kept:.4f} outside [{band.low:.4f}, {band.high:.4f}] ({band.reason})")
        macs = exp.mac_band(out)
        kept_macs = exp.fraction(out.flop_macs_after, out.flop_macs_before)
        if macs is not None and not self.spec.reduction_band and not macs.contains(kept_macs):
            problems.append(f"{macs.what} {kept_macs:.4f} outside [{macs.low:.4f}, {macs.high:.4f}] ({macs.reason})")
        return problems

    def check_all(self) -> None:
        """Every configured check, in order: forward validity, shape rule, golden, reduction."""
        __tracebackhide__ = True
        for check in self.settings.checks:
            getattr(self, f"check_{check}")()

    def resources_row(self) -> dict[str, Any]:
        """What a case that stopped before its figures still reports: memory, worker, durations."""
        return {
            "peak_rss_mb": peak_rss_mb(),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "durations": {k: round(v, 4) for k, v in self.check_times.items()},
        }

    def summary_row(self) -> dict[str, Any]:
        """The figures of this case for the terminal table and the JSON report."""
        out = self.outcome
        kept_params = exp.fraction(out.params_after, out.params_before)
        kept_macs = exp.fraction(out.macs_after, out.macs_before)
        kept_flops = exp.fraction(out.flop_macs_after, out.flop_macs_before)
        return {
            "params_before": out.params_before,
            "params_after": out.params_after,
            "macs_before": out.macs_before,
            "macs_after": out.macs_after,
            "flop_macs_before": out.flop_macs_before,
            "flop_macs_after": out.flop_macs_after,
            "kept_params": round(kept_params, 6),
            "kept_macs": round(kept_macs, 6),
            "kept_flop_macs": round(kept_flops, 6),
            "counter_disagreement": round(kept_macs - kept_flops, 6),
            "groups_pruned": len(out.groups),
            "groups_left_whole": len(out.left_whole),
            "device": out.device,
            "peak_rss_mb": peak_rss_mb(),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "durations": {**out.timings, **{k: round(v, 4) for k, v in self.check_times.items()}},
        }

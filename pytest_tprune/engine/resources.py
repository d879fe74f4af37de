"""Process resources of a worker: pristine models, memory, CPU cores and time limits.

A worker prunes many cases one after another, so it keeps the pristine model
of the model it is on (cases are sorted by model), gives torch its share of
the cores, releases memory between large models, skips up front a model it
cannot hold, and interrupts a case stuck in a loop. None of this is pytest's
business, so the plugin and benchmarks share it.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tprune.engine.measure import unreached_parameters
from pytest_tprune.engine.models import ModelSpec, build_model
from pytest_tprune.errors import CaseTimeout

if TYPE_CHECKING:
    from torch import nn

    from pytest_tprune.engine.latency import Timing
    from pytest_tprune.engine.outcome import Baseline


@dataclass
class Pristine:
    """A worker's unpruned copy of one model and what every config of it shares (its baselines)."""

    key: tuple[str, int]
    model: nn.Module
    spec: ModelSpec
    baselines: dict[str, Baseline] = field(default_factory=dict)  # by device
    latencies: dict[str, Timing] = field(default_factory=dict)
    """The unpruned model's forward latency by device (:mod:`pytest_tprune.engine.latency`), measured once."""
    derived: dict[str, Any] = field(default_factory=dict)
    """What other layers derive once per model and share across its configs (the checks' perturbed copy)."""
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
        self._entry: Pristine | None = None
        self.builds = 0

    def pristine(self, spec: ModelSpec, seed: int) -> Pristine:
        key = (spec.name, seed)
        if self._entry is None or self._entry.key != key:
            previous, self._entry = self._entry, None  # release the previous model before building the next
            if previous is not None and sum(p.numel() for p in previous.model.parameters()) > RELEASE_ABOVE_PARAMS:
                del previous
                release_memory()
            self._entry = Pristine(key, build_model(spec, seed), spec)
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


@functools.cache
def freeze_imports_for_gc() -> int:
    """Take what the imports left alive out of the cyclic collector's walks, once per process; returns how many.

    A full (generation 2) collection walks every object the collector tracks,
    and once torch, timm and torch-pruning are imported a worker holds some
    400 000 of them (functions, classes, registries) that live until
    it exits. Building, copying and pruning models allocates so many objects
    that full collections run dozens of times per model, and each walked the
    imports again (about 0.2 s apiece). ``gc.freeze()`` moves them to the
    permanent generation, which collections skip; refcounting still frees
    any of them that dies. Called before the first model is built and right
    after a collection, so only what the process keeps anyway is frozen: the
    models, their copies and torch-pruning's graphs are still collected as
    before, and peak memory is not higher (benchmarks/gc_cost.py measures both).
    They are thawed again when the process exits, so that its last collection
    frees them as it would have: extension modules that count their objects at
    shutdown (triton's nanobind bindings) would otherwise report them leaked.
    """
    import atexit
    import gc

    import timm  # noqa: F401 - imported here so that their objects are among those frozen
    import torch  # noqa: F401
    import torch_pruning  # noqa: F401

    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)
    return gc.get_freeze_count()


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


MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class MemoryBudget:
    """What one worker may use: the memory free for new work when it started, shared among the workers.

    ``available`` is the kernel's MemAvailable (free memory plus what it can
    reclaim): total RAM would count what other processes already hold, so a
    model that cannot fit would still be tried and grow until the OOM killer
    ends the worker. ``source`` is ``available``, or ``total`` where MemAvailable
    cannot be read (no /proc).
    """

    available: int
    source: str
    workers: int

    @property
    def per_worker(self) -> int:
        return self.available // self.workers

    def describe(self) -> str:
        """Where the share comes from, e.g. ``20.0 GiB available at start / 2 worker(s)``."""
        what = "available at start" if self.source == "available" else "of RAM in total (MemAvailable unreadable)"
        return f"{self.available / 2**30:.1f} GiB {what} / {self.workers} worker(s)"


def read_meminfo_available(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable in bytes from ``meminfo``, or None where the file or the line is absent."""
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if key.strip() == "MemAvailable" and fields and fields[0].isdigit():
            return int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return None


def total_memory() -> int | None:
    """Physical memory in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def worker_count(environ: Mapping[str, str] = os.environ) -> int:
    """How many xdist workers share this machine (1 without xdist)."""
    try:
        return max(int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    except ValueError:
        return 1


def memory_budget(meminfo: Path = MEMINFO, environ: Mapping[str, str] = os.environ) -> MemoryBudget | None:
    """This process's :class:`MemoryBudget` as of now; None where no memory figure is readable."""
    available = read_meminfo_available(meminfo)
    if available is not None:
        return MemoryBudget(available, "available", worker_count(environ))
    total = total_memory()
    return None if total is None else MemoryBudget(total, "total", worker_count(environ))


@functools.cache
def memory_at_start() -> MemoryBudget | None:
    """The budget read once per process, the first time it is asked (the plugin asks when a worker starts).

    Read later, it would depend on what the other workers happen to hold at
    that moment, and which models are skipped would change from run to run.
    """
    return memory_budget()


def memory_budget_bytes() -> int | None:
    """This worker's share of the memory available when it started."""
    budget = memory_at_start()
    return None if budget is None else budget.per_worker


_TOO_BIG: dict[tuple[str, float | None], str | None] = {}


def too_big_reason(spec: ModelSpec, max_params: float | None = None) -> str | None:
    """Why a model must be skipped up front, or None: over ``--tprune-max-params``, or more than
    this worker can hold (rather than be killed by the OOM killer). Decided once per model and process."""
    key = (spec.name, max_params)
    if key not in _TOO_BIG:
        _TOO_BIG[key] = _too_big(spec, max_params)
    return _TOO_BIG[key]


def _too_big(spec: ModelSpec, max_params: float | None) -> str | None:
    from pytest_tprune.engine.models import meta_param_count

    count = meta_param_count(spec)
    if count is None:
        return None
    if max_params is not None and count > max_params:
        return f"{spec.name} has {count / 1e6:.1f} M parameters, over --tprune-max-params={max_params:g}"
    return over_budget_reason(spec.name, count, memory_at_start())


def over_budget_reason(name: str, count: int, budget: MemoryBudget | None) -> str | None:
    """Why a model of ``count`` parameters does not fit this worker's ``budget``, or None when it does."""
    need = count * BYTES_PER_PARAM
    if budget is None or need <= budget.per_worker:
        return None
    fix = "run it with fewer workers (-n)" if budget.workers > 1 else "free memory or run it on a larger machine"
    # reports/table.py reads "need about X GiB, over this worker's share of memory (Y GiB)": keep that prefix
    return (
        f"{name}: {count / 1e6:.0f} M parameters need about {need / 2**30:.1f} GiB, over this worker's share "
        f"of memory ({budget.per_worker / 2**30:.1f} GiB): {budget.describe()}; {fix}"
    )


UNRAISABLE_RETRY_S = 0.05
"""How soon an expired time limit fires again after it fired where an exception cannot propagate."""
REFIRE_S = 1.0
"""How often an expired time limit fires again, in case library code caught its exception."""


@contextmanager
def timeouts_fire_again_when_swallowed() -> Iterator[None]:
    """A :class:`CaseTimeout` raised where Python cannot propagate it fires again moments later, unreported.

    The limit's signal lands wherever the interpreter is: in a garbage-collector
    callback (Hypothesis keeps one installed for the whole run), a weakref
    callback or a finaliser the exception is only printed as "Exception ignored
    in ..." (a pytest warning) and the case runs on. ``sys.unraisablehook``
    sees exactly those: this one re-arms the timer instead, so the next fire
    lands in the case's own code, and hands every other exception on.
    """
    import sys

    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, CaseTimeout):
            signal.setitimer(signal.ITIMER_REAL, UNRAISABLE_RETRY_S, REFIRE_S)
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextmanager
def time_limit(seconds: float | None, what: str, option: str = "--tprune-timeout") -> Iterator[None]:
    """Interrupt a case stuck in a Python loop (e.g. a dependency-graph hang).

    Uses SIGALRM, so it works on POSIX main threads (pytest and xdist workers
    run tests there) and is a no-op elsewhere. Where the signal lands in a
    garbage-collector or weakref callback or a finaliser, it fires again
    moments later (:func:`timeouts_fire_again_when_swallowed`).
    """
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise CaseTimeout(f"{what} ran past the per-case time limit of {seconds:g} s ({option})")

    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_timer = signal.getitimer(signal.ITIMER_REAL)
    if previous_timer[0] and previous_timer[0] < float(seconds):  # type: ignore[arg-type]
        yield  # an enclosing limit expires first: let it rule
        return
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds), REFIRE_S)  # type: ignore[arg-type]
    try:
        with timeouts_fire_again_when_swallowed():
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)

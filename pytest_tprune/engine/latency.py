"""Eager forward latency of a model at batch 1: what a pruned model buys at inference.

Parameters and MACs say how much pruning removed; latency says whether that
turns into speed (thin layers can leave a model memory- or overhead-bound). A
measurement is a few warm-up forwards, then the median of a handful of timed
ones, under ``torch.inference_mode()`` with torch's intra-op threads fixed to
:data:`THREADS` (restored afterwards), so figures from workers of different
counts and machines of different core counts compare. A time cap bounds what
one measurement costs on a large model: it stops early, after at least
:data:`MIN_RUNS` timed forwards, and the figure says how many it took.

Machines are noisy: latency is reported (the case's JSON row, the terminal
table, ``tprune compare``'s speed-up section) and never asserted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

BATCH = 1
THREADS = 1
"""One intra-op thread: the speed-up of pruning alone, not of how well a layer parallelises on this machine."""
WARMUP = 3
RUNS = 7
MIN_RUNS = 3
TIME_CAP_S = 0.5
"""Seconds of timed forwards one measurement may take before it stops (after MIN_RUNS); the warm-up stops after
half of it (after one forward). A tiny model does all its runs in milliseconds; ViT-B/32 (140 ms a forward on one
core) stops at 2 warm-up and 4 timed forwards."""


@dataclass(frozen=True)
class Timing:
    """One model's measured forward: the median in milliseconds and how many timed runs it is the median of."""

    ms: float
    runs: int
    threads: int
    warmup: int


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: nn.Module,
    inputs: torch.Tensor,
    threads: int | None = None,
    warmup: int = WARMUP,
    runs: int = RUNS,
    cap_s: float = TIME_CAP_S,
) -> Timing:
    """The median eager forward time of ``model`` (in eval mode) on ``inputs``, with ``threads`` intra-op threads
    (default :data:`THREADS`, read at call time); torch's thread count and the model's mode are restored."""
    import torch

    threads = THREADS if threads is None else threads
    previous = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            warmed = time.perf_counter()
            for done in range(warmup):  # a slow model is warm after one or two: half the cap bounds this part
                if done and time.perf_counter() - warmed >= cap_s / 2:
                    warmup = done
                    break
                model(inputs)
                _sync(inputs.device)
            times: list[float] = []
            spent = 0.0
            while len(times) < runs and (len(times) < MIN_RUNS or spent < cap_s):
                start = time.perf_counter()
                model(inputs)
                _sync(inputs.device)
                times.append(time.perf_counter() - start)
                spent += times[-1]
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return Timing(statistics.median(times) * 1000, len(times), threads, warmup)


def latency_row(unpruned: Timing, pruned: Timing) -> dict[str, Any]:
    """The case row's ``latency``: batch, threads, timed runs, both medians and the speed-up (unpruned / pruned)."""
    return {
        "batch": BATCH,
        "threads": pruned.threads,
        "warmup": pruned.warmup,
        "runs": min(unpruned.runs, pruned.runs),
        "unpruned_ms": round(unpruned.ms, 4),
        "pruned_ms": round(pruned.ms, 4),
        "speedup": round(unpruned.ms / pruned.ms, 4) if pruned.ms > 0 else None,
    }

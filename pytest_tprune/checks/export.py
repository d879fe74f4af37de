"""The ``export`` check: a pruned model that still deploys.

Pruning rewrites a model's layers in place; a model that still runs eagerly
may no longer trace or export (a shape constant baked into a module, a
parameter replaced by a plain tensor). For each exporter this check exports
the pruned model, runs the exported artifact on the case's example input and
compares its output with the eager pruned output the prune already computed
(``Pruned.output``):

* ``torch.export``: ``torch.export.export(model, (inputs,))``, run through ``.module()``;
* ``jit.trace``: ``torch.jit.trace(model, inputs)``;
* ``onnx``: ``torch.onnx.export(..., dynamo=True)`` run by onnxruntime, only where
  ``onnx``, ``onnxscript`` and ``onnxruntime`` are installed (``pip install pytest-tprune[onnx]``);
  elsewhere it is recorded as not available, which is neither a failure nor written to goldens.

Tolerance: ``|exported - eager| <= ATOL + RTOL * |eager|`` elementwise, with
ATOL = RTOL = 1e-4 in float32. An exported program runs the same float32
kernels, but decompositions and fusions reorder reductions, which moves
results by about 1e-6 relative; a pruning fault (a wrong channel, a stale
shape) moves them by 1e-2 or more. 1e-4 sits two decades from each.

Only when the pruned model fails an exporter (raises, or mismatches) is the
same exporter tried on the unpruned model, to tell a pruning fault from a
model the exporter never handled: unpruned exports but pruned does not, and the
case fails naming the exporter, the error's first line and where it came from;
both fail, and it is recorded as ``unpruned model does not export either``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

EXPORTERS = ("torch.export", "jit.trace", "onnx")
"""Every exporter, in the order the check runs them."""
OPTIONAL_EXPORTERS = frozenset({"onnx"})
"""Exporters whose packages may be absent: a golden is compared on them only where it records them."""
ATOL = 1e-4
RTOL = 1e-4
OK = "ok"
UNAVAILABLE = "not available"
NOT_EITHER = "unpruned model does not export either"


@dataclass
class ExporterResult:
    """What one exporter did with the pruned model (and, when that failed, with the unpruned one)."""

    exporter: str
    status: str
    """``ok``, ``not available``, ``fails: <ExceptionType>``, ``mismatch``, or ``unpruned model does not
    export either (<what the pruned model did>)``: stable across runs and machines, so goldens hold it."""
    seconds: float = 0.0
    message: str = ""
    """One line: the error's first line and where it came from, or the max abs error of a mismatch."""
    max_abs_error: float | None = None
    failing: bool = False
    """The pruned model fails where the unpruned one exports: the check fails."""


@dataclass
class ExportReport:
    """Every exporter's result for one case, with the problems that fail the check."""

    results: list[ExporterResult] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{r.exporter}: {r.message}" for r in self.results if r.failing]

    def golden(self) -> dict[str, str]:
        """The golden's ``export`` block: each available exporter's status, no error text or timing."""
        return {r.exporter: r.status for r in self.results if r.status != UNAVAILABLE}

    def summary(self) -> dict[str, Any]:
        """The report row's ``export``: each exporter's status and seconds (and message where there is one)."""
        row: dict[str, Any] = {}
        for r in self.results:
            entry: dict[str, Any] = {"status": r.status, "seconds": round(r.seconds, 4)}
            if r.message:
                entry["message"] = r.message
            if r.max_abs_error is not None and math.isfinite(r.max_abs_error):  # JSON has no inf or nan
                entry["max_abs_error"] = r.max_abs_error
            row[r.exporter] = entry
        return row


class Mismatch(Exception):
    """An exported artifact ran, but its output is not the eager output within the tolerance."""

    def __init__(self, max_abs_error: float, detail: str) -> None:
        self.max_abs_error = max_abs_error
        super().__init__(detail)


def onnx_available() -> bool:
    """Whether the ONNX exporter and a runtime to run its file are installed (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))


def available(exporter: str) -> bool:
    return exporter != "onnx" or onnx_available()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters warn (TracerWarning, deprecations), log (a failing ``torch.export`` logs its whole graph at
    WARNING) and print progress: none of it is the check's verdict, which says what failed in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def without_node_stack_traces() -> Iterator[None]:
    """``torch.export`` records the Python stack of every graph node it traces (about 15% of an export here);
    nothing reads them: a failure's message and origin come from the exception. Off where torch has the switch."""
    import torch.fx.config

    previous = getattr(torch.fx.config, "do_not_emit_stack_traces", None)
    if previous is None:  # an older torch without the switch: export as it is
        yield
        return
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = previous


def run_torch_export(model: nn.Module, inputs: torch.Tensor) -> Any:
    import torch

    with without_node_stack_traces():
        program = torch.export.export(model, (inputs,))
    return program.module()(inputs)


def run_jit_trace(model: nn.Module, inputs: torch.Tensor) -> Any:
    import torch

    traced = torch.jit.trace(model, inputs, check_trace=False)  # the comparison below is the check
    return traced(inputs)


def run_onnx(model: nn.Module, inputs: torch.Tensor) -> Any:
    import tempfile

    import onnxruntime
    import torch

    with tempfile.TemporaryDirectory(prefix="tprune-onnx-") as folder:
        path = str(Path(folder) / "model.onnx")
        torch.onnx.export(model, (inputs,), path, dynamo=True, verbose=False)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy()}
        return torch.from_numpy(session.run(None, feed)[0])


RUNNERS: dict[str, Callable[[Any, Any], Any]] = {
    "torch.export": run_torch_export,
    "jit.trace": run_jit_trace,
    "onnx": run_onnx,
}
"""Exporter -> a function that exports ``model`` and returns the artifact's output on ``inputs``."""


def compare(obtained: Any, reference: torch.Tensor) -> None:
    """Raise :class:`Mismatch` unless ``obtained`` is ``reference`` within ATOL + RTOL * |reference|."""
    from pytest_tprune.engine.measure import output_tensor

    out = output_tensor(obtained).detach().to(reference.device, reference.dtype)
    if out.shape != reference.shape:
        raise Mismatch(float("inf"), f"output shape {list(out.shape)} != eager {list(reference.shape)}")
    error = (out - reference).abs()
    worst = float(error.max()) if error.numel() else 0.0
    if not bool((error <= ATOL + RTOL * reference.abs()).all()):
        raise Mismatch(worst, f"max abs error {worst:.3g} vs the eager output, over atol {ATOL:g} + rtol {RTOL:g}")


def attempt(exporter: str, model: nn.Module, inputs: torch.Tensor, reference: torch.Tensor) -> BaseException | None:
    """Export, run and compare; the exception that stopped it, or None when the artifact matches eager."""
    import torch

    try:
        with quiet(), torch.no_grad():
            compare(RUNNERS[exporter](model, inputs), reference)
    except Exception as exc:  # an exporter's failure is the verdict, never a raw traceback
        return exc
    return None


USER_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def origin(exc: BaseException) -> str:
    """Where a failure came from: the model's frame a dynamo error names, else the deepest non-torch frame.

    ``torch.export`` traces bytecode symbolically, so the model's line is in
    the message ("from user code: File ..."), not in the traceback.
    """
    import traceback

    named = USER_FRAME.findall(str(exc))
    if named:
        path, line = named[-1]
        return f"{'/'.join(Path(path).parts[-2:])}:{line}"
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if "/torch/" not in f.filename.replace("\\", "/")] or frames
    if not outside:
        return "unknown"
    return f"{'/'.join(Path(outside[-1].filename).parts[-2:])}:{outside[-1].lineno}"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= 200 else text[:197] + "..."


def pruned_status(exc: BaseException) -> str:
    """The golden-stable status of a failure: its type only (messages hold addresses and line numbers)."""
    return "mismatch" if isinstance(exc, Mismatch) else f"fails: {type(exc).__name__}"


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, Mismatch):
        return str(exc)
    return f"{type(exc).__name__}: {first_line(exc)} (at {origin(exc)})"


def check_exporter(
    exporter: str,
    model: nn.Module,
    inputs: torch.Tensor,
    reference: torch.Tensor,
    unpruned: Callable[[], tuple[nn.Module, torch.Tensor]],
) -> ExporterResult:
    """One exporter on the pruned model; only on failure, the same exporter on ``unpruned()`` to classify it."""
    if not available(exporter):
        return ExporterResult(exporter, UNAVAILABLE)
    start = time.perf_counter()
    exc = attempt(exporter, model, inputs, reference)
    if exc is None:
        return ExporterResult(exporter, OK, time.perf_counter() - start)
    status, message = pruned_status(exc), failure_message(exc)
    worst = exc.max_abs_error if isinstance(exc, Mismatch) else None
    base_model, base_output = unpruned()
    base_exc = attempt(exporter, base_model, inputs, base_output)
    seconds = time.perf_counter() - start
    if base_exc is not None:
        return ExporterResult(exporter, f"{NOT_EITHER} ({status})", seconds, message, worst)
    what = "" if isinstance(exc, Mismatch) else "the pruned model fails to export: "
    detail = f"{what}{message}; the unpruned model exports"
    return ExporterResult(exporter, status, seconds, detail, worst, failing=True)


def export_report(
    model: nn.Module,
    inputs: torch.Tensor,
    reference: torch.Tensor,
    unpruned: Callable[[], tuple[nn.Module, torch.Tensor]],
    exporters: tuple[str, ...] = EXPORTERS,
) -> ExportReport:
    """Every exporter on the pruned ``model`` in eval mode; ``unpruned`` is called at most once, on failure."""
    made: list[tuple[nn.Module, torch.Tensor]] = []

    def unpruned_once() -> tuple[nn.Module, torch.Tensor]:
        if not made:
            made.append(unpruned())
        return made[0]

    model.eval()
    return ExportReport([check_exporter(e, model, inputs, reference, unpruned_once) for e in exporters])

"""The ``export`` check and latency: a pruned model that still deploys, and what it gains.

On timm's tiny ``test_resnet`` and ``test_vit`` (a case prunes in well under
a second): the check passes on real pruned models and the golden gains its
``export`` block; it fails naming the exporter when only the pruned model stops
exporting (a data-dependent branch inserted into it) or when an artifact's
output drifts past the tolerance; it records, without failing, an exporter the
unpruned model fails too. Latency figures are present, positive, measured once
per model for the unpruned side, and never asserted on. ``tprune compare``
counts an exporter that stopped working as a regression and shows a speed-up
drop apart, without deciding the exit status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from pytest_tprune.checks import export as export_check  # noqa: E402
from pytest_tprune.checks import golden  # noqa: E402
from pytest_tprune.checks.case import DEFAULT_CHECKS, CaseSettings, TpruneCase  # noqa: E402
from pytest_tprune.cli.commands import compare_main  # noqa: E402
from pytest_tprune.engine import latency  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import timm_spec  # noqa: E402
from pytest_tprune.engine.resources import STORE  # noqa: E402
from pytest_tprune.errors import CheckFailed  # noqa: E402
from pytest_tprune.session.settings import parse_checks  # noqa: E402

pytestmark = pytest.mark.usefixtures("exporters_imported")  # its pytester runs export in this process

ONE_CASE = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local", "-p", "no:cacheprovider")
ALWAYS = {"torch.export": "ok", "jit.trace": "ok"}


def case(model: str = "test_resnet", ratio: float = 0.5, checks: tuple[str, ...] = ("export",)) -> TpruneCase:
    return TpruneCase(timm_spec(model), PruneConfig(ratio), CaseSettings(checks=checks, latency=False))


def expected_block() -> dict[str, str]:
    """What a passing case records: onnx only where its packages are installed."""
    return {**ALWAYS, "onnx": "ok"} if export_check.onnx_available() else ALWAYS


# --- the check on real pruned models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["test_resnet", "test_vit"])
def test_export_passes_on_a_pruned_model_after_the_forward_check(model: str) -> None:
    """After ``forward`` (whose train pass moves BatchNorm statistics) every exporter matches the eager model."""
    checked = case(model, checks=("forward", "export"))
    checked.check_all()
    assert checked.export is not None and checked.export.golden() == expected_block()
    row = checked.summary_row()["export"]
    assert all(row[name]["seconds"] > 0 for name in expected_block())
    if not export_check.onnx_available():
        assert row["onnx"] == {"status": "not available", "seconds": 0.0}


def test_export_is_opt_in() -> None:
    assert "export" not in DEFAULT_CHECKS and parse_checks(None) == DEFAULT_CHECKS
    assert parse_checks("forward,export") == ("forward", "export")
    assert parse_checks("export,golden") == ("export", "golden")  # export runs first: the golden records it


class DataDependent(torch.nn.Module):
    """Wraps a module behind a branch on a tensor's value: eager runs it, ``torch.export`` cannot trace it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > float("-inf"):  # always true, so the eager output is unchanged
            return self.inner(x)
        return -self.inner(x)


def test_a_pruned_model_that_stops_exporting_fails_naming_the_exporter() -> None:
    broken = case()
    broken.pruned.model.fc = DataDependent(broken.pruned.model.fc)  # the pruned model only
    with pytest.raises(CheckFailed) as info:
        broken.check_export()
    message = str(info.value)
    assert message.startswith("[export] torch.export: the pruned model fails to export: ")
    assert "the unpruned model exports" in message
    assert "test_export.py:" in message  # where: the line of the data-dependent branch
    assert "jit.trace" not in message  # tracing follows the branch eager took: it still matches
    assert broken.export is not None and broken.export.golden()["torch.export"].startswith("fails: ")
    assert "\n" not in broken.export.golden()["torch.export"] and "0x" not in broken.export.golden()["torch.export"]


def test_an_exported_output_past_the_tolerance_fails_naming_the_exporter_and_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drifted = case()
    pruned_model = drifted.pruned.model
    real = export_check.RUNNERS["jit.trace"]

    def drifting(model: Any, inputs: Any) -> Any:
        out = real(model, inputs)
        return out + 3e-3 if model is pruned_model else out  # the pruned artifact drifts, the unpruned does not

    monkeypatch.setitem(export_check.RUNNERS, "jit.trace", drifting)
    with pytest.raises(CheckFailed) as info:
        drifted.check_export()
    message = str(info.value)
    assert message.startswith("[export] jit.trace: max abs error 0.003 vs the eager output, over atol 0.0001")
    assert "torch.export" not in message
    assert drifted.export is not None and drifted.export.golden()["jit.trace"] == "mismatch"
    assert drifted.export.summary()["jit.trace"]["max_abs_error"] == pytest.approx(3e-3, rel=1e-3)


def test_an_exporter_the_unpruned_model_fails_too_is_recorded_not_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def refuses(model: Any, inputs: Any) -> Any:
        asked.append(model)
        raise RuntimeError("unsupported operator at 0x7f00deadbeef")

    monkeypatch.setitem(export_check.RUNNERS, "torch.export", refuses)
    both = case()
    both.check_export()  # does not raise
    assert both.export is not None
    status = both.export.golden()["torch.export"]
    assert status == "unpruned model does not export either (fails: RuntimeError)"
    assert len(asked) == 2 and asked[0] is both.model and asked[1] is not both.model  # pruned, then unpruned
    assert both.export.golden()["jit.trace"] == "ok"


def test_a_passing_exporter_never_exports_the_unpruned_model(monkeypatch: pytest.MonkeyPatch) -> None:
    fine = case()
    fine.pruned  # noqa: B018
    monkeypatch.setattr(fine, "_unpruned_for_export", lambda: pytest.fail("exported the unpruned model"))
    fine.check_export()
    monkeypatch.setitem(export_check.RUNNERS, "jit.trace", lambda model, inputs: pytest.fail("exported twice"))
    fine.check_export()  # a second call (check_export() then check_all() naming it) reuses the first verdict


def test_an_exporter_crashing_outside_torch_is_a_verdict_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    crashed = case()
    pruned_model = crashed.pruned.model
    real = export_check.RUNNERS["torch.export"]

    def fails_pruned(model: Any, inputs: Any) -> Any:
        if model is pruned_model:
            raise KeyError("lost a parameter")
        return real(model, inputs)

    monkeypatch.setitem(export_check.RUNNERS, "torch.export", fails_pruned)
    with pytest.raises(CheckFailed, match=r"^\[export\] torch.export: the pruned model fails to export: KeyError"):
        crashed.check_export()


def test_torch_export_records_no_node_stack_traces_and_leaves_the_users_switch_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stack traces are a sixth of an export's time and nothing reads them; a user's own setting survives the
    check, whether the export passes or raises."""
    import torch.fx.config as fx_config

    if not hasattr(fx_config, "do_not_emit_stack_traces"):
        pytest.skip("this torch has no switch for node stack traces")
    monkeypatch.setattr(fx_config, "do_not_emit_stack_traces", False)
    real, traced = torch.export.export, []

    def recording(*args: Any, **kwargs: Any) -> Any:
        program = real(*args, **kwargs)
        traced.append([n.meta.get("stack_trace") for n in program.graph.nodes if n.op == "call_function"])
        return program

    monkeypatch.setattr(torch.export, "export", recording)
    case().check_export()
    assert len(traced) == 1 and traced[0] and not any(traced[0])
    assert fx_config.do_not_emit_stack_traces is False

    def raising(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an exporter bug")

    monkeypatch.setattr(torch.export, "export", raising)
    failed = case()
    failed.check_export()  # the unpruned model fails too: recorded, not failed
    assert failed.export is not None and failed.export.golden()["torch.export"].startswith(export_check.NOT_EITHER)
    assert fx_config.do_not_emit_stack_traces is False


# --- goldens ---------------------------------------------------------------------------------------------------------


def test_the_golden_gains_the_export_block_and_keeps_it_without_the_check(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    path = pytester.path / "golden" / "test_resnet" / "r0.50-local.json"
    report = pytester.path / "report.json"
    with_export = ("--tprune-checks=forward,export,golden", "--tprune-update-golden", f"--tprune-report={report}")
    assert pytester.runpytest(*ONE_CASE, *with_export).ret == 0
    assert golden.read_golden(path)["export"] == expected_block()
    (row,) = json.loads(report.read_text())["cases"]
    assert {name: entry["status"] for name, entry in row["export"].items()}["torch.export"] == "ok"
    lat = row["latency"]
    assert lat["batch"] == 1 and lat["threads"] == latency.THREADS and lat["runs"] >= latency.MIN_RUNS
    assert lat["unpruned_ms"] > 0 and lat["pruned_ms"] > 0 and lat["speedup"] > 0
    assert "export" not in golden.read_golden(path).get("figures", {})
    made = path.read_bytes()

    assert pytester.runpytest(*ONE_CASE, "--tprune-checks=forward,golden", "--tprune-update-golden").ret == 0
    assert path.read_bytes() == made  # a run without the check neither drops nor rewrites the block
    assert pytester.runpytest(*ONE_CASE, "--tprune-checks=export,golden").ret == 0  # compared, and equal

    path.write_text(made.decode().replace('"jit.trace": "ok"', '"jit.trace": "fails: TracingCheckError"'))
    result = pytester.runpytest(*ONE_CASE, "--tprune-checks=export,golden")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*export jit.trace: fails: TracingCheckError => ok*"])


def test_golden_compares_onnx_only_where_the_golden_records_it() -> None:
    obtained = {"export": {"torch.export": "ok", "jit.trace": "ok", "onnx": "ok"}}
    assert golden.export_changes({"export": {"torch.export": "ok", "jit.trace": "ok"}}, obtained) == []
    assert golden.export_changes({"export": {"onnx": "fails: X", **ALWAYS}}, obtained) == [("onnx", "fails: X", "ok")]
    assert golden.export_changes({}, {"export": ALWAYS}) == [("torch.export", None, "ok"), ("jit.trace", None, "ok")]


def test_carry_export_keeps_entries_this_run_did_not_record(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    golden.write_golden(path, {**_minimal_golden(), "export": {**ALWAYS, "onnx": "ok"}})
    assert golden.carry_export(_minimal_golden(), path)["export"] == {**ALWAYS, "onnx": "ok"}
    now = {**_minimal_golden(), "export": {"torch.export": "fails: E", "jit.trace": "ok"}}
    assert golden.carry_export(now, path)["export"] == {"torch.export": "fails: E", "jit.trace": "ok", "onnx": "ok"}
    assert "export" not in golden.carry_export(_minimal_golden(), tmp_path / "absent.json")


def _minimal_golden() -> dict[str, Any]:
    return {
        "schema": golden.SCHEMA,
        "model": "m",
        "config": {},
        "config_id": "c",
        "input_size": [3, 8, 8],
        "versions": {},
        "figures": {},
        "output_shape": [1, 2],
        "modules": {},
        "shapes": {},
    }


# --- latency ---------------------------------------------------------------------------------------------------------


def test_latency_measures_the_unpruned_model_once_per_model_across_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    STORE.clear()  # a fresh pristine model: nothing measured yet
    measured: list[Any] = []
    real = latency.measure

    def counting(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> latency.Timing:
        measured.append(model)
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(latency, "measure", counting)
    threads = torch.get_num_threads()
    spec = timm_spec("test_vit")
    rows = []
    for ratio in (0.5, 0.3):
        checked = TpruneCase(spec, PruneConfig(ratio), CaseSettings(checks=("forward",)))
        checked.check_all()
        rows.append(checked.summary_row())
    assert len(measured) == 3  # the unpruned model once, then each pruned model
    assert measured[1] is not measured[2]
    first, second = rows[0]["latency"], rows[1]["latency"]
    assert first["unpruned_ms"] == second["unpruned_ms"] > 0
    for row in rows:
        lat = row["latency"]
        assert lat["pruned_ms"] > 0 and lat["speedup"] == pytest.approx(lat["unpruned_ms"] / lat["pruned_ms"], rel=1e-3)
        assert lat["batch"] == 1 and lat["threads"] == latency.THREADS and lat["runs"] >= latency.MIN_RUNS
        assert row["durations"]["latency"] > 0
    assert torch.get_num_threads() == threads  # restored after each measurement


def test_latency_stops_at_its_time_cap() -> None:
    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import time

            time.sleep(0.02)
            return x

    timing = latency.measure(Slow(), torch.zeros(1), cap_s=0.05)
    assert timing.runs == latency.MIN_RUNS and timing.warmup < latency.WARMUP and timing.ms >= 20


def test_latency_can_be_left_out(pytester: pytest.Pytester) -> None:
    assert case().latency is None  # CaseSettings(latency=False)
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        *ONE_CASE, "--tprune-checks=forward", "--tprune-no-latency", f"--tprune-report={report}"
    )
    assert result.ret == 0
    (row,) = json.loads(report.read_text())["cases"]
    assert "latency" not in row and "latency" not in row["durations"]
    result.stdout.fnmatch_lines(["*kept speedup  outcome", "test_resnet * -  passed"])


# --- tprune compare --------------------------------------------------------------------------------------------------


def _report(tmp_path: Path, name: str, export: dict[str, str], speedup: float, outcome: str = "passed") -> str:
    row = {
        "nodeid": "tests/test_zoo.py::test_prune[test_resnet-r0.50-local]",
        "model": "test_resnet",
        "config_id": "r0.50-local",
        "config": {},
        "outcome": outcome,
        "failed_check": None,
        "reason": None,
        "duration": 1.0,
        "export": {k: {"status": v, "seconds": 0.1} for k, v in export.items()},
        "latency": {"batch": 1, "threads": 1, "runs": 7, "unpruned_ms": 6.0, "pruned_ms": 6.0 / speedup},
    }
    row["latency"]["speedup"] = speedup
    document = {"schema": 1, "tool": "pytest-tprune", "complete": True, "environment": {}, "cases": [row]}
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_compare_counts_an_exporter_that_stopped_working_as_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _report(tmp_path, "old.json", ALWAYS, 2.0)
    new = _report(tmp_path, "new.json", {**ALWAYS, "jit.trace": "unpruned model does not export either (x)"}, 2.0)
    assert compare_main([old, new]) == 1  # the case still passes, but no longer deploys with jit.trace
    out = capsys.readouterr().out
    assert "export jit.trace ok -> unpruned model does not export either (x)" in out
    assert compare_main([old, new, "--format", "json"]) == 1
    (absorbed,) = json.loads(capsys.readouterr().out)["absorbed"]
    assert absorbed["findings"][0]["kind"] == "export"
    onnx_gone = _report(tmp_path, "n2.json", {**ALWAYS, "onnx": "not available"}, 2.0)
    onnx_was = _report(tmp_path, "o2.json", {**ALWAYS, "onnx": "ok"}, 2.0)
    assert compare_main([onnx_was, onnx_gone]) == 0  # an exporter not installed is no regression


def test_compare_shows_a_speedup_drop_apart_and_it_never_sets_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _report(tmp_path, "old.json", ALWAYS, 2.0)
    new = _report(tmp_path, "new.json", ALWAYS, 1.2)
    assert compare_main([old, new]) == 0
    out = capsys.readouterr().out
    assert "Speed-up drops: fell by more than 25%" in out
    assert "test_resnet [r0.50-local]: 2.00x -> 1.20x (-40.0%)" in out
    assert "OK: 1 with a speed-up drop" in out and "Regressions" not in out
    assert compare_main([old, new, "--speedup-drop", "0.5"]) == 0
    assert "Speed-up" not in capsys.readouterr().out
    assert compare_main([old, new, "--format", "markdown"]) == 0
    assert "### Speed-up drops" in capsys.readouterr().out
    assert compare_main([old, new, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speedups"][0]["drop"] == pytest.approx(0.4) and data["counts"].get("speedups") is None
    assert compare_main([old, new, "--speedup-drop", "1.5"]) == 2

"""Which onnx made an export verdict: the optional exporter's package versions in reports and goldens.

An ONNX export status can change with ``pip install -U onnxruntime`` and no
change to torch-pruning at all. The versions of the exporter's packages are
recorded wherever its status is (the report's environment, the golden next to
its ``onnx`` entry, the header), so the golden diff and ``tprune compare`` name
the package that moved. The extra is not installed here (nor in CI): these
tests make it look installed by answering the package-metadata lookups for its
three packages and running the exporter through ``jit.trace``; what is recorded
about the packages, which is what is tested, does not need them.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

# In-process pytester runs forget modules imported during the run; import the heavy ones before any run does.
torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torch_pruning")

from pytest_tprune.checks import export as export_check  # noqa: E402
from pytest_tprune.checks import golden  # noqa: E402
from pytest_tprune.cli.commands import compare_main  # noqa: E402
from pytest_tprune.engine import identity  # noqa: E402

pytestmark = pytest.mark.usefixtures("exporters_imported")

ONE_CASE = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local", "-p", "no:cacheprovider")
EXPORT_AND_GOLDEN = "--tprune-checks=forward,export,golden"
ONNX = {"onnx": "1.23.2", "onnxscript": "0.7.2", "onnxruntime": "1.32.0"}


def installed_onnx(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str], via_distribution: bool = False) -> None:
    """Package metadata finds the onnx packages of ``versions`` (under ``<name>-gpu`` with ``via_distribution``,
    as onnxruntime-gpu installs onnxruntime) and no other onnx package; every other package as installed."""
    real = metadata.version
    found = {f"{name}-gpu" if via_distribution else name: v for name, v in versions.items()}

    def version(name: str) -> str:
        if name in found:
            return found[name]
        if name.removesuffix("-gpu") in identity.EXPORTER_PACKAGES["onnx"]:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {name: [f"{name}-gpu"] for name in versions})


def onnx_runs(monkeypatch: pytest.MonkeyPatch, runner: object = export_check.run_jit_trace) -> None:
    """The onnx exporter is available and runs the pruned model through ``runner``."""
    monkeypatch.setattr(export_check, "onnx_available", lambda: True)
    monkeypatch.setitem(export_check.RUNNERS, "onnx", runner)


def test_exporter_versions_are_those_of_an_exporter_with_every_package(monkeypatch: pytest.MonkeyPatch) -> None:
    installed_onnx(monkeypatch, ONNX)
    assert identity.exporter_versions() == ONNX
    assert identity.exporter_versions(["torch.export", "jit.trace"]) == {}  # exporters with no packages of their own
    installed_onnx(monkeypatch, {"onnx": "1.23.2", "onnxruntime": "1.32.0"})
    assert identity.exporter_versions() == {}  # no onnxscript: the exporter does not run, so nothing is recorded
    installed_onnx(monkeypatch, ONNX, via_distribution=True)
    assert identity.exporter_versions() == ONNX  # found through onnxruntime-gpu and the like


def test_the_report_environment_and_the_header_name_the_onnx_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_tprune.session import header

    installed_onnx(monkeypatch, ONNX)
    env = identity.environment("cpu", {"guards": {}})
    assert {name: env[name] for name in ONNX} == ONNX
    assert "torch-pruning " + metadata.version(
        "torch-pruning"
    ) + ", onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0" in (header.versions_line("cpu"))
    installed_onnx(monkeypatch, {})
    assert not set(ONNX) & set(identity.environment("cpu", {"guards": {}}))


def test_versions_line_names_an_onnx_upgrade_and_ignores_an_onnx_not_installed_here() -> None:
    guarded = {"torch": "2.15.0", "timm": "1.0.31", "torch-pruning": "1.6.1"}
    made = {**guarded, **ONNX}
    assert golden.versions_line(made, {**made, "onnxruntime": "1.33.0"}).endswith(
        "upgrade: onnxruntime 1.32.0 -> 1.33.0"
    )
    assert golden.versions_line(made, guarded).startswith("golden made with the versions running now")
    assert "upgrade: onnx ? -> 1.23.2" in golden.versions_line(guarded, made)  # the golden did not record it


def test_a_golden_records_onnx_versions_with_its_status_and_keeps_both_where_onnx_is_absent(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written with onnx, the golden's versions name its packages; rewritten on a machine without the extra, its
    onnx status is carried and so are the versions it was obtained with: the file does not change."""
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    path = pytester.path / "golden" / "test_resnet" / "r0.50-local.json"
    installed_onnx(monkeypatch, ONNX)
    onnx_runs(monkeypatch)
    assert pytester.runpytest(*ONE_CASE, EXPORT_AND_GOLDEN, "--tprune-update-golden").ret == 0
    written = golden.read_golden(path)
    assert written["export"]["onnx"] == "ok"
    assert {name: written["versions"][name] for name in ONNX} == ONNX
    made = path.read_bytes()

    installed_onnx(monkeypatch, {})
    monkeypatch.setattr(export_check, "onnx_available", lambda: False)
    assert pytester.runpytest(*ONE_CASE, EXPORT_AND_GOLDEN, "--tprune-update-golden").ret == 0
    assert path.read_bytes() == made


def test_an_onnx_upgrade_that_breaks_export_is_named_in_the_golden_diff_and_by_compare(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune="def test_prune(tprune_case):\n    tprune_case.check_all()\n")
    before, after = pytester.path / "before.json", pytester.path / "after.json"
    installed_onnx(monkeypatch, ONNX)
    onnx_runs(monkeypatch)
    result = pytester.runpytest(*ONE_CASE, EXPORT_AND_GOLDEN, "--tprune-update-golden", f"--tprune-report={before}")
    assert result.ret == 0

    def broken_runtime(model: object, inputs: object) -> object:
        raise RuntimeError("ONNXRuntimeError: [ShapeInferenceError] (op_type:Conv)")

    installed_onnx(monkeypatch, {**ONNX, "onnxruntime": "1.33.0"})
    onnx_runs(monkeypatch, broken_runtime)
    result = pytester.runpytest(*ONE_CASE, EXPORT_AND_GOLDEN, f"--tprune-report={after}")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*upgrade: onnxruntime 1.32.0 -> 1.33.0*",
            "*export onnx: ok => unpruned model does not export either (fails: RuntimeError)*",
        ]
    )
    assert json.loads(after.read_text())["environment"]["onnxruntime"] == "1.33.0"
    capsys.readouterr()
    assert compare_main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "onnxruntime 1.32.0 -> 1.33.0" in out
    assert "export onnx ok -> unpruned model does not export either (fails: RuntimeError)" in out

"""A downstream project (examples/downstream) adds its own models: end to end with pytester.

The example (copied by conftest.py's ``example`` fixture) runs as users run
it, in a subprocess, without and with xdist;
a width change fails exactly its model's cases. The bad-spec errors run
in-process (no import cost) with the registry and the worker's model store
isolated, since both are module globals that outlive an in-process run.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# In-process pytester runs forget modules imported during the run; torch cannot be
# imported twice in one process, so import it (and timm, torch-pruning) before any run does.
import timm  # noqa: F401
import torch
import torch_pruning  # noqa: F401

from pytest_tprune import ModelSpec, UsageError, add_model, register_model
from pytest_tprune.engine import models

CNN_FACTORY = "return AcmeCNN(widths=(16, 32))"
QUIET = ("-p", "no:cacheprovider")
ONE_CASE = ("--tprune-ratios=0.5", "--tprune-modes=local")


def goldens(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "golden").rglob("*")) if p.is_file()}


def failed_ids(result: pytest.RunResult) -> list[str]:
    return sorted(re.findall(r"^FAILED \S+\[(\S+)\]", result.stdout.str(), re.M))


def change_cnn_width(root: Path) -> None:
    source = root / "acmenets" / "tprune_models.py"
    text = source.read_text()
    assert CNN_FACTORY in text
    source.write_text(text.replace(CNN_FACTORY, "return AcmeCNN(widths=(16, 24))"))


def test_import_stays_free_of_torch_and_exports_the_api() -> None:
    code = (
        "import sys, pytest_tprune as t\n"
        "assert {'torch', 'timm', 'torch_pruning'}.isdisjoint(sys.modules), sorted(sys.modules)\n"
        "assert all(callable(getattr(t, n)) for n in ('register_model', 'register_pruner', 'prune'))\n"
        "assert all(hasattr(t, n) for n in t.__all__), [n for n in t.__all__ if not hasattr(t, n)]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_example_passes_without_and_with_xdist_and_keeps_its_goldens(example: Path, pytester: pytest.Pytester) -> None:
    before = goldens(example)
    assert len([name for name in before if name.endswith(".json")]) == 12
    for extra in ((), ("-n", "2")):
        result = pytester.runpytest_subprocess(*QUIET, *extra, timeout=300)
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=12)
        result.stdout.fnmatch_lines(
            ["*acme_attn *r0.50-local*passed*", "*acme_attn_l1*r0.30-local*passed*", "*acme_cnn*r0.30-global*passed*"]
        )
        assert goldens(example) == before


def test_changed_width_fails_exactly_that_models_cases(example: Path, pytester: pytest.Pytester) -> None:
    before = goldens(example)
    change_cnn_width(example)
    result = pytester.runpytest_subprocess(*QUIET, timeout=300)
    assert result.ret == 1
    result.assert_outcomes(passed=8, failed=4)
    assert failed_ids(result) == [f"acme_cnn-r{r}-{m}" for r in ("0.30", "0.50") for m in ("global", "local")]
    result.stdout.fnmatch_lines(
        [
            "*[[]golden[]] acme_cnn-r0.30-local differs from *golden/acme_cnn/r0.30-local.json:",
            "*modules that changed (*), golden => obtained:",
            "*(head): Linear(in_features=*, out_features=10, bias=True) => (head): Linear(in_features=*",
        ]
    )
    result.stdout.fnmatch_lines(["*acme_cnn*r0.50-local*failed (golden)*"])
    assert goldens(example) == before


BAD_SPECS = """
from acmenets.models import AcmeAttention, AcmeCNN
from pytest_tprune import ModelSpec


def broken_factory():
    raise RuntimeError("checkpoint acme.pt not found")


def pytest_tprune_models(config):
    return [
        ModelSpec("bad_factory", broken_factory, (3, 32, 32)),
        ModelSpec("bad_input", AcmeCNN, (1, 32, 32)),
        ModelSpec("bad_adapter", AcmeCNN, (3, 32, 32), adapters={AcmeAttention: lambda module: None}),
    ]
"""


@pytest.mark.usefixtures("isolated")
def test_bad_specs_fail_with_what_to_fix(example: Path, pytester: pytest.Pytester) -> None:
    (example / "tests" / "conftest.py").write_text(BAD_SPECS)
    result = pytester.runpytest_inprocess(*QUIET, *ONE_CASE, "--tprune-models=bad_*")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*build failed for model 'bad_factory': its factory conftest.broken_factory raised "
            "RuntimeError: checkpoint acme.pt not found (*conftest.py:7 in broken_factory): "
            "fix the factory so that calling it with no arguments returns the model",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*forward failed for model 'bad_input': the unpruned model rejected its example input of shape "
            "[[]1, 1, 32, 32[]] in module 'stem.0': RuntimeError: *expected input[[]1, 1, 32, 32[]] to have 3 "
            "channels*: make ModelSpec.input_size (or example_inputs) match what the model's forward expects*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*adapt failed for model 'bad_adapter': ModelSpec.adapters names type(s) that never occur in the "
            "model: acmenets.models.AcmeAttention: most likely a typo or the wrong class*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*bad_adapter*failed (prune:adapt)*",
            "*bad_factory*failed (prune:build)*",
            "*bad_input*failed (prune:forward)*",
        ]
    )
    assert "site-packages/torch" not in result.stdout.str()


@pytest.mark.usefixtures("isolated")
def test_duplicate_model_names_are_usage_errors(example: Path, pytester: pytest.Pytester) -> None:
    conftest = example / "tests" / "conftest.py"
    conftest.write_text(
        "from acmenets.models import AcmeCNN\nfrom pytest_tprune import register_model\n\n\n"
        "@register_model(input_size=(3, 32, 32))\ndef acme_cnn():\n    return AcmeCNN(widths=(8, 16))\n"
    )
    result = pytester.runpytest_inprocess(*QUIET, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "model 'acme_cnn' is registered twice (by acmenets.tprune_models.acme_cnn and conftest.acme_cnn): "
        "give each model a unique name" in result.stdout.str() + result.stderr.str()
    )

    models._REGISTERED.clear()
    conftest.write_text(
        "from acmenets.tprune_models import acme_attn_spec\n\n\n"
        "def pytest_tprune_models(config):\n    return [acme_attn_spec()]\n"
    )
    result = pytester.runpytest_inprocess(*QUIET, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # found while collecting: still one usage line
    result.stderr.fnmatch_lines(
        [
            "ERROR: model 'acme_attn' is provided twice (by register_model or pytest_tprune_models hooks): "
            "give each model a unique name"
        ]
    )


def _make_unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Read-only permissions; root ignores them, so there the final rename is refused instead."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    real_replace = os.replace

    def refuse(src: str, dst: str, *args: object, **kwargs: object) -> None:
        if Path(dst).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", refuse)
    return lambda: None


@pytest.mark.usefixtures("isolated")
def test_unwritable_golden_dir_fails_clearly_and_touches_nothing(
    example: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    change_cnn_width(example)
    before = goldens(example)
    folder = example / "golden" / "acme_cnn"
    restore = _make_unwritable(folder, monkeypatch)
    try:
        result = pytester.runpytest_inprocess(*QUIET, *ONE_CASE, "--tprune-update-golden", "-k", "acme_cnn")
    finally:
        restore()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*[[]golden[]] cannot write golden {folder / 'r0.50-local.json'}: PermissionError: *Permission denied*; "
            "existing goldens untouched*"
        ]
    )
    assert goldens(example) == before  # no temporary file left, no golden changed


def test_registering_the_same_definition_again_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module imported a second time (in-process runs do) re-registers; another factory is an error."""
    monkeypatch.setattr(models, "_REGISTERED", {})

    def factory() -> torch.nn.Module:
        return torch.nn.Linear(4, 2)

    decorated = register_model("twice", input_size=(4,))(factory)
    assert decorated is factory
    register_model("twice", input_size=(4,))(factory)
    assert models.registered_models()["twice"].source == "downstream"
    with pytest.raises(UsageError, match=r"model 'twice' is registered twice \(by .*factory and .*<lambda>\)"):
        add_model(ModelSpec("twice", lambda: torch.nn.Linear(4, 2), (4,)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "my/model"}, "model name 'my/model' is not usable*"),
        ({"input_size": (3, 0, 32)}, "model 'ok': input_size must be positive integers without the batch*"),
        ({"factory": "AcmeCNN"}, "model 'ok': factory must be a callable*"),
    ],
)
def test_malformed_spec_fields_are_usage_errors(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"name": "ok", "factory": lambda: torch.nn.Linear(4, 2), "input_size": (4,)}
    with pytest.raises(UsageError) as info:
        ModelSpec(**{**values, **fields})  # type: ignore[arg-type]
    assert re.fullmatch(message.replace("(", r"\(").replace(")", r"\)").replace("*", ".*"), str(info.value))


def test_an_exact_config_id_overrides_a_known_failure_pattern() -> None:
    """``{"*": cause, "r0.50-local": None}``: known to fail everywhere except uniform 0.5."""
    spec = ModelSpec("acme_any", lambda: torch.nn.Linear(4, 4), (4,), known_failure={"*": "boom", "r0.50-local": None})
    assert spec.failure_reason("r0.50-local") is None
    assert spec.failure_reason("r0.30-local") == "boom"
    assert spec.failure_reason("r0.50-global") == "boom"

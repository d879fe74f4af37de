"""The plugin end to end with pytester: options, ids, goldens, xdist, reports.

Runs that prune use ``test_resnet`` (one case, seconds); each important
scenario runs without xdist, under xdist and with ``-p no:xdist``, and must
give the same outcome and the same golden bytes. Runs without xdist stay in
this process (torch and timm are imported once, which saves about 6 s a run);
xdist runs start real worker processes, as users run them: ``-n 1`` where the
run has one case (the controller, its scheduling and the merge of what the
worker sends are the same; a second worker would only import torch, about
5 s of CPU, and idle), ``-n 2`` where two cases are spread over two workers.
"""

from __future__ import annotations

import json
import re

import pytest

# In-process pytester runs forget modules imported during the run; torch cannot be
# imported twice in one process, so import it (and timm, torch-pruning) before any run does.
import timm  # noqa: F401
import torch  # noqa: F401
import torch_pruning  # noqa: F401 - and torch-pruning, whose classes the engine caches

from pytest_tprune.engine.identity import engine_version

TEST_FILE = "def test_prune(tprune_case):\n    tprune_case.check_all()\n"
ONE_CASE = ("--tprune-models=test_resnet", "--tprune-ratios=0.5", "--tprune-modes=local", "-p", "no:cacheprovider")
MODES = {"plain": (), "xdist": ("-n", "1"), "no-xdist": ("-p", "no:xdist")}
"""How a one-case scenario runs; under xdist one worker, which gets the case (see the module docstring)."""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_prune=TEST_FILE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    if "-n" in args:
        return pytester.runpytest_subprocess(*ONE_CASE, *args, timeout=300)
    return pytester.runpytest(*ONE_CASE, *args)


def test_help_lists_the_tprune_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*structural pruning regression checks (pytest-tprune)*", "*--tprune-models=*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--tprune-ratios=1.5", "pruning ratio must be in [0, 1), got 1.5*"),
        ("--tprune-modes=uniform", "unknown pruning mode 'uniform'*"),
        ("--tprune-ratios=0.3,,0.5", "malformed ratio list*"),
        ("--tprune-shard=4/3", "--tprune-shard '4/3': K must be between 1 and N"),
        ("--tprune-device=gpu", "--tprune-device 'gpu' is not a device*"),
    ],
)
def test_bad_option_values_are_one_line_usage_errors(project: pytest.Pytester, option: str, message: str) -> None:
    result = project.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str()


def test_unknown_model_pattern_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--tprune-models=no_such_model_*", "--collect-only")
    assert result.ret != 0
    assert "model pattern 'no_such_model_*' matches no model" in result.stdout.str() + result.stderr.str()


def test_ids_are_sorted_and_readable(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--tprune-models=test_vit,test_resnet", "--tprune-ratios=0.5,0.3", "--collect-only", "-q"
    )
    ids = [line.split("::")[1] for line in result.stdout.lines if "::" in line]
    assert ids == [
        f"test_prune[{model}-r{ratio}-{mode}]"
        for model in ("test_resnet", "test_vit")
        for ratio in ("0.30", "0.50")
        for mode in ("local", "global")
    ]


def test_ini_keys_apply_and_the_command_line_wins(project: pytest.Pytester) -> None:
    project.makefile(
        ".toml", pyproject='[tool.pytest.ini_options]\ntprune_models = "test_vit"\ntprune_ratios = "0.3"\n'
    )
    result = project.runpytest("--collect-only", "-q")
    assert "test_prune[test_vit-r0.30-local]" in result.stdout.str()
    result = project.runpytest("--collect-only", "-q", "--tprune-ratios=0.7", "--tprune-modes=global")
    assert [line for line in result.stdout.lines if "::" in line] == [
        "test_prune.py::test_prune[test_vit-r0.70-global]"
    ]


def test_marker_narrows_one_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marked="import pytest\n\n@pytest.mark.tprune(models=['test_vit*'], modes=['global'])\n"
        "def test_narrow(tprune_case):\n    pass\n"
    )
    result = project.runpytest(
        "test_marked.py", "--tprune-models=test_vit,test_vit2,test_resnet", "--collect-only", "-q"
    )
    assert [line for line in result.stdout.lines if "::" in line] == [
        "test_marked.py::test_narrow[test_vit-r0.50-global]",
        "test_marked.py::test_narrow[test_vit2-r0.50-global]",
    ]


def test_shards_partition_the_cases(project: pytest.Pytester) -> None:
    base = ("--tprune-models=test_*", "--collect-only", "-q")
    everything = {line for line in project.runpytest(*base).stdout.lines if "::" in line}
    shards = [
        {line for line in project.runpytest(*base, f"--tprune-shard={k}/3").stdout.lines if "::" in line}
        for k in (1, 2, 3)
    ]
    assert len(everything) == 36 and set().union(*shards) == everything
    assert sum(len(s) for s in shards) == len(everything) and all(shards)


def test_default_selection_is_timm_test_models(project: pytest.Pytester) -> None:
    result = project.runpytest("--collect-only", "-q", "--tprune-modes=local")
    assert "test_prune[test_vit_relpos-r0.50-local]" in result.stdout.str()
    assert "18 tests collected" in result.stdout.str()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_golden_lifecycle(project: pytest.Pytester, mode: str) -> None:
    """Missing golden fails with the fix; update writes it; a changed number fails with the table."""
    extra = MODES[mode]
    golden = project.path / "golden" / "test_resnet" / "r0.50-local.json"
    result = run(project, *extra)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*golden file * is missing: create it with 'pytest --tprune-update-golden*"])

    result = run(project, *extra, "--tprune-update-golden")
    assert result.ret == 0 and golden.exists()
    result.stdout.fnmatch_lines(["*tprune: wrote 1 golden file(s)*"])

    if mode != "xdist":  # under xdist, test_unused_goldens_fail_unless_warned passes on a golden xdist wrote
        assert run(project, *extra).ret == 0
    data = json.loads(golden.read_text())
    data["figures"]["params_after"] += 7
    golden.write_text(json.dumps(data))
    result = run(project, *extra)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*golden? test_resnet-r0.50-local differs from*", "*figure*obtained*expected*diff*", "*params_after*-7*"]
    )
    result.stdout.fnmatch_lines(["*test_resnet*r0.50-local*failed (golden)*"])


def test_golden_bytes_identical_with_and_without_xdist(pytester: pytest.Pytester) -> None:
    contents = []
    for name, extra in sorted({**MODES, "xdist": ("-n", "2")}.items()):  # two cases: one on each worker
        folder = pytester.mkdir(name)
        (folder / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
        (folder / "test_prune.py").write_text(TEST_FILE)
        result = run(
            pytester,
            "--tprune-modes=local,global",
            "--tprune-update-golden",
            *extra,
            str(folder),
            "--rootdir",
            str(folder),
        )
        assert result.ret == 0, result.stdout.str()
        contents.append({p.relative_to(folder): p.read_bytes() for p in sorted(folder.glob("golden/*/*.json"))})
    assert len(contents[0]) == 2 and contents[0] == contents[1] == contents[2]


@pytest.mark.parametrize("mode", ["plain", "xdist"])
def test_unused_goldens_fail_unless_warned(project: pytest.Pytester, mode: str) -> None:
    """A golden of a config the configured grid no longer has is stale (the grid lives in the ini file)."""
    project.makefile(".toml", pyproject='[tool.pytest.ini_options]\ntprune_ratios = "0.5"\ntprune_modes = "local"\n')
    extra = ("--tprune-models=test_resnet", "-p", "no:cacheprovider", *MODES[mode])

    def run_ini(*args: str) -> pytest.RunResult:
        if "-n" in args:
            return project.runpytest_subprocess(*args, timeout=300)
        return project.runpytest(*args)

    assert run_ini(*extra, "--tprune-update-golden").ret == 0
    stale = project.path / "golden" / "test_resnet" / "r0.90-local.json"
    stale.write_text("{}")
    result = run_ini(*extra)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 unused golden file(s), error*", "*r0.90-local.json"])
    result = run_ini(*extra, "--tprune-warn-unused")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*1 unused golden file(s), warning*"])
    narrowed = run_ini(*extra, "-k", "nothing_matches")
    assert "unused golden" not in narrowed.stdout.str()


CONTROLLER_MODULES = """import sys


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the xdist controller, after it wrote the report
        heavy = {"torch", "timm", "torch_pruning"} & set(sys.modules)
        (config.rootpath / "controller_modules.txt").write_text(" ".join(sorted(heavy)))
"""


def test_json_report_has_rows_versions_and_durations(project: pytest.Pytester) -> None:
    """Under xdist the controller writes the report and the guards line from what the workers sent: it never
    imports torch, timm or torch-pruning (about 5 s of CPU per run) to find them out."""
    project.makeconftest(CONTROLLER_MODULES)
    report = project.path / "out" / "report.json"
    result = run(project, *MODES["xdist"], "--tprune-update-golden", f"--tprune-report={report}")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["tprune guards: all active on torch-pruning *"])
    assert (project.path / "controller_modules.txt").read_text() == ""
    data = json.loads(report.read_text())
    assert data["schema"] == 1 and data["environment"]["timm"] and data["environment"]["torch-pruning"]
    assert data["environment"]["guards"] == {"tolerant_index_mappings": "active", "bounded_traversal": "active"}
    assert data["environment"]["cuda"] is None  # the workers' torch, sent with the case: no CUDA on this machine
    assert data["environment"]["pytest-tprune"] == engine_version()  # which revision of our engine ran
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", data["finished"])
    (case,) = data["cases"]
    assert case["model"] == "test_resnet" and case["config_id"] == "r0.50-local" and case["outcome"] == "passed"
    assert case["params_after"] < case["params_before"] and 0 < case["kept_params"] < 1
    assert {"build", "trace", "prune", "forward", "golden"} <= set(case["durations"])
    assert not list(report.parent.glob(".*.tmp"))


def test_cases_skip_models_over_max_params(project: pytest.Pytester) -> None:
    result = project.runpytest("--tprune-models=test_resnet", "--tprune-max-params=1000", "-rs", "--tprune-modes=local")
    result.stdout.fnmatch_lines(["*test_resnet has 0.5 M parameters, over --tprune-max-params=1000*"])


def test_marker_excludes_and_expands_families(project: pytest.Pytester) -> None:
    """How tests/test_zoo.py splits one selection: families minus the grid models, one config."""
    project.makepyfile(
        test_marked="import pytest\n\n"
        "@pytest.mark.tprune(models=['@families'], exclude=['test_*'], ratios=[0.5], modes=['local'])\n"
        "def test_family(tprune_case):\n    pass\n"
    )
    result = project.runpytest("test_marked.py", "--tprune-models=@families,test_vit", "--collect-only", "-q")
    ids = [line.split("[")[1] for line in result.stdout.lines if "::" in line]
    assert len(ids) == 89 and all(i.endswith("-r0.50-local]") and not i.startswith("test_") for i in ids)
    assert "vit_base_patch32_224" not in " ".join(ids)


def test_narrowing_ratios_on_the_command_line_leaves_other_goldens_alone(project: pytest.Pytester) -> None:
    assert run(project, "--tprune-update-golden").ret == 0
    other = project.path / "golden" / "test_resnet" / "r0.30-local.json"
    other.write_text("{}")
    result = run(project, "--tprune-ratios=0.5")
    assert result.ret == 0 and "unused golden" not in result.stdout.str()
    result = run(project, "--tprune-ratios=0.3,0.5")
    assert result.ret == 1  # in scope now: the 0.3 case ran and its golden no longer matches

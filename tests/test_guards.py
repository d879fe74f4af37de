"""The engine's guards switch themselves off, and say so, when torch-pruning moves what they need.

A torch-pruning release that moves a private internal (1.5.3 keeps the
index-mapping updates as graph methods, 1.6 as module functions) must never
turn into our own ImportError in every case: the guard that needs it is off
for the run, the cases run with torch-pruning's own behaviour, and the status
line says which guard is off and what was missing. The internals are taken
away with monkeypatch, so these run on whichever torch-pruning is installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
tp = pytest.importorskip("torch_pruning")

from pytest_tprune.engine import identity  # noqa: E402
from pytest_tprune.engine.config import PruneConfig  # noqa: E402
from pytest_tprune.engine.models import ModelSpec, timm_spec  # noqa: E402
from pytest_tprune.engine.pruning import prune  # noqa: E402
from pytest_tprune.engine.tp_internals import guards  # noqa: E402
from pytest_tprune.errors import PruneStepError  # noqa: E402
from pytest_tprune.session import header  # noqa: E402

TP_VERSION = version("torch-pruning")


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    """Each test probes the torch-pruning it sees; the next one (and the rest of the session) probes again."""
    guards.reprobe()
    yield
    guards.reprobe()


class _CrossStage(nn.Module):
    """CSPNet's stage: torch-pruning cannot infer the width of the concat's residual input and raises."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.block = nn.Conv2d(16, 16, 1)
        self.transition = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(torch.relu(self.stem(x)))
        blocked, passed = x.split(x.shape[1] // 2, dim=1)
        blocked = self.block(blocked) + blocked  # the residual second, as in timm
        return self.head(torch.relu(self.transition(torch.cat([blocked, passed], dim=1))).mean((2, 3)))


CROSS_STAGE = ModelSpec("cross_stage", _CrossStage, (3, 16, 16), ignored_layers=lambda m: [m.head])
HALF = PruneConfig(ratio=0.5)


def _prune_test_resnet() -> tuple[Any, list[str]]:
    """Prune timm's ``test_resnet`` by half; also the class of every graph the pruner walked."""
    graphs: list[str] = []

    def observe(model: nn.Module, pruner: Any) -> Any:
        graphs.append(type(pruner.DG).__name__)
        return lambda pruner, group, step: True

    return prune(timm_spec("test_resnet"), HALF, device="cpu", observe=observe), graphs


def test_every_guard_is_active_on_a_tested_torch_pruning() -> None:
    status = guards.guard_status()
    if any(note.startswith("torch-pruning ") for note in identity.untested_notes()):
        pytest.skip(f"torch-pruning {TP_VERSION} is untested: {status}")
    assert status == {"tolerant_index_mappings": "active", "bounded_traversal": "active"}
    assert guards.guard_summary().startswith(f"guards: all active on torch-pruning {TP_VERSION}")


def test_index_mapping_module_gone_switches_its_guard_off_and_a_prune_still_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What 1.5.3 did to the old guard (its ``import ... index_mapping`` failed every case), made on 1.6."""
    if guards.probed().found["tolerant_index_mappings"].where != "torch_pruning.dependency.index_mapping":
        pytest.skip(f"torch-pruning {TP_VERSION} keeps no index_mapping module to take away")
    monkeypatch.delattr(sys.modules["torch_pruning.dependency"], "index_mapping")
    monkeypatch.setitem(sys.modules, "torch_pruning.dependency.index_mapping", None)  # type: ignore[arg-type]
    guards.reprobe()

    status = guards.guard_status()
    assert status["tolerant_index_mappings"] == (
        f"unavailable on torch-pruning {TP_VERSION}: no index-mapping refresh: neither "
        "torch_pruning.dependency.index_mapping.update_index_mapping nor DependencyGraph.update_index_mapping"
    )
    assert status["bounded_traversal"] == "active"
    assert guards.guard_summary().startswith(
        f"guards: tolerant_index_mappings unavailable on torch-pruning {TP_VERSION}"
    )
    pruned, _ = _prune_test_resnet()  # raised ImportError from our guard before it was probed
    assert pruned.outcome.params_after < pruned.outcome.params_before
    assert list(pruned.output.shape) == [1, 1000]


def test_a_restructured_refresh_switches_the_guard_off_and_torch_pruning_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When torch-pruning no longer calls the updates we wrap, its own error is the verdict, not ours."""
    guarded = prune(CROSS_STAGE, HALF, device="cpu").outcome  # the guard on: the concat's groups are left whole
    assert any("could not build the index mapping through a concat" in lw.reason for lw in guarded.left_whole)
    host = guards.probed().found["tolerant_index_mappings"].host
    refresh = host.update_index_mapping

    def restructured(graph: Any) -> None:  # calls the same updates, through a name the probe cannot follow
        refresh(graph)

    monkeypatch.setattr(host, "update_index_mapping", restructured)
    guards.reprobe()

    assert guards.guard_status()["tolerant_index_mappings"].startswith(f"unavailable on torch-pruning {TP_VERSION}: ")
    assert "index-mapping refresh no longer calls" in guards.guard_status()["tolerant_index_mappings"]
    with pytest.raises(PruneStepError) as raised:
        prune(CROSS_STAGE, HALF, device="cpu")
    assert raised.value.step == "trace" and isinstance(raised.value.exc, TypeError), raised.value
    assert "torch_pruning" in (raised.value.module or ""), raised.value  # torch-pruning's code raised, not ours


def test_group_class_moved_switches_the_walk_guard_off_and_a_prune_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Group`` moves to a module the guard does not know: gone from every place it looks.

    The module that defines ``Group`` is dropped from the places looked in (torch-pruning's
    own code reads it from there), and the class is deleted from every other place.
    """
    home = tp.dependency.Group.__module__
    places = tuple(place for place in guards.CLASS_PLACES["Group"] if place != home)
    monkeypatch.setitem(guards.CLASS_PLACES, "Group", places)
    for place in places:
        if place in sys.modules:
            monkeypatch.delattr(sys.modules[place], "Group", raising=False)
    guards.reprobe()

    status = guards.guard_status()
    assert status["bounded_traversal"] == (
        f"unavailable on torch-pruning {TP_VERSION}: class Group not found in {' or '.join(places)}"
    )
    assert status["tolerant_index_mappings"] == "active"
    pruned, graphs = _prune_test_resnet()
    assert graphs and not any(name.startswith("Bounded") for name in graphs), graphs  # torch-pruning's own walk
    assert pruned.outcome.params_after < pruned.outcome.params_before


def test_with_the_guard_active_the_graph_walk_is_bounded() -> None:
    """The counterpart of the test above: the same prune with every guard on walks a bounded graph."""
    _, graphs = _prune_test_resnet()
    assert graphs and all(name.startswith("Bounded") for name in graphs), graphs


def test_a_probe_that_raises_is_a_missing_internal_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tp: Any) -> Any:
        raise AttributeError("module 'torch_pruning' has no attribute 'pruner'")

    monkeypatch.setitem(guards.PROBES, "bounded_traversal", broken)
    guards.reprobe()
    assert guards.guard_status()["bounded_traversal"] == (
        f"unavailable on torch-pruning {TP_VERSION}: its probe raised "
        "AttributeError: module 'torch_pruning' has no attribute 'pruner'"
    )


def test_the_report_environment_carries_the_guards() -> None:
    env = identity.environment("cpu")
    assert env["guards"] == guards.guard_status()
    assert "untested" not in env or all("tested" in note for note in env["untested"])


def test_a_newer_release_is_reported_as_untested_and_an_older_one_too() -> None:
    newer = {"torch": "2.15.0+cu128", "timm": "1.0.31", "torch-pruning": "1.7.0"}
    assert identity.untested_notes(newer) == ["torch-pruning 1.7.0 is newer than the newest tested 1.6.1"]
    older = {"torch": "2.15.0", "timm": "1.0.19", "torch-pruning": "1.6.0"}
    assert identity.untested_notes(older) == ["timm 1.0.19 is older than the oldest tested 1.0.20"]
    assert identity.untested_notes({"torch": "2.15.0", "timm": "1.0.20", "torch-pruning": "1.5.3"}) == []
    assert identity.untested_notes({"torch-pruning": "absent"}) == []


def test_the_header_names_an_untested_release(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"torch": "2.15.0", "timm": "1.0.31", "torch-pruning": "1.7.0"}
    monkeypatch.setattr(identity, "library_versions", lambda: versions)
    monkeypatch.setattr(identity, "exporter_versions", lambda *exporters: {})
    assert header.versions_line("cpu") == (
        "tprune: torch 2.15.0, timm 1.0.31, torch-pruning 1.7.0, device cpu "
        "(untested: torch-pruning 1.7.0 is newer than the newest tested 1.6.1)"
    )


def test_the_summary_guards_line_waits_for_a_pruning_case() -> None:
    assert header.guards_line(SimpleNamespace(rows={}, runtime=None)) is None  # type: ignore[arg-type]
    line = header.guards_line(SimpleNamespace(rows={"case": object()}, runtime=None))  # type: ignore[arg-type]
    assert line == f"tprune {guards.guard_summary()}"  # no case's process said: probed here


def test_the_guards_line_and_report_say_what_the_cases_process_found() -> None:
    """An xdist worker's guards (say, one where a guard was off) are what the controller reports."""
    sent = {"guards": {"bounded_traversal": "unavailable on torch-pruning 9.9: gone"}, "guards_line": "guards: off",
            "cuda": "12.8", "cudnn": 91000}  # fmt: skip
    state = SimpleNamespace(rows={"case": object()}, runtime=sent)
    assert header.guards_line(state) == "tprune guards: off"  # type: ignore[arg-type]
    env = identity.environment("cuda", sent)
    assert env["guards"] == sent["guards"] and (env["cuda"], env["cudnn"]) == ("12.8", 91000)
    assert identity.environment("cpu")["guards"] == guards.guard_status()  # nothing sent: probed here


def test_the_header_shows_versions_and_device_without_importing_the_libraries(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(
        test_plain="import sys\n\ndef test_nothing_imported():\n"
        "    assert not {'torch', 'timm', 'torch_pruning'} & set(sys.modules)\n"
    )
    result = pytester.runpytest_subprocess("--tprune-device=cpu", "-p", "no:cacheprovider", "-p", "no:xdist")
    expected = ", ".join(f"{name} {version(name)}" for name in ("torch", "timm", "torch-pruning"))
    result.stdout.fnmatch_lines([f"tprune: {expected}, device cpu*"])
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "tprune guards" not in result.stdout.str()  # no pruning case ran: nothing was probed

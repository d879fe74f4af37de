"""The package's layers, as ``pytest_tprune/engine/__init__.py`` and the reference docs state them.

A newcomer reads from a module's folder what it may import; these tests keep
that true: each layer imports only the layers below it, the engine never
imports pytest, there is no import cycle (lazy imports included), and no
module grows past 500 lines. Torch-free: the sources are parsed, not imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_tprune"
MAX_LINES = 500

# layer -> the layers (and top-level modules) its modules may import
ALLOWED = {
    "engine": {"engine", "errors"},
    "checks": {"checks", "engine", "reports", "errors"},
    "session": {"session", "checks", "engine", "reports", "errors"},
    "reports": {"reports", "errors"},
    "cli": {"cli", "engine", "reports", "errors"},
}
FORBIDDEN_LIBRARIES = {"engine": {"pytest", "argparse", "hypothesis", "_pytest"}, "reports": {"torch", "timm"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level, under TYPE_CHECKING or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def internal_imports(name: str) -> set[str]:
    return {target for target in imports_of(MODULES[name]) if target in MODULES and target != name}


def layer_of(name: str) -> str:
    return name.split(".")[1] if name.count(".") >= 1 else ""


@pytest.mark.parametrize("name", [n for n in MODULES if layer_of(n) in ALLOWED])
def test_each_layer_imports_only_what_it_may(name: str) -> None:
    layer = layer_of(name)
    wrong = sorted(t for t in internal_imports(name) if layer_of(t) not in ALLOWED[layer])
    assert not wrong, f"{name} ({layer}/) imports {wrong}; {layer}/ may import {sorted(ALLOWED[layer])}"
    libraries = {target.split(".")[0] for target in imports_of(MODULES[name])}
    banned = sorted(libraries & FORBIDDEN_LIBRARIES.get(layer, set()))
    assert not banned, f"{name} imports {banned}, which {layer}/ must not"


def test_no_import_cycle() -> None:
    graph = {name: internal_imports(name) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_the_line_budget() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_layer_rule_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an engine module importing pytest and the session is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pytest\nfrom pytest_tprune.session.state import STATE\n")
    found = imports_of(bad)
    assert "pytest" in found and "pytest_tprune.session.state" in found
    assert layer_of("pytest_tprune.session.state") not in ALLOWED["engine"]

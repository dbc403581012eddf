"""d2-core has no import circle: every module imports alone in a fresh interpreter,
and the graph of its imports (module level, inside functions and under
``TYPE_CHECKING`` alike) has no cycle. Data types sit at the bottom
(``_classes``, ``_canonical``, ``approval_data``, ``errors``), the stores and the
evaluator above them, the public approvals API above the evaluator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import d2.core
import pytest

ROOT = Path(d2.core.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("d2", "core", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The d2.core modules ``name`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    found.add(sub)  # `from . import evaluate`: the submodule
                elif target in MODULES:
                    found.add(target)
    found.discard(name)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: imports(name, path) for name, path in MODULES.items()}
    assert graph["d2.core.approvals"] >= {"d2.core.evaluate", "d2.core.approval_data"}
    found = cycle(graph)
    assert found is None, " -> ".join(found or ())


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_layers_point_down() -> None:
    graph = {name: imports(name, path) for name, path in MODULES.items()}
    assert graph["d2.core._classes"] == set()  # the bottom: no D2 import at all
    assert graph["d2.core._canonical"] <= {"d2.core._classes", "d2.core._atoms"}
    # the view reads state as the digest does
    assert graph["d2.core._shown_text"] == set()
    assert graph["d2.core._display"] <= {
        "d2.core._classes",
        "d2.core._atoms",
        "d2.core._canonical",
        "d2.core._shown_text",
    }
    # one reading of the arguments, for the digest and the view alike
    assert graph["d2.core._reading"] <= {"d2.core._classes", "d2.core._atoms", "d2.core._canonical"}
    assert graph["d2.core.approval_data"] == {
        "d2.core._canonical",
        "d2.core._display",
        "d2.core._reading",
    }
    assert graph["d2.core.errors"] <= {"d2.core.approval_data"}
    for store in ("d2.core.stores.base", "d2.core.stores.memory", "d2.core.stores.redis"):
        assert graph[store] <= {
            "d2.core.approval_data",
            "d2.core.errors",
            "d2.core.stores.base",
        }, store
    assert "d2.core.approvals" not in graph["d2.core.evaluate"]
    # the decision's steps and refusals sit below the evaluator that runs them
    assert graph["d2.core._trace"] <= {"d2.core.errors", "d2.core.context", "d2.core.policy.model"}
    for below in ("d2.core._guardrails", "d2.core._refusals"):
        assert "d2.core.evaluate" not in graph[below], below
        assert "d2.core._trace" in graph[below], below


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_alone(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

"""The package's import graph: no cycles, and the stages never import the planner.

Read from the source with ``ast`` (no module is imported), so a function-level import counts as
much as one at the top of a file: both decide what a reader has to hold in mind, and a cycle
that only works because one side imports late breaks as soon as someone moves that line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SOURCE = REPO / "src"
PACKAGE = "medtransfer"
#: The planner: it reads the config and decides every job; the stages run one job each.
PLANNER = ("medtransfer.grid", "medtransfer.study")
STAGES = ("data", "models", "init", "training", "protocols", "analysis", "figures", "report")


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file.

    ``from a.b import c`` is an edge to ``a.b.c`` where that is a module, else to ``a.b``.
    """
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    candidate = f"{module}.{alias.name}"
                    targets.add(candidate if candidate in known else module)
        edges[name] = {target for target in targets if target in known and target != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _is_planner(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PLANNER)


def test_the_package_has_no_import_cycle():
    assert cycles(import_edges()) == []


def test_no_stage_imports_the_planner():
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in import_edges().items()
        if module.split(".")[1:2] and module.split(".")[1] in STAGES
        for target in targets
        if _is_planner(target)
    )
    assert offenders == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

"""The package's imports run one way (data -> models -> metrics -> results -> reports), with no circle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "vaes4rs"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each vaes4rs module -> the vaes4rs modules it imports (at any depth of its code)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaes4rs"):
                imported.add(node.module)
                imported.update(
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules
                )
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("vaes4rs"))
        graph[name] = {m for m in imported if m in modules and m not in (name, "vaes4rs")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_circle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_import_only_downstream_facts() -> None:
    """Models know nothing of metrics, results, runs or reports; reports read files, not torch code."""
    graph = import_graph()
    later_than_models = (
        "vaes4rs.metrics",
        "vaes4rs.results",
        "vaes4rs.evaluate",
        "vaes4rs.run",
        "vaes4rs.report",
    )
    for name, imported in graph.items():
        if name.startswith("vaes4rs.models"):
            assert not [m for m in imported if m.startswith(later_than_models)], name
        if name.startswith("vaes4rs.metrics"):
            assert not [m for m in imported if m.startswith(("vaes4rs.models", "vaes4rs.report"))], name
        if name.startswith("vaes4rs.report"):
            allowed = ("vaes4rs.report", "vaes4rs.catalog", "vaes4rs.files")
            assert all(m.startswith(allowed) for m in imported), (name, imported)

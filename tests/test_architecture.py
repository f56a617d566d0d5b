"""The shape of the house: no import circle among app modules; domain errors carry no HTTP."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from app import errors

ROOT = Path(__file__).resolve().parents[1]
Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Every dotted name an import statement may load, submodules of `from x import y` too."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    base = ".".join(p for p in (package if node.level else "", node.module or "") if p)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def app_import_graph() -> Graph:
    """app module -> the app modules it imports, wherever the import stands: at the top, under
    `if TYPE_CHECKING:` or inside a function (a circle through a lazy import is still one)."""
    paths = {_module_name(p): p for p in sorted((ROOT / "app").rglob("*.py"))}
    graph: Graph = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = _imported(node, module, is_package)
                graph[module] |= {n for n in names if n in paths and n != module}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (first module repeated at the end) for every back edge a depth-first walk finds."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return cycles


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),  # a diamond is no circle
])
def test_find_cycles(graph: Graph, expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = app_import_graph()
    assert "app.errors" in graph["app.api.errors"]  # `from app import errors as domain`
    assert "app.api.routes.health" in graph["app.main"]  # `from app.api.routes import health`
    assert "app.training.worker" in graph["app.cli"]  # inside a function


def test_app_modules_import_no_circle() -> None:
    cycles = find_cycles(app_import_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_domain_errors_carry_no_http() -> None:
    imports = app_import_graph()["app.errors"]
    assert not imports, f"app/errors.py imports {sorted(imports)}"
    source = Path(errors.__file__).read_text()
    assert "fastapi" not in source and "starlette" not in source
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.ServiceError):
            assert not {"status_code", "headers"} & set(vars(cls)), name

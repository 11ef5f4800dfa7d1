"""The project's import structure: no cycle between modules, and no layer imports one above it.

Layers, lowest first: ``prompts`` (data and its loader) < ``granalign`` (the library: math,
stages, backends, I/O) < ``graphs`` (LangGraph) < ``tools``, ``agent`` (front ends) <
``benchmarks``.  Imports are read from the source with :mod:`ast` (top-level and inside
functions alike: a lazy import closes a cycle as surely as an eager one), so the rule holds
for code paths no test happens to run; only ``if TYPE_CHECKING:`` imports, which never run,
are left out.  Tests may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"prompts": 0, "granalign": 1, "graphs": 2, "tools": 3, "agent": 3, "benchmarks": 4}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "granalign.x.y" where y is a name in x
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
        for name, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_prompts_import_nothing_from_the_project() -> None:
    graph = _graph()
    assert {t for name, targets in graph.items() if name.startswith("prompts") for t in targets} <= {
        n for n in graph if n.startswith("prompts")
    }


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checks themselves: a constructed cycle and a constructed upward edge are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "granalign.stages.fusion" in graph["graphs.retrieval"]  # imports are resolved to modules
    assert _layer("graphs.retrieval") > _layer("granalign.stages.fusion")

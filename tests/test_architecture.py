"""The shape of the code: imports run one way, no circles, no project import hidden in a function.

Every module of ``pipelines/``, ``ldm_eval/`` and ``demo/`` (and ``app.py``) is parsed with ``ast``;
the project's import graph is built from the top-level imports and must have no cycle. The
rooms of ``ldm_eval`` import only the rooms below them (``cli -> zoo -> presets -> sweeps/bench ->
metrics/reporting -> pipelines``), ``demo`` never imports ``ldm_eval``, and no module is over
400 lines or has a function over 80 lines (the training loop, said so in its comment, excepted).
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("pipelines", "ldm_eval", "demo")
# each room of ldm_eval, and the rooms (or packages) it may import; a module at the top of ldm_eval is its own room
ALLOWED = {
    "pipelines": {"pipelines"},
    "demo": {"demo", "pipelines"},
    "app": {"demo", "pipelines"},
    "ldm_eval.metrics": {"ldm_eval.metrics", "pipelines"},
    "ldm_eval.reporting": {"ldm_eval.reporting", "pipelines"},
    "ldm_eval.sweeps": {"ldm_eval.sweeps", "ldm_eval.metrics", "ldm_eval.reporting", "pipelines"},
    "ldm_eval.bench": {"ldm_eval.bench", "ldm_eval.metrics", "pipelines"},
    "ldm_eval.presets": {"ldm_eval.sweeps", "pipelines"},
    "ldm_eval.zoo": {"ldm_eval.zoo", "ldm_eval.presets", "ldm_eval.sweeps", "ldm_eval.metrics", "ldm_eval.reporting",
                     "pipelines"},
    "ldm_eval.arguments": {"ldm_eval.sweeps", "ldm_eval.metrics", "pipelines"},
    "ldm_eval.cli": {"ldm_eval", "pipelines"},  # the top: any room, lazily inside its command functions
    "ldm_eval.__main__": {"ldm_eval.cli"},
    "ldm_eval": set(),  # the package's own __init__
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_FUNCTION_MARK = "the one function over"  # the comment that lets the training loop be longer


def modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _absolute(name: str, node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def project_imports(tree: ast.Module, module: str, known: dict[str, Path], is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at top level?) for every import of a project module."""
    package = module if is_package else module.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports under ``if TYPE_CHECKING:`` or ``try:`` at the top level count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node, package) if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                found.append((target, node.lineno, id(node) in top))
    return found


def room(module: str) -> str:
    """The room a module lives in: ``ldm_eval.metrics.fid`` -> ``ldm_eval.metrics``; ``pipelines.x`` -> ``pipelines``."""
    parts = module.split(".")
    if parts[0] in ("pipelines", "demo", "app"):
        return parts[0]
    return ".".join(parts[:2])


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """The top-level import graph, and every function-level import of a project module (outside the CLI)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    hidden = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set()
        for target, line, at_top in project_imports(tree, module, known, path.name == "__init__.py"):
            if target == module:
                continue
            if at_top:
                graph[module].add(target)
            elif module != "ldm_eval.cli":  # the CLI's commands import lazily, so that --help stays fast
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    return graph, hidden


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each a cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph_dump(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{m} -> {', '.join(sorted(t)) or '(nothing)'}" for m, t in sorted(graph.items()))


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_and_no_hidden_project_import():
    graph, hidden = import_graph()
    assert len(graph) > 40, graph_dump(graph)
    assert cycles(graph) == [], graph_dump(graph)
    assert hidden == []


def test_imports_run_one_way():
    graph, _ = import_graph()
    wrong = []
    for module, targets in graph.items():
        allowed = ALLOWED.get(room(module), ALLOWED.get(module))
        assert allowed is not None, f"{module} is in no room the architecture test knows"
        for target in targets:
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_modules_and_functions_stay_small():
    too_long = []
    for module, path in modules().items():
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{module}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                marked = LONG_FUNCTION_MARK in "\n".join(lines[max(0, node.lineno - 4):node.lineno])
                if length > MAX_FUNCTION_LINES and not marked:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []

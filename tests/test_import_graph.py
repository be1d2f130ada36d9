"""The r1hpc modules import each other without a cycle (docs/architecture.md, "Layers and imports").

The graph is drawn from the source with ``ast``, so imports inside functions count as much as the
ones at the top of a module: a lazy import hides a cycle from Python's import machinery, not from a
reader who must understand one module before the other.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "r1hpc"


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package (a package is its __init__)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The r1hpc modules one import statement loads (its target; ``from pkg import name`` loads
    ``pkg.name`` when that is a submodule, else ``pkg``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:  # relative: resolve against the importing module's package
        package = module if is_package else module.rsplit(".", 1)[0]
        base_parts = package.split(".")
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            targets.append(sub)
        elif base in known:
            targets.append(base)
    return targets


def _with_packages(module: str, target: str, known: set[str]) -> set[str]:
    """``target`` and the packages above it that Python initialises first: every one the importing
    module is not itself inside (its own packages are already being initialised)."""
    parts = target.split(".")
    ancestors = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {target} | {a for a in ancestors if a in known and not (module + ".").startswith(a + ".")}


def import_graph() -> dict[str, set[str]]:
    """module -> the r1hpc modules it imports anywhere in its source (module or function level)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, module, is_package, known):
                    graph[module] |= _with_packages(module, target, known) - {module}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that returns to its start."""
    start = component[0]
    members = set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its component")  # Tarjan guarantees one


def test_graph_sees_lazy_relative_and_package_imports():
    """The graph reader itself: a function-level import, a relative import, a package __init__
    importing its submodule and the package a module's import initialises all make edges (otherwise
    the cycle test below could pass vacuously)."""
    tree = ast.parse("def f():\n    from . import b\n    from .c import x\nimport r1hpc.a\n")
    known = {"r1hpc.p", "r1hpc.p.b", "r1hpc.p.c", "r1hpc.a"}
    edges = {t for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for t in _imported(n, "r1hpc.p.m", False, known)}
    assert edges == {"r1hpc.p.b", "r1hpc.p.c", "r1hpc.a"}
    init = ast.parse("from r1hpc.p.b import thing\nfrom r1hpc.p import c, helper\n")
    edges = {t for n in ast.walk(init) if isinstance(n, ast.ImportFrom) for t in _imported(n, "r1hpc.p", True, known)}
    assert edges == {"r1hpc.p.b", "r1hpc.p.c", "r1hpc.p"}
    assert _with_packages("r1hpc.x", "r1hpc.p.b", known) == {"r1hpc.p.b", "r1hpc.p"}  # p/__init__ runs first
    assert _with_packages("r1hpc.p.m", "r1hpc.p.b", known) == {"r1hpc.p.b"}  # p is already initialising
    graph = import_graph()  # the real tree: a lazy import inside merge(), and a package __init__
    assert "r1hpc.eval.benchmarks" in graph["r1hpc.eval.shards"] and "r1hpc.data.mix" in graph["r1hpc.data"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert shortest_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c"]) == ["a", "c", "a"]


def test_config_is_a_leaf():
    """config.py is imported by every component for ConfigError: it must import none of them."""
    assert import_graph()["r1hpc.config"] == set()


def test_no_import_cycle():
    graph = import_graph()
    components = strongly_connected(graph)
    report = [f"{len(c)} modules in a cycle, e.g. " + " -> ".join(shortest_cycle(graph, c)) for c in components]
    for line in report:
        print(line)
    assert not components, "import cycles among r1hpc modules:\n" + "\n".join(report)

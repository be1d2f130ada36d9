"""Code shape limits of issue 24, read from the source with ``ast``: no function in the package
longer than 60 lines (from its ``def`` line to its last line: decorators left out, the docstring
counted; nested functions and methods are functions too) and no module longer than 400 lines.
The package is ``r1hpc/`` and the Triton kernels installed as ``r1hpc.triton_kernels``."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = [ROOT / "r1hpc", ROOT / "triton_kernels"]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400

def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def offenders() -> dict[str, int]:
    """``path`` or ``path::qualified.name`` -> its length in lines, for everything over the limits."""
    found = {}
    for top in PACKAGE_DIRS:
        for path in sorted(top.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            source = path.read_text(encoding="utf-8")
            lines = len(source.splitlines())
            if lines > MAX_MODULE_LINES:
                found[rel] = lines
            for name, node in _functions(ast.parse(source, filename=rel)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{rel}::{name}"] = length
    return found


def test_no_long_functions_or_modules():
    found = offenders()
    assert not found, (f"over {MAX_FUNCTION_LINES} lines per function / {MAX_MODULE_LINES} per module "
                     "(split them into named steps):\n" + "\n".join(f"  {k}: {n} lines" for k, n in sorted(found.items())))


def test_the_walk_sees_long_functions_and_nested_ones(tmp_path):
    """The measure itself: decorators are not counted, the docstring and nested defs are."""
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    source = (f"@decorator\n@other\ndef f():\n    '''doc'''\n{body}\n\n"
              f"class C:\n    def m(self):\n        def inner():\n" + "\n".join(f"            y{i} = {i}" for i in range(60)))
    lengths = {name: node.end_lineno - node.lineno + 1 for name, node in _functions(ast.parse(source))}
    assert lengths["f"] == 60  # def line + docstring + 58 statements; the two decorators left out
    assert lengths["C.m.inner"] == 61 and lengths["C.m"] == 62

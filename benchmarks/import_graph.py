"""Count import cycles and function-level imports of our own modules in ``src/petlprune``.

Run: ``python benchmarks/import_graph.py`` (prints a JSON summary). ``tests/test_import_contracts.py``
asserts the cycle count is 0; the function-level count is a figure for reviews (issue 27 asked for it).

A cycle is a strongly connected component of more than one module in grimp's import graph (the same
graph ``lint-imports`` checks; it includes imports inside functions). A package's ``__init__`` and its
submodules are kept apart, so ``methods`` <-> ``methods.base`` counts as a cycle.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "petlprune"


def import_graph(package: str = PACKAGE) -> dict[str, set[str]]:
    """{module: modules of the package it imports directly}."""
    import grimp

    graph = grimp.build_graph(package)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def function_level_imports(root: Path = SRC / PACKAGE) -> tuple[int, int]:
    """(all imports inside a function, those of our own package) over every module under ``root``."""
    total = own = 0
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." if node.level else (node.module or "")]
                else:
                    continue
                # a nested function's imports are walked once per enclosing function: count them at
                # the innermost one only
                if any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) and p is not func
                       and node in ast.walk(p) for p in ast.walk(func)):
                    continue
                total += 1
                own += any(n == "." or n.split(".")[0] == PACKAGE for n in names)
    return total, own


def main() -> None:
    sys.path.insert(0, str(SRC))
    found = cycles(import_graph())
    total, own = function_level_imports()
    print(json.dumps({"cycles": len(found), "cycle_modules": found, "imports_in_functions": total,
                      "own_imports_in_functions": own}, indent=1))


if __name__ == "__main__":
    main()

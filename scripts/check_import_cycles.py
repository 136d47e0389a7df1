"""Find import cycles in the lookuplens package, counting deferred imports.

Every module under src/lookuplens is parsed with `ast`; each ``import`` and ``from ...
import`` statement counts, at module level and inside functions (a deferred import is
still a dependency, it only runs later). Imports under ``if TYPE_CHECKING:`` never run
and are left out. ``from pkg import name`` depends on the module ``pkg.name`` when that is
a module, else on ``pkg`` (its ``__init__``).

Cycles among the modules of the strict packages (default: lookuplens.explain and
lookuplens.zoo) are errors: they are listed and the exit code is 1. Cycles elsewhere
are printed as information.

    python scripts/check_import_cycles.py [--src SRC] [--strict PKG ...]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lookuplens"
STRICT = ("lookuplens.explain", "lookuplens.zoo")


@dataclass(frozen=True)
class Edge:
    """One import statement: `source` imports `target` at `line` (deferred: in a function)."""

    source: str
    target: str
    line: int
    deferred: bool


def module_names(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under `src`."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, and whether it sits inside a function."""

    def walk(node: ast.AST, deferred: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, deferred
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # the else branch runs
                    yield from walk(ast.Module(body=[sub], type_ignores=[]), deferred)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, True)
            else:
                yield from walk(child, deferred)

    return walk(tree, False)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_edges(src: Path) -> list[Edge]:
    """The imports between the package's modules."""
    modules = module_names(src)
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, deferred in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _absolute(name, is_package, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # `import a.b.c` without a module a.b.c: the nearest enclosing module
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.append(Edge(name, target, node.lineno, deferred))
    return edges


def strongly_connected(nodes: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        graph.setdefault(e.source, []).append(e.target)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(set(graph[root]))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(set(graph[child])))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(out)


def a_cycle(component: list[str], edges: list[Edge]) -> list[Edge]:
    """One shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    inside = [e for e in edges if e.source in members and e.target in members]
    start = component[0]
    previous: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for e in inside:
                if e.source != node:
                    continue
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, previous[path[0].source])
                    return path
                if e.target not in previous:
                    previous[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    return []


def _show(component: list[str], edges: list[Edge]) -> str:
    lines = [f"  cycle among {len(component)} modules: {', '.join(component)}"]
    for e in a_cycle(component, edges):
        how = "in a function" if e.deferred else "at module level"
        lines.append(f"    {e.source} imports {e.target} (line {e.line}, {how})")
    return "\n".join(lines)


def within(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src folder")
    parser.add_argument(
        "--strict",
        nargs="*",
        default=list(STRICT),
        help="packages in which a cycle is an error (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    modules = module_names(args.src)
    edges = import_edges(args.src)

    strict_nodes = [m for m in modules if within(m, args.strict)]
    strict_edges = [
        e for e in edges if within(e.source, args.strict) and within(e.target, args.strict)
    ]
    errors = strongly_connected(strict_nodes, strict_edges)

    reported = {frozenset(c) for c in errors}
    others = [c for c in strongly_connected(modules, edges) if frozenset(c) not in reported]

    print(f"{len(modules)} modules, {len(edges)} imports between them")
    if others:
        print(f"information: {len(others)} import cycle(s) outside {', '.join(args.strict)}:")
        for c in others:
            print(_show(c, edges))
    if errors:
        print(f"error: {len(errors)} import cycle(s) within {', '.join(args.strict)}:")
        for c in errors:
            print(_show(c, strict_edges))
        return 1
    print(f"no import cycle within {', '.join(args.strict)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Static import graph of the repo's packages (``samplers``, ``diffusion``, ``training``).

Every ``import`` statement is read with :mod:`ast`, wherever it sits (module level, functions,
classes, ``if``/``try`` blocks), relative imports included. Each resolves to one module node:

* ``import a.b.c`` -> ``a.b.c``;
* ``from a.b import c`` -> ``a.b.c`` if that is a module (file or package) of the tree,
  else ``a.b``;
* ``from . import x`` / ``from ..pkg import y`` -> the same, after resolving the dots.

A package is the node of its ``__init__.py`` (``diffusion``). No implicit edges to parent
packages are added; only explicit imports count. Third-party imports are ignored; in-tree names
that match no module are kept in ``graph.unresolved``. Imports by string (``importlib``) are not
seen. Layering is ``samplers`` <- ``diffusion`` <- ``training``: a lower package must not import a
higher one.

Run ``python tests/import_graph.py [--root DIR]`` for a report.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Dict, List, NamedTuple, Set, TextIO

#: Top-level packages, lowest layer first.
PACKAGES = ("samplers", "diffusion", "training")


class Edge(NamedTuple):
    """One import statement: ``src`` imports ``dst`` at lines ``lineno``..``end_lineno``."""
    src: str
    dst: str
    lineno: int
    end_lineno: int


class Cycle(NamedTuple):
    """A strongly connected component (or self-loop) and closed import paths through it."""
    members: List[str]
    paths: List[List[str]]


class ModuleGraph(Dict[str, Set[str]]):
    """``module -> set of modules it imports``, one key per module of the tree.

    Extra attributes: ``edges`` (every :class:`Edge`, with line numbers), ``files`` (module ->
    path), ``sizes`` (module -> number of lines), ``unresolved`` (in-tree imports of no module).
    """

    def __init__(self) -> None:
        super().__init__()
        self.edges: List[Edge] = []
        self.files: Dict[str, Path] = {}
        self.sizes: Dict[str, int] = {}
        self.unresolved: List[Edge] = []

    def __repr__(self) -> str:
        return f"<ModuleGraph: {len(self)} modules, {len(self.edges)} import statements>"

    def lineno(self, src: str, dst: str) -> int:
        """First line at which ``src`` imports ``dst``."""
        return min(e.lineno for e in self.edges if e.src == src and e.dst == dst)


def _targets(node: ast.AST, module: str, is_package: bool, modules: Set[str]) -> List[str]:
    """Dotted module names that one ``Import``/``ImportFrom`` node refers to."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: strip (level - 1) parts off the containing package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:max(len(package) - node.level + 1, 0)] + [node.module or ""])
        base = base.rstrip(".")  # ``from . import x``: no module after the dots
    else:
        base = node.module or ""
    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
               for alias in node.names]
    return list(dict.fromkeys(targets))  # ``from a import x, y`` of two names: one edge


def module_graph(root: Path | str, packages=PACKAGES) -> ModuleGraph:
    """Parse every ``.py`` file of ``packages`` under ``root`` into a :class:`ModuleGraph`."""
    root = Path(root).resolve()
    graph = ModuleGraph()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" not in parts:
                graph.files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules = set(graph.files)
    for module, path in graph.files.items():
        text = path.read_text(encoding="utf-8")
        graph.sizes[module] = len(text.splitlines())
        graph[module] = set()
        tree = ast.parse(text, filename=str(path))
        for node in (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))):
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target.split(".")[0] not in packages:
                    continue  # third-party or standard library
                edge = Edge(module, target, node.lineno, node.end_lineno or node.lineno)
                if target in modules:
                    graph.edges.append(edge)
                    graph[module].add(target)
                else:
                    graph.unresolved.append(edge)
    graph.edges.sort(key=lambda e: (e.src, e.lineno, e.dst))
    return graph


def top(module: str) -> str:
    """Top-level package of a dotted module name."""
    return module.split(".")[0]


def package_edges(graph: ModuleGraph) -> Counter:
    """``(src package, dst package) -> number of distinct module-to-module edges``."""
    return Counter((top(src), top(dst)) for src, dsts in graph.items() for dst in dsts)


def upward_edges(graph: ModuleGraph, packages=PACKAGES) -> List[Edge]:
    """Import statements from a lower package to a higher one (``diffusion`` -> ``training``)."""
    layer = {package: i for i, package in enumerate(packages)}
    return [e for e in graph.edges if layer[top(e.dst)] > layer[top(e.src)]]


def _components(graph: ModuleGraph) -> List[List[str]]:
    """Tarjan's strongly connected components."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shortest_path(graph: ModuleGraph, src: str, dst: str, inside: Set[str]) -> List[str]:
    """Shortest import path ``src -> ... -> dst`` through ``inside`` (``[src]`` if equal)."""
    parent: Dict[str, str] = {src: src}
    queue = deque([src])
    while queue and dst not in parent:
        node = queue.popleft()
        for nxt in sorted(graph[node] & inside):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    path = [dst]
    while path[-1] != src:
        path.append(parent[path[-1]])
    return path[::-1]


def cycles(graph: ModuleGraph) -> List[Cycle]:
    """Every strongly connected component of more than one module, plus every self-loop.

    Each comes with closed paths that together use every import edge inside it, so each edge
    that would have to go to break the cycle is shown.
    """
    found = []
    for members in _components(graph):
        inside = set(members)
        if len(members) == 1 and members[0] not in graph[members[0]]:
            continue
        paths: List[List[str]] = []
        covered: Set[tuple] = set()
        for src in members:
            for dst in sorted(graph[src] & inside):
                if (src, dst) not in covered:  # edge src -> dst, then back to src
                    path = [src] + _shortest_path(graph, dst, src, inside)
                    paths.append(path)
                    covered.update(zip(path, path[1:]))
        found.append(Cycle(members, paths))
    return found


def format_path(graph: ModuleGraph, path: List[str]) -> str:
    """``a:12 -> b:30 -> a``: each module with the line at which it imports the next."""
    steps = [f"{src}:{graph.lineno(src, dst)}" for src, dst in zip(path, path[1:])]
    return " -> ".join(steps + [path[-1]])


def print_report(graph: ModuleGraph, out: TextIO = sys.stdout) -> None:
    """Package edge counts, upward edges, cycles, unresolved imports and module sizes."""
    say = lambda line="": print(line, file=out)  # noqa: E731
    say("Package edges (distinct module -> module imports):")
    for (src, dst), count in sorted(package_edges(graph).items()):
        say(f"  {src} -> {dst}: {count}")
    upward = upward_edges(graph)
    say(f"\nUpward edges (against {' <- '.join(PACKAGES)}): {len(upward)} import statements")
    for e in upward:
        say(f"  {e.src}:{e.lineno} -> {e.dst}")
    found = cycles(graph)
    say(f"\nCycles: {len(found)}")
    for cycle in found:
        say(f"  {len(cycle.members)} modules: {', '.join(cycle.members)}")
        for path in cycle.paths:
            say(f"    {format_path(graph, path)}")
    if graph.unresolved:
        say(f"\nUnresolved in-tree imports: {len(graph.unresolved)}")
        for e in graph.unresolved:
            say(f"  {e.src}:{e.lineno} -> {e.dst} (no such module)")
    say(f"\nModules: {len(graph)}, largest by lines:")
    for module, lines in sorted(graph.sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
        say(f"  {lines:6d}  {module}")


def main(argv: List[str] | None = None) -> None:
    """Command line: print the report for ``--root`` (default: the repo holding this file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root holding the packages (default: %(default)s)")
    print_report(module_graph(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()

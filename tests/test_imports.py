"""Imports flow one way: the import graph of ``shim/``, read from the source, has no cycle.

Strategy: every ``.py`` file under ``shim/`` is a node (a package is its ``__init__.py``). Every
``import`` statement anywhere in a file is an edge - at module level, inside functions and
classes, and under ``if TYPE_CHECKING:``. A function-local import only postpones the
dependency to the first call, so a cycle through one is still a cycle (the house rule allows
local imports for start-up time, not to hide a circle). ``TYPE_CHECKING`` imports count too:
they never run, but a low module that names a high one's types still depends on it, and mypy
and the reader have to load the high one to understand the low one; keeping them as edges
keeps the layering honest at no cost (a type that both sides need belongs on the lower floor).

Resolution: ``import shim.a.b`` and ``from shim.a.b import x`` are edges to ``shim.a.b``;
``from shim.a import b`` is an edge to ``shim.a.b`` when ``b`` is a module, else to
``shim.a``; relative imports are resolved against the importing module's package. Python
initialises a target's packages first (``shim.a`` before ``shim.a.b``), so those are edges
too, except packages that contain the importer (they are already being initialised when it
runs: a package's submodules may import each other through it without a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHIM = Path(__file__).resolve().parent.parent / "shim"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _packages(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path) -> dict[str, set[str]]:
    """The import graph of the package at ``root``: module name -> the modules it imports
    (only modules inside the package)."""
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        own_package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = own_package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts)
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                targets.add(module)
                for alias in node.names:
                    if f"{module}.{alias.name}" in files:
                        targets.add(f"{module}.{alias.name}")
        containing = {*_packages(name), *([name] if is_package else [])}
        for target in targets:
            for t in (*_packages(target), target):
                if t in files and t != name and t not in containing:
                    graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, each given as one
    cycle through all of its members (``[a, b, c, a]``), sorted for stable messages."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan, recursive: the graph is small
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_through(graph, c) for c in sorted(components, key=min)]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed walk from the component's first member along import edges inside it that
    names every member (shortest paths stitched together)."""
    members = sorted(component)
    walk = [members[0]]
    for target in [*members[1:], members[0]]:
        if target in walk[1:] and target != members[0]:
            continue
        walk.extend(_shortest_path(graph, component, walk[-1], target)[1:])
    return walk


def _shortest_path(graph: dict[str, set[str]], inside: set[str], a: str, b: str) -> list[str]:
    previous: dict[str, str] = {}
    frontier = [a]
    seen = {a}
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == b:
                    path = [b, v]
                    while path[-1] != a:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if w not in seen:
                    seen.add(w)
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{b} is not reachable from {a} inside its component")


def test_shim_has_no_import_cycle() -> None:
    graph = import_graph(SHIM)
    assert "shim.cli" in graph and "shim.checkpoint.runner" in graph  # the walk found them
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in shim/:\n" + "\n".join(
        f"{len(set(c))} modules {sorted(set(c))}: " + " -> ".join(c) for c in cycles
    )


# -- the checker itself, on small synthetic trees ----------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from pkg.high import g\n    return g\n",
            "high.py": "import pkg.mid\n",
            "mid.py": "from . import low\n",
        },
    )
    assert find_cycles(import_graph(root)) == [["pkg.high", "pkg.mid", "pkg.low", "pkg.high"]]


def test_type_checking_imports_are_edges(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n"
            ),
            "b.py": "from pkg import a\n",
        },
    )
    assert find_cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_relative_imports_and_packages(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "sub/__init__.py": "from .x import X\n",  # a package re-exporting its module
            "sub/x.py": "from ..util import u\nX = 1\n",
            "sub/y.py": "from pkg.sub import X\n",  # through its own package: no cycle
            "util.py": "u = 1\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.sub"] == {"pkg.sub.x"}
    assert graph["pkg.sub.x"] == {"pkg.util"}
    assert graph["pkg.sub.y"] == set()
    assert find_cycles(graph) == []
    # a module importing a sibling package's module also runs that package's __init__
    (root / "util.py").write_text("import pkg.sub.y\n")
    assert graph != (graph2 := import_graph(root))
    assert graph2["pkg.util"] == {"pkg.sub", "pkg.sub.y"}
    assert find_cycles(graph2) == [["pkg.sub", "pkg.sub.x", "pkg.util", "pkg.sub"]]


@pytest.mark.parametrize("level_src", ["from .. import util", "from ..util import u"])
def test_relative_import_levels(tmp_path: Path, level_src: str) -> None:
    root = _tree(
        tmp_path,
        {"__init__.py": "", "util.py": "u = 1\n", "a/__init__.py": "", "a/m.py": level_src},
    )
    assert import_graph(root)["pkg.a.m"] == {"pkg.util"}


# -- the floors of docs/architecture.md -----------------------------------------------------

ARCHITECTURE = SHIM.parent / "docs" / "architecture.md"


def floors_from_doc(text: str) -> dict[str, int]:
    """Module prefix (``shim.ctl``, ``shim.cli``) -> floor number, from the doc's tables."""
    floors: dict[str, int] = {}
    floor = 0
    for line in text.splitlines():
        if line.startswith("## ") and line[3:4].isdigit():
            floor = int(line[3 : line.index(".")])
        elif line.startswith("| `shim/") and floor:
            path = line.split("`")[1].removesuffix("/").removesuffix(".py")
            floors[path.replace("/", ".")] = floor
    return floors


def _floor_of(module: str, floors: dict[str, int]) -> int | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in floors:
            return floors[".".join(parts[:i])]
    return None


def test_every_module_is_on_a_floor_and_imports_only_its_own_or_lower() -> None:
    """docs/architecture.md is true: it places every module of shim/ on a floor, and no
    import (module-level, local or TYPE_CHECKING) goes up a floor."""
    floors = floors_from_doc(ARCHITECTURE.read_text())
    graph = import_graph(SHIM)
    unplaced = sorted(m for m in graph if m != "shim" and _floor_of(m, floors) is None)
    assert not unplaced, f"modules docs/architecture.md does not place: {unplaced}"
    upward = sorted(
        f"{a} (floor {_floor_of(a, floors)}) -> {b} (floor {_floor_of(b, floors)})"
        for a, targets in graph.items()
        for b in targets
        if a != "shim" and b != "shim" and _floor_of(a, floors) < _floor_of(b, floors)  # type: ignore[operator]
    )
    assert not upward, "imports going up a floor:\n" + "\n".join(upward)

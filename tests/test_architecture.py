"""The package's floors (ARCHITECTURE.md): imports only go down, never in circles, never hidden in functions.

Read from the source with `ast`, so a new import that climbs a floor, closes
a circle or hides in a function body fails here before it confuses a reader.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "trax_sl"

# Lowest first. A module may import modules of its own floor or of floors below;
# within a floor the graph must still be acyclic. The first matching prefix wins.
FLOORS = (
    (
        "trax_sl.checks",
        "trax_sl.shapes",
        "trax_sl.mesh",
        "trax_sl.partitioning",
        "trax_sl.gin_types",
        "trax_sl.fastmath",
    ),
    ("trax_sl.sequence",),
    (
        "trax_sl.layers.rng",
        "trax_sl.layers.errors",
        "trax_sl.layers.streaming",
        "trax_sl.layers.serialization",
        "trax_sl.layers.trax_checkpoint",
        "trax_sl.layers.sharding",
        "trax_sl.layers.cache_views",
    ),
    ("trax_sl.layers.base",),
    ("trax_sl.layers",),
    ("trax_sl.models", "trax_sl.data", "trax_sl.optimizers", "trax_sl.sl"),
    ("trax_sl.supervised",),
    ("trax_sl.trainer", "trax_sl.export"),
)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _floor(module: str) -> int:
    if module == "trax_sl":  # The root package re-exports every subpackage: the top floor.
        return len(FLOORS)
    for floor, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return floor
    raise AssertionError(f"{module} is on no floor: add it to FLOORS here and to ARCHITECTURE.md")


def _imports(module: str):
    """(imported trax_sl module, line, whether inside a function or class body) for each import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
            # `from pkg import submodule` imports the submodule; `from mod import name` the module.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("trax_sl") and name in MODULES and name != module:
                yield name, node.lineno, id(node) not in top_level


GRAPH = {module: sorted({name for name, _, _ in _imports(module)}) for module in MODULES}


def test_every_module_is_on_a_floor():
    for module in MODULES:
        _floor(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    climbing = [
        f"line {line}: {name} (floor {_floor(name)})"
        for name, line, _ in _imports(module)
        if _floor(name) > _floor(module) and not name.startswith(module + ".")
    ]
    assert not climbing, f"{module} (floor {_floor(module)}) imports from a higher floor: {climbing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_imports_hidden_in_functions(module):
    hidden = [f"line {line}: {name}" for name, line, inside in _imports(module) if inside]
    assert not hidden, f"{module} imports inside a function (a circle held together lazily?): {hidden}"


def _circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles():
    assert not _circles(GRAPH), f"import circles: {_circles(GRAPH)}"


def test_the_checks_can_fail():
    """A made-up circle is found, and the floors order the packages as ARCHITECTURE.md says."""
    assert _circles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _circles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []
    assert _floor("trax_sl.layers.streaming.window") < _floor("trax_sl.layers.base")
    assert (
        _floor("trax_sl.layers.base") < _floor("trax_sl.layers.core") < _floor("trax_sl.supervised.training")
    )
    assert "trax_sl.layers.base" in GRAPH["trax_sl.layers.core"]

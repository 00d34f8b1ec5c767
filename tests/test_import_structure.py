"""The house's shape, read from the source: imports point down the layers, no module is part of
an import circle, and no module takes another module's private names.

Every ``import`` statement counts, wherever it stands (a function-level import or one under
``TYPE_CHECKING`` ties two modules as much as one at the top).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "quarterdeck"

LAYERS: dict[str, int] = {
    "domain": 0,
    "store": 1,
    "runtime": 2,
    "client": 3,
    "tui": 4,
    "cli": 5,
}
"""Each top-level part of the package and its floor: a module may import its own floor and
those below it, never one above. The command line sits on top because it launches the TUI."""


@dataclass(frozen=True, slots=True)
class Import:
    """One name or module a module takes from another module of the package."""

    source: str
    target: str
    name: str | None
    line: int


def module_name(path: Path) -> str:
    """``src/quarterdeck/store/work.py`` -> ``quarterdeck.store.work``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """The package-internal imports of one module, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield Import(name, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    yield Import(name, submodule, None, node.lineno)
                else:
                    yield Import(name, base, alias.name, node.lineno)


def all_imports() -> list[Import]:
    modules = package_modules()
    return [found for name, path in modules.items() for found in imports_of(name, path, modules)]


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_is_part_of_an_import_circle() -> None:
    edges: dict[str, set[str]] = {}
    for found in all_imports():
        if found.target != found.source:
            edges.setdefault(found.source, set()).add(found.target)
    assert cycles(edges) == []


def test_no_module_takes_another_modules_private_names() -> None:
    private = [
        f"{found.source}:{found.line} takes {found.target}.{found.name}"
        for found in all_imports()
        if found.name is not None and found.name.startswith("_") and not found.name.startswith("__")
    ]
    assert private == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for found in all_imports():
        source, target = floor_of(found.source), floor_of(found.target)
        if source is not None and target is not None and target > source:
            upward.append(f"{found.source}:{found.line} imports {found.target}")
    assert upward == []


def test_every_part_of_the_package_has_a_floor() -> None:
    parts = {
        name.split(".")[1]
        for name in package_modules()
        if name.count(".") >= 1 and name.split(".")[1] != "__main__"
    }
    assert parts <= set(LAYERS), f"parts without a floor: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}}, []),
    ],
)
def test_the_circle_finder_finds_circles(
    source: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(source) == expected


def test_the_reader_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    modules = {"quarterdeck.store.a": tmp_path / "a.py", "quarterdeck.store.b": tmp_path / "b.py"}
    path = tmp_path / "a.py"
    path.write_text(
        "def f():\n    from quarterdeck.store.b import _hidden\n"
        "from . import b\nfrom .b import shown\n",
        encoding="utf-8",
    )
    found = sorted(
        (i.target, i.name or "") for i in imports_of("quarterdeck.store.a", path, modules)
    )
    assert found == [
        ("quarterdeck.store.b", ""),
        ("quarterdeck.store.b", "_hidden"),
        ("quarterdeck.store.b", "shown"),
    ]

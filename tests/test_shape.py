"""The package keeps its shape: layers, no import cycles, no private names across modules.

The rules are read from the source with :mod:`ast`, so they hold for code
that no test happens to import. An import inside ``if TYPE_CHECKING:`` or
inside a function counts like any other: a cycle of types is a cycle of
design, and a deferred import only hides one. The layers are the table in
docs/design.md ("Layers"), so the page and the code cannot drift apart; and
comments cite that page's sections or upstream sources, never notes that
live outside the repository.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from collections.abc import Iterator
from typing import Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "sdplite"
DESIGN = os.path.join(ROOT, "docs", "design.md")


def module_files(root: str = ROOT) -> dict[str, str]:
    """Every module of the package: dotted name -> file path (a package is its ``__init__``)."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in files:
            if not name.endswith(".py"):
                continue
            relative = os.path.relpath(os.path.join(directory, name), root)[: -len(".py")]
            parts = relative.split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = os.path.join(directory, name)
    return found


class Import:
    """One imported name: ``from <module> import <name>`` (name None for ``import <module>``)."""

    def __init__(self, module: str, name: Optional[str], line: int) -> None:
        self.module = module
        self.name = name
        self.line = line


def _base(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    """Resolve a (possibly relative) ``from`` target to a dotted name."""
    if level == 0:
        return target or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def imports_of(module: str, path: str) -> Iterator[Import]:
    """Every import statement in a module, at any depth (functions, TYPE_CHECKING blocks)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node.level, node.module)
            for alias in node.names:
                yield Import(base, alias.name, node.lineno)


def internal_edges(modules: dict[str, str]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}, within the package only.

    ``from .wire import server`` names the submodule ``sdplite.wire.server``;
    ``from .wire import Server`` names the package ``sdplite.wire``. Importing
    a submodule also runs its parents' ``__init__``, but that is Python's
    doing, not a dependency the importer chose, so it is not an edge.
    """
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module, path in modules.items():
        for imp in imports_of(module, path):
            submodule = f"{imp.module}.{imp.name}" if imp.name else None
            target = submodule if submodule in modules else imp.module
            if target in modules and target != module:
                edges[module].setdefault(target, imp.line)
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def _describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    members = set(cycle)
    links = [
        f"{a} imports {b} (line {line})"
        for a in cycle
        for b, line in sorted(edges[a].items())
        if b in members
    ]
    return "; ".join(links)


def private_imports(modules: dict[str, str], root: str = ROOT) -> list[str]:
    """``from <another module> import _name``: a private name used outside its module."""
    found = []
    for module, path in modules.items():
        for imp in imports_of(module, path):
            name = imp.name
            if not name or not name.startswith("_") or name.startswith("__"):
                continue
            if imp.module.split(".")[0] != PACKAGE and imp.module != "":
                continue  # a third-party or stdlib private name is that library's business
            if f"{imp.module}.{name}" in modules:
                continue  # a private submodule, imported by name, is not a private member
            found.append(f"{os.path.relpath(path, root)}:{imp.line} imports {name} from {imp.module}")
    return found


# -- the rules, on the package ----------------------------------------------------


def test_no_import_cycles_between_modules() -> None:
    edges = internal_edges(module_files())
    cycles = find_cycles(edges)
    assert not cycles, "import cycles (a TYPE_CHECKING import counts too):\n" + "\n".join(
        _describe(c, edges) for c in cycles
    )


def test_no_module_imports_another_modules_private_name() -> None:
    found = private_imports(module_files())
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_walk_sees_the_whole_package() -> None:
    modules = module_files()
    edges = internal_edges(modules)
    assert {"sdplite", "sdplite.wire", "sdplite.wire.server", "sdplite.cli.serve"} <= set(modules)
    assert "sdplite.wire" in edges["sdplite"]  # from .wire import GrpcError, StatusCode
    assert "sdplite.plugin" in edges["sdplite"]


# -- the layers of docs/design.md ---------------------------------------------------


def read_layers(path: str = DESIGN) -> dict[str, tuple[list[str], set[str]]]:
    """The layer table: layer -> (module patterns relative to the package, layers it may import)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- layers:"))
    layers: dict[str, tuple[list[str], set[str]]] = {}
    for line in lines[start + 3 :]:
        if not line.startswith("|"):
            break
        name, modules, may, _job = (cell.strip() for cell in line.strip("|").split("|"))
        patterns = re.findall(r"`([^`]+)`", modules)
        allowed = {m.strip() for m in may.split(",")} - {"—", ""}
        layers[name] = (patterns, allowed)
    return layers


def layer_of(module: str, layers: dict[str, tuple[list[str], set[str]]]) -> Optional[str]:
    relative = module[len(PACKAGE) + 1 :] if module != PACKAGE else "__init__"
    for name, (patterns, _) in layers.items():
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns):
            return name
    return None


def layer_violations(modules: dict[str, str], layers: dict[str, tuple[list[str], set[str]]]) -> list[str]:
    problems = []
    edges = internal_edges(modules)
    for module in sorted(modules):
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module} is in no layer: add it to the table in docs/design.md")
            continue
        for target, line in sorted(edges[module].items()):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs != mine and theirs not in layers[mine][1]:
                problems.append(f"{module} ({mine}) imports {target} ({theirs}) at line {line}")
    return problems


def test_every_import_follows_the_layers_of_the_design_page() -> None:
    layers = read_layers()
    assert {"wire", "api", "plugin"} <= set(layers)
    for name, (_, allowed) in layers.items():
        assert allowed <= set(layers), f"layer {name} may import unknown layers {allowed - set(layers)}"
    problems = layer_violations(module_files(), layers)
    assert not problems, "imports that break docs/design.md's layers:\n" + "\n".join(problems)


def test_the_layer_check_catches_an_upward_import(tmp_path: str) -> None:
    write_package(
        str(tmp_path),
        {"__init__.py": "", "wire/__init__.py": "from ..plugin import x\n", "plugin.py": "", "odd.py": ""},
    )
    layers = {"wire": (["wire", "wire.*"], set()), "plugin": (["plugin", "__init__"], {"wire"})}
    problems = layer_violations(module_files(str(tmp_path)), layers)
    assert problems == [
        "sdplite.odd is in no layer: add it to the table in docs/design.md",
        "sdplite.wire (wire) imports sdplite.plugin (plugin) at line 1",
    ]


# -- citations ------------------------------------------------------------------------

#: Notes the project was built from that are not part of the repository.
OUTSIDE_NOTES = ("KUBELET.md", "GRPC-H2.md", "DRA.md", "STYLE.md", "../shared", "/work/shared")


def design_sections() -> set[str]:
    with open(DESIGN, encoding="utf-8") as handle:
        return {line.lstrip("#").strip() for line in handle if re.match(r"#{2,4} ", line)}


def test_comments_cite_the_repository_or_upstream_only() -> None:
    sections = design_sections()
    problems = []
    for path in sorted(module_files().values()):
        where = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for note in OUTSIDE_NOTES:
            if note in text:
                problems.append(f"{where} cites {note}, which is not in the repository")
        for match in re.finditer(r'docs/design\.md,\s*"([^"]+)"', text):
            section = " ".join(match.group(1).split())
            if section not in sections:
                problems.append(
                    f"{os.path.relpath(path, ROOT)} cites a section docs/design.md lacks: {section!r}"
                )
    assert not problems, "\n".join(problems)


# -- the checker itself, on made-up packages ----------------------------------------


def write_package(root: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = os.path.join(root, PACKAGE, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


@pytest.mark.parametrize(
    "files, cycle",
    [
        (
            {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import x\n"},
            ["sdplite.a", "sdplite.b"],
        ),
        (
            {
                "__init__.py": "",
                "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
                "b.py": "def f():\n    from .c import C\n",
                "c.py": "import sdplite.a\n",
            },
            ["sdplite.a", "sdplite.b", "sdplite.c"],
        ),
        (
            {"__init__.py": "", "w/__init__.py": "from .s import S\n", "w/s.py": "from .. import w\n"},
            ["sdplite.w", "sdplite.w.s"],
        ),
        ({"__init__.py": "from .a import A\n", "a.py": "from .b import B\n", "b.py": "X = 1\n"}, None),
        # A submodule importing a sibling through the package is no cycle by itself.
        ({"__init__.py": "", "w/__init__.py": "", "w/s.py": "from . import t\n", "w/t.py": ""}, None),
    ],
)
def test_cycle_finder(tmp_path: str, files: dict[str, str], cycle: Optional[list[str]]) -> None:
    write_package(str(tmp_path), files)
    cycles = find_cycles(internal_edges(module_files(str(tmp_path))))
    assert cycles == ([cycle] if cycle else [])


def test_private_import_finder(tmp_path: str) -> None:
    write_package(
        str(tmp_path),
        {
            "__init__.py": "from ._version import VERSION\n",
            "_version.py": "VERSION = '1'\n",
            "a.py": "_x = 1\n__all__ = []\n",
            "b.py": "from .a import _x, __all__\nfrom os import _exit\n",
            "w/__init__.py": "",
            "w/c.py": "def f():\n    from ..a import _x as y\n",
        },
    )
    found = private_imports(module_files(str(tmp_path)), str(tmp_path))
    assert [line.split(" imports ")[1] for line in found] == ["_x from sdplite.a", "_x from sdplite.a"]
    assert found[0].startswith(os.path.join(PACKAGE, "b.py") + ":1")

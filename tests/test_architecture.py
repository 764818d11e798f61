"""The house rules, derived from the package layout (docs/architecture.md).

``geopresence`` is layered by subpackage, lowest first::

    model -> wire -> core -> storage | cluster -> shell -> (client, testing, cli)

A module may import its own layer and the layers below it, never above; storage and cluster
sit side by side and never import each other. The sans-I/O layers (model, wire, core) import
no I/O library and touch no file; only cluster imports coredis and hiredis. No import cycle
anywhere.
Every import is read from the source (``ast``), lazy ones and ``TYPE_CHECKING`` ones included:
a cycle that only type checkers see is still a cycle in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geopresence"
LAYERS = ["model", "wire", "core", "storage|cluster", "shell", "public"]
"""Subpackages by rank; ``a|b`` share a rank and may not import each other."""
TOP_LEVEL = {
    "config": "model",
    "units": "model",
    "options": "model",
    "client": "shell",
    "testing": "public",
    "pytest_plugin": "public",
    "cli": "public",
    "announce": "public",
    "demo": "public",
}
"""The modules beside the subpackages: the public faces, ranked like a layer."""
SANS_IO = {"model", "wire", "core"}
IO_LIBRARIES = {
    "anyio", "asyncio", "coredis", "fcntl", "hiredis", "httpx", "hypercorn", "io", "os",
    "selectors", "shutil", "socket", "tempfile", "threading", "trio", "trio_websocket",
    "websockets", "wsproto",
}  # fmt: skip
FILE_METHODS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir",
                "unlink", "touch", "iterdir", "glob", "rglob", "stat"}  # fmt: skip
"""Path methods that touch the disk (``pathlib.Path`` itself is a value and allowed)."""


def layer_of(module: str) -> str:
    """``geopresence.core.hub`` -> ``core``; a top-level module's rank from TOP_LEVEL."""
    parts = module.split(".")
    assert parts[0] == "geopresence", module
    if len(parts) == 1 or parts[1] == "__main__":
        return "public"
    if parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    return parts[1]  # a subpackage (or its __init__) is its layer


def rank(layer: str) -> int:
    for index, names in enumerate(LAYERS):
        if layer in names.split("|"):
            return index
    raise AssertionError(f"{layer}: not a layer of {LAYERS}; add it there")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, absolute (``from . import x`` resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # ``from geopresence.core import hub`` imports the module geopresence.core.hub
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


MODULES = dict(modules())


def internal_imports(module: str) -> set[str]:
    return {name for name in imports_of(MODULES[module], module) if name in MODULES} - {module}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        rank(layer_of(module))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_down(module: str) -> None:
    mine = layer_of(module)
    for target in internal_imports(module):
        theirs = layer_of(target)
        if target in ("geopresence", f"geopresence.{theirs}"):
            continue  # a package's own __init__ (docstring only)
        assert rank(theirs) <= rank(mine), f"{module} ({mine}) imports {target} ({theirs})"
        if rank(theirs) == rank(mine):
            assert theirs == mine, f"{module} ({mine}) imports {target} ({theirs}): siblings"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) in SANS_IO))
def test_sans_io_layers_do_no_io(module: str) -> None:
    path = MODULES[module]
    for name in imports_of(path, module):
        assert name.split(".")[0] not in IO_LIBRARIES, f"{module} imports {name}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{module} opens a file (line {node.lineno})"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            assert name not in FILE_METHODS, f"{module} calls .{name}() (line {node.lineno})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_cluster_layer_talks_to_redis(module: str) -> None:
    if layer_of(module) != "cluster":
        for name in imports_of(MODULES[module], module):
            assert name.split(".")[0] not in ("coredis", "hiredis"), f"{module} imports {name}"


WEBSOCKET_LIBRARIES = {"trio_websocket", "websockets", "wsproto"}
WEBSOCKET_SEAM = {
    "geopresence.shell.transport",
    "geopresence.shell.transport_handshake",
    "geopresence.client",
}
"""The server's transport seam, and the public WebSocket client (which may keep its own)."""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_transport_seam_knows_the_websocket_library(module: str) -> None:
    """Replacing the server's WebSocket library touches shell/transport.py only."""
    if module not in WEBSOCKET_SEAM:
        for name in imports_of(MODULES[module], module):
            assert name.split(".")[0] not in WEBSOCKET_LIBRARIES, f"{module} imports {name}"


def find_cycle() -> list[str] | None:
    graph = {module: internal_imports(module) for module in MODULES}
    # A package's __init__ imported for its submodule is not an edge of the design.
    graph = {
        m: {t for t in targets if MODULES[t].name != "__init__.py"} for m, targets in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_rules_catch_a_forbidden_import(tmp_path: Path) -> None:
    """The checks are not vacuous: a core module importing trio, or the shell, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom geopresence.shell import server\n")
    names = imports_of(bad, "geopresence.core.bad")
    assert "trio" in names and "geopresence.shell.server" in names
    assert rank(layer_of("geopresence.shell.server")) > rank(layer_of("geopresence.core.bad"))


def test_the_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md has a row per module of each layer package, and no row for a
    module that is gone: a newcomer's map of the code is the code's."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for package in ("model", "wire", "core", "storage", "cluster", "shell"):
        section = doc.split(f"**`{package}/`**", 1)[1].split("\n\n**", 1)[0]
        listed = {row.split("`")[1] for row in section.splitlines() if row.startswith("| `")}
        present = {f.stem for f in (PACKAGE / package).glob("*.py") if f.stem != "__init__"}
        assert listed == present, f"{package}/: missing {present - listed}, gone {listed - present}"

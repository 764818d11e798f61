"""The architecture rule: the core never imports trio (or any I/O library).

Core modules are plain synchronous objects passed ``now``; only the shell (server, HTTP API,
client, CLI, testing helpers) does I/O. Checked on the source, so a lazy import inside a
function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geopresence"

CORE_MODULES = [
    "broker",
    "channel_events",
    "chat",
    "chat_store",
    "config",
    "expiry",
    "geo",
    "geocells",
    "grid",
    "hub",
    "ids",
    "journal",
    "locations",
    "metrics",
    "nearby",
    "outbox",
    "presence",
    "protocol",
    "records",
    "recovery",
    "replication",
    "snapshot",
    "snowflake",
    "store",
    "strangers",
]
FORBIDDEN = {"trio", "trio_websocket", "hypercorn", "httpx", "anyio", "socket", "asyncio"}
SHELL = {
    "server",
    "http_api",
    "client",
    "cli",
    "testing",
    "clock",
    "aio",
    "auth",
    "history",
    "push",
    "persistence",
    "wsbatch",
    "logs",
    "redis_broker",
    "redis_state",
    "redis_presence",
    "cluster",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_no_io(module: str) -> None:
    imports = imported_modules(PACKAGE / f"{module}.py")
    for name in imports:
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"geopresence.{module} imports {name}"
        if top == "geopresence":
            inner = name.split(".")[1] if "." in name else ""
            assert inner not in SHELL, f"geopresence.{module} imports the shell module {name}"


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_opens_no_files(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"geopresence.{module} opens a file"


def test_every_module_is_classified() -> None:
    """A new module must be placed on one side of the rule consciously."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(CORE_MODULES) | SHELL

"""The protocol core (p2pchat/core/) stays without I/O: none of its modules imports a socket,
thread, SQLite, zeroconf or clock module (time is passed in), so its tests and the simulator
run it without sockets or sleeps."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"socket", "threading", "sqlite3", "zeroconf", "time", "asyncio", "select", "os"}
CORE = Path(__file__).resolve().parent.parent / "p2pchat" / "core"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_core_imports_no_io_and_no_clock() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 4
    offending = {p.name: imported_modules(p) & FORBIDDEN for p in modules}
    assert not {k: v for k, v in offending.items() if v}, offending

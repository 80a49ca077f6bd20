"""No import cycle anywhere in p2pchat: every module under p2pchat/ is parsed with ``ast``
(no module is imported), the graph of its imports of p2pchat modules is built (absolute
``p2pchat.x`` and relative imports, at module level, inside functions and under
``TYPE_CHECKING`` alike), and the graph must have no cycle.  The command's package
``p2pchat/cli/`` must also keep its layers: each module imports only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "p2pchat"

CLI_LAYERS = [
    "p2pchat.cli",
    "p2pchat.cli.tui",
    "p2pchat.cli.screen",
    "p2pchat.cli.scripted",
    "p2pchat.cli.session",
    "p2pchat.cli.commands",
    "p2pchat.cli.output",
    "p2pchat.cli.chatlog",
    "p2pchat.cli.arrival",
    "p2pchat.cli.notify",
    "p2pchat.cli.render",
    "p2pchat.cli.offers",
    "p2pchat.cli.args",
]
"""p2pchat/cli/, top first; tui and scripted are side by side (neither imports the other)."""


def module_name(path: Path) -> str:
    """``p2pchat/cli/args.py`` -> ``p2pchat.cli.args``; ``__init__.py`` names its package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The p2pchat modules ``name`` imports.  ``from a import b`` counts as an import of
    ``a.b`` when that is a module, else of ``a``; parent packages that Python runs on the way
    are not counted (a package's ``__init__`` importing its own modules is no cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.add(child if child in known else module)
    out = set()
    for imported in found:
        while imported and imported not in known:  # p2pchat.x.Class -> p2pchat.x
            imported = imported.rpartition(".")[0]
        if imported and imported != name:
            out.add(imported)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None.  Depth first, iterative."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y", "z"}, "y": set(), "z": {"z2"}, "z2": {"z"}}) == ["z", "z2", "z"]


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert {"p2pchat.node", "p2pchat.cli", "p2pchat.cli.tui", "p2pchat.core.admission"} <= set(
        graph
    )
    assert "p2pchat.cli" in graph["p2pchat.__main__"]  # from p2pchat.cli import main
    assert "p2pchat.cli.tui" in graph["p2pchat.cli"]  # imported inside main()
    assert "p2pchat.wire" in graph["p2pchat.cli.args"]  # from p2pchat import __version__, wire
    assert "p2pchat" in graph["p2pchat.cli.args"]  # __version__: the package itself


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cli_modules_import_only_the_layers_below() -> None:
    graph = import_graph()
    assert {m for m in graph if m.startswith("p2pchat.cli")} == set(CLI_LAYERS)
    wrong = []
    for i, module in enumerate(CLI_LAYERS):
        for imported in graph[module] & set(CLI_LAYERS):
            side_by_side = {module, imported} == {"p2pchat.cli.tui", "p2pchat.cli.scripted"}
            if CLI_LAYERS.index(imported) <= i or side_by_side:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong
    outside = sorted(
        m
        for m, imported in graph.items()
        if not m.startswith("p2pchat.cli") and imported & set(CLI_LAYERS)
    )
    assert outside == ["p2pchat.__main__"], f"only __main__ may import the command: {outside}"

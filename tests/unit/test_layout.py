"""The code's shape (issue 11): no import circle among the project's modules, and
no module importing another module's private name. Imports inside ``if
TYPE_CHECKING:`` (annotations only) do not count; imports inside functions do."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fencevol", "vserver", "vclient", "fuse_fs")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known) -> tuple[set[str], list[str]]:
    """(modules of the project it imports, private names it imports from them)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, private = set(), []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:
                found.add(f"{mod}.{a.name}")
                if a.name.startswith("_") and not a.name.startswith("__") and mod in known:
                    private.append(f"{name}: from {mod} import {a.name}")
    return {m for m in found if m in known and m != name}, private


def test_no_import_circles_and_no_private_imports():
    mods = modules()
    graph, private = {}, []
    for name, path in mods.items():
        graph[name], p = imports(name, path, mods)
        private += p
    assert not private, private
    # Depth-first search for a back edge; report the cycle it closes.
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert len(graph) > 40 and "vserver.server" in graph      # it looked at the project

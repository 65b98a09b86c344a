"""The shape of the code: no import loops inside the package, each stage entered through its one door.

Both checks read the source with ``ast`` (nothing is imported or run), so they see every import,
including the ones inside functions that only run later: a loop of lazy imports still ties two
modules into one.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "repotune"


@cache
def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module under ``package`` by dotted name (a package by its own name, for its __init__)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts).removesuffix(".__init__")] = path
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, package: Path = PACKAGE) -> set[str]:
    """The repotune modules ``name`` imports, anywhere in its body, with the packages that importing them
    runs (``import a.b.c`` runs ``a/b/__init__`` too, unless it is one of ``name``'s own packages)."""
    known = modules(package)
    path = known[name]
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                # `from a import b` imports the module a.b when there is one, else a name of a
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    own = set(_ancestors(name))
    found = set()
    for target in targets:
        if target not in known:
            continue
        found.add(target)
        found.update(p for p in _ancestors(target) if p in known and p not in own and p != "repotune")
    found.discard(name)
    return found


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (Tarjan)."""
    graph = {name: sorted(imports_of(name, package)) for name in sorted(modules(package))}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_module_of_the_package_imports_itself_back() -> None:
    assert import_cycles() == []


def test_the_cycle_check_sees_lazy_imports(tmp_path: Path) -> None:
    """A loop closed only by an import inside a function is found too (the check is not vacuous)."""
    package = tmp_path / "repotune"
    (package / "deploy").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "deploy" / "__init__.py").write_text("")
    (package / "deploy" / "render.py").write_text("def f():\n    from repotune.deploy.uris import g\n")
    (package / "deploy" / "uris.py").write_text("from repotune.deploy.render import f\n")
    assert import_cycles(package) == [["repotune.deploy.render", "repotune.deploy.uris"]]
    (package / "deploy" / "render.py").write_text("def f():\n    return 1\n")
    modules.cache_clear()
    assert import_cycles(package) == []

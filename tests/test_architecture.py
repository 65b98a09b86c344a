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


STAGES = ("ingest", "clean", "train", "evaluate", "deploy")
# Where the stages are entered from: the command line, the KFP components, the local runner and the
# pipeline, and the upload API.
CALLERS = ("repotune.cli", "repotune.components.steps", "repotune.pipelines", "repotune.api")
# What a caller may call besides `run`: helpers that build a stage's config, not its work, and
# evaluate's `draw_samples`, which only reads held-out records (the demo asks the served model one of
# the questions evaluation asks), and `line_spans`, the lines of a text as those samples cut them.
# Evaluate has a second entry, `score_base`: the base model's share of its work, which needs no trained
# model, so the pipeline runs it beside train (`base_scores_summary` reads what it wrote).
CONFIG_HELPERS = {
    "score_base",
    "base_scores_summary",
    "resolve_recipe",
    "settings_from",
    "shipped_recipes_dir",
    "to_yaml",
    "draw_samples",
    "existing_after",  # the demo sends the text after its line as a FIM sample carries it
    "line_spans",
    "rewrites_line_above",  # the demo judges its closing completion as evaluation judges every answer
    "check_same_project",  # run refuses before the first step the champion evaluate would refuse
}


def _exports(stage: str) -> set[str]:
    """The names the stage package exports (its ``__all__``), read from its ``__init__``."""
    tree = ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {ast.literal_eval(element) for element in node.value.elts}
    raise AssertionError(f"repotune.{stage} has no __all__")


def _stage_uses(module: str) -> tuple[list[str], list[tuple[str, str]]]:
    """In ``module``: imports that reach below a stage package, and calls of stage names as (stage, name)."""
    below: list[str] = []
    calls: list[tuple[str, str]] = []
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    bound: dict[str, tuple[str, str | None]] = {}  # local name -> (stage, exported name or None: the package)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if node.module == "repotune":
                for alias in node.names:
                    if alias.name in STAGES:
                        bound[alias.asname or alias.name] = (alias.name, None)
            elif parts[0] == "repotune" and len(parts) > 1 and parts[1] in STAGES:
                if len(parts) > 2:
                    below.append(f"from {node.module} import ...")
                for alias in node.names:
                    bound[alias.asname or alias.name] = (parts[1], alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "repotune" and len(parts) > 2 and parts[1] in STAGES:
                    below.append(f"import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            stage, name = bound.get(func.value.id, (None, "?"))
            if stage is not None and name is None:
                calls.append((stage, func.attr))
        elif isinstance(func, ast.Name) and func.id in bound and bound[func.id][1] is not None:
            stage, name = bound[func.id]
            calls.append((stage, str(name)))
    return below, calls


def _callers() -> list[str]:
    return [name for name in modules() if any(name == c or name.startswith(c + ".") for c in CALLERS)]


def test_callers_reach_each_stage_only_through_what_its_package_exports() -> None:
    for module in _callers():
        below, calls = _stage_uses(module)
        assert below == [], f"{module} reaches below a stage package: {below}"
        for stage, name in calls:
            assert name in _exports(stage), (
                f"{module} calls repotune.{stage}.{name}, which it does not export"
            )
            # the stage's work starts only at run; the other calls build its config or read its result
            assert name == "run" or name[0].isupper() or name in CONFIG_HELPERS, (
                f"{module} calls repotune.{stage}.{name}: enter the stage through repotune.{stage}.run"
            )


def test_the_command_line_and_the_components_enter_every_stage_through_its_run() -> None:
    for module in ("repotune.cli", "repotune.components.steps"):
        _, calls = _stage_uses(module)
        entered = {stage for stage, name in calls if name == "run"}
        assert entered == set(STAGES), f"{module} does not call run of {set(STAGES) - entered}"


def test_every_stage_package_has_the_same_shape() -> None:
    for stage in STAGES:
        title = stage.capitalize()
        assert {"run", f"{title}Config", f"{title}Result"} <= _exports(stage), stage
        if stage != "deploy":  # deploy writes no folder of its own, only the objects it applies
            assert f"{title}Layout" in _exports(stage), stage

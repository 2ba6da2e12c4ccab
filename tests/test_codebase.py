"""House rules that a reviewer would otherwise check by hand (docs/architecture.md): short
functions, imports only down the layers of docs/architecture.md and never in a circle (imports
inside functions count), nothing inside the package importing the ``unetviz`` facade, and every
user-error type deriving from the one base."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unetviz"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


MODULES = _modules()


def test_no_function_over_80_lines():
    long = []
    for _name, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} {n}")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Modules of the package that ``module`` imports anywhere (inside functions too), except
    under ``if TYPE_CHECKING:`` (never run)."""
    package = (
        module
        if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
        else module.rpartition(".")[0]
    )
    found = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("unetviz")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("unetviz"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


IMPORTS = {m: _imports(m, tree) for m, (_, tree) in MODULES.items()}


def _circles() -> list[str]:
    # a package importing its own submodules (re-exports) is not a circle
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in IMPORTS.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_circle_counting_imports_inside_functions():
    cycles = _circles()
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_import_check_sees_imports_inside_functions_but_not_type_checking():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .capture import Trace\n"
        "def f():\n    from .render import plots\n"
    )
    assert _imports("unetviz.names", tree) == {"unetviz.render.plots"}


def test_nothing_inside_the_package_imports_the_facade():
    offenders = []
    for name, (path, tree) in MODULES.items():
        if name == "unetviz":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "unetviz" for a in node.names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "unetviz" and not node.level:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, "imports of the unetviz facade: " + ", ".join(offenders)


@pytest.mark.parametrize("name", [n for n in __import__("unetviz").__all__ if n.endswith("Error")])
def test_every_exported_error_derives_from_the_base(name):
    import unetviz

    assert issubclass(getattr(unetviz, name), unetviz.UnetvizError)
    assert issubclass(getattr(unetviz, name), ValueError)  # callers of the first release


def test_every_error_class_in_the_package_derives_from_the_base():
    from unetviz.errors import UnetvizError

    foreign = []
    for name, (_path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                cls = getattr(importlib.import_module(name), node.name, None)
                if isinstance(cls, type) and not issubclass(cls, UnetvizError):
                    foreign.append(f"{name}.{node.name}")
    assert not foreign, "error classes outside the UnetvizError family: " + ", ".join(foreign)


def _layers() -> dict[str, int]:
    """The layer table of docs/architecture.md: module (prefix) -> layer."""
    text = ARCHITECTURE.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for row in re.findall(r"^\| (\d+) \| (.+?) \|", text, flags=re.M):
        for module in re.findall(r"`([\w.]+)`", row[1]):
            assert module not in layers, f"{module} is in two rows of docs/architecture.md"
            layers[module] = int(row[0])
    return layers


#: the layers of docs/architecture.md, lowest first: a module may import its own layer and below
LAYERS = _layers()


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_the_layer_table_names_real_modules_and_places_every_module():
    assert LAYERS["unetviz"] == max(LAYERS.values()) and LAYERS["unetviz.errors"] == 0
    assert not [m for m in LAYERS if m not in MODULES], "docs/architecture.md names no such module"
    unplaced = [m for m in MODULES if m != "unetviz" and _layer(m) == LAYERS["unetviz"]]
    assert not unplaced, f"add to the layer table of docs/architecture.md: {unplaced}"


def test_no_import_runs_upward():
    upward = []
    for name, deps in IMPORTS.items():
        for dep in deps:
            if dep.startswith(name + "."):
                continue
            if _layer(dep) > _layer(name):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that run upward:\n" + "\n".join(sorted(upward))

"""House rules that a reviewer would otherwise check by hand (DESIGN.md): short functions, no
import circles between modules, nothing inside the package importing the ``unetviz`` facade,
and every user-error type deriving from the one base."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unetviz"
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


def _imports(module: str, tree: ast.Module, top_level_only: bool) -> set[str]:
    """Modules of the package that ``module`` imports (at module level if asked)."""
    package = (
        module
        if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
        else module.rpartition(".")[0]
    )
    found = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
            continue
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


def test_no_import_circle_at_module_level():
    graph = {m: _imports(m, tree, True) for m, (_, tree) in MODULES.items()}
    # a package importing its own submodules (re-exports) is not a circle
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
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
    assert not cycles, "import circles:\n" + "\n".join(cycles)


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


#: the layers of DESIGN.md, lowest first: a module may import its own layer and those below
LAYERS = [
    ("unetviz.errors", 0),
    ("unetviz.outputs", 0),
    ("unetviz.colors", 0),
    ("unetviz.callargs", 0),
    ("unetviz.config", 0),
    ("unetviz.names", 0),
    ("unetviz.detect", 0),
    ("unetviz.safetensors_io", 0),
    ("unetviz.model", 1),
    ("unetviz.weights", 2),
    ("unetviz.single_file", 2),
    ("unetviz.capture", 2),
    ("unetviz.edits", 3),
    ("unetviz.structure", 3),
    ("unetviz.render", 3),
    ("unetviz.pipelines", 4),
    ("unetviz.training", 5),
    ("unetviz.batch", 5),
    ("unetviz.report", 5),
    ("unetviz.app", 6),
    ("unetviz.cli", 6),
    ("unetviz.attention_cli", 6),
    ("unetviz", 7),
]
#: modules that sit at the top whatever their package (command lines, app glue)
TOP = (".cli", "unetviz.edits.handlers", "unetviz.edits.figures", "unetviz.edits.demo_scores")
#: display hooks: ``_repr_html_`` / ``.report()`` import the report package when a notebook or
#: a user asks for them, never at import time
DISPLAY_HOOKS = {"unetviz.report.display", "unetviz.report.html"}


def _layer(module: str) -> int:
    if module.endswith(TOP):
        return 6
    prefix = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[prefix]


def test_no_import_runs_upward():
    upward = []
    for name, (_path, tree) in MODULES.items():
        for dep in _imports(name, tree, top_level_only=False):
            if dep.startswith(name + ".") or dep in DISPLAY_HOOKS:
                continue
            if _layer(dep) > _layer(name):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that run upward:\n" + "\n".join(sorted(upward))

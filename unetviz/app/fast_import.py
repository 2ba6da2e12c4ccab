"""A faster ``import gradio``: skip gradio's rewrite of its own type stubs.

gradio (5.x, 6.x) calls ``gradio.component_meta.create_or_modify_pyi`` for every component class
it defines: it reads the class's source file, parses it with ``ast`` (twice) and rewrites the
``.pyi`` stub beside it in site-packages. The stubs serve gradio's own type checking and are
never read at run time; on this 2-core machine they cost about 2 s of a 3.8 s import, almost
half of a warm ``python app.py`` start (``python -X importtime``, bench/app.py).

:func:`install` puts a finder on ``sys.meta_path`` that lets Python load
``gradio.component_meta`` as usual and then replaces that one function with a no-op, before
any component class is defined. It must run before gradio is imported (``unetviz.app`` calls
it first); once gradio is loaded it does nothing. Component classes, events and the served
page are unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "gradio.component_meta"
FUNCTION = "create_or_modify_pyi"


def _no_stub_rewrite(*args: Any, **kwargs: Any) -> None:
    """Stands in for gradio's stub writer: the app never reads the stubs."""


class _SkipStubRewrite(importlib.abc.MetaPathFinder):
    """Finds ``gradio.component_meta`` with the normal path finder and patches it once
    loaded."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if spec is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            if callable(getattr(module, FUNCTION, None)):
                setattr(module, FUNCTION, _no_stub_rewrite)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> bool:
    """Install the finder unless gradio is already imported; True when installed."""
    if TARGET in sys.modules or any(isinstance(f, _SkipStubRewrite) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _SkipStubRewrite())
    return True

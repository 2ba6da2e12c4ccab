"""How a Trace, a Run or an edit Comparison presents itself (notebook HTML, an HTML report file)
without importing the code that draws it.

The drawing lives in the report layer (:mod:`unetviz.report`), above capture, pipelines and
edits; the package facade (``unetviz/__init__.py``, which every import of the package runs
first) registers the report layer's functions here by name, and the objects below call
:func:`present`. So the lower layers import nothing above them, and the report layer is only
imported when something is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import UnetvizError

_PRESENTERS: dict[str, Callable[..., Any]] = {}


def register(**presenters: Callable[..., Any]) -> None:
    """Make each ``name=function`` available to :func:`present`."""
    _PRESENTERS.update(presenters)


def present(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the presenter registered as ``name`` (``trace_html``, ``run_mimebundle``,
    ``comparison_mimebundle``, ``write_report``)."""
    try:
        presenter = _PRESENTERS[name]
    except KeyError:
        raise UnetvizError(
            f"no presenter {name!r}: expected one of {sorted(_PRESENTERS)}"
        ) from None
    return presenter(*args, **kwargs)

"""The app's event handlers, one class per tab (``architecture``, ``attention``, ``temb``),
composed here; plain methods that take a ``form`` of named inputs and return ``{name: value}``
(tests and the bench call them directly). See :mod:`unetviz.app.common` for the rules.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .architecture import ArchitectureHandlers
from .attention import (
    CONTROLS,
    GUIDANCE_SLIDER,
    NO_DAAM_NOTE,
    AttentionHandlers,
    controls,
    step_window,
)
from .common import InputError, clean_message, handler, parse_int, session_key
from .temb import TembHandlers

__all__ = [
    "AppHandlers",
    "CONTROLS",
    "GUIDANCE_SLIDER",
    "InputError",
    "NO_DAAM_NOTE",
    "POST_LOAD",
    "clean_message",
    "controls",
    "parse_int",
    "session_key",
    "step_window",
]

#: what follows every Run, upload and example Run, in the order it reaches the page
POST_LOAD = (
    "temb_heat",
    "temb_lines",
    "sinus",
    "temb_svg",
    "temb_msg",
    "layer_plot",
    "dl_zip",
    "dl_trace",
    "dl_report",
)


class AppHandlers(ArchitectureHandlers, AttentionHandlers, TembHandlers):
    """Every tab's handlers; results per browser session live in :attr:`sessions`."""

    @handler(*POST_LOAD[:7], msg="ctrl_msg")
    def post_load(self, form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        """The one step after a Run, an upload or an example's Run: the Time-embedding tab,
        the layer grid and the heatmaps zip of the session's new trace (made once per trace:
        after a failed or cancelled Run nothing changes); :meth:`post_load_files` follows."""
        session = self.session(request)
        if session is None or session.shown.get("post_load"):
            return {}
        session.shown["post_load"] = True
        try:
            out = self.temb_views(session, form)
        except Exception as exc:  # a trace without temb records: the tab says why
            from .common import _message

            out = {"temb_msg": _message("temb", exc)}
        c = controls(form)
        return out | self._grid(session, c) | self._zip(session, c) | {"ctrl_msg": ""}

    @handler("dl_trace", "dl_report", msg="ctrl_msg")
    def post_load_files(self, form: dict[str, Any], request: gr.Request = None) -> dict:
        """The post-load step's files: the trace bundle and the report (once per trace)."""
        from unetviz.report.html import write_report

        from . import views

        session = self.session(request)
        if session is None or session.shown.get("files"):
            return {}
        session.shown["files"] = True
        stem = views.slug(session.label, "trace")
        bundle = views.save_bundle(session, self._outdir() / f"{stem}.trace.zip")
        report = write_report(session, self._outdir() / f"{stem}-report.html")
        return {"dl_trace": str(bundle), "dl_report": str(report), "ctrl_msg": ""}

"""The Gradio Blocks: one tab per entry of :data:`TABS`, each a module with its handlers and its
``build(ctx)`` (:mod:`.architecture`, :mod:`.attention`, :mod:`.temb`, :mod:`.experiments`,
:mod:`.dataset`), wired by name through :class:`TabContext` (:mod:`.common`).

A tab builder is ``def build(ctx: TabContext) -> None``, called inside its ``gr.Tab``; it creates
components under their names in ``ctx.c`` and may append a wiring function to ``ctx.wiring``
(called once every tab exists, for events that cross tabs). A new tab is one more
``(title, builder)`` entry in :data:`TABS`. The page's style and scripts are files in
``static/``.

Generation events share one queue (``concurrency_id="model"``, limit 1) and the registry's lock;
re-aggregation reads only the session's cached Trace; drawing diagrams has its own queue, so a
long run never blocks another visitor's Architecture tab.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from . import architecture, attention, temb, walkthrough
from .common import (
    STATIC,
    TabContext,
    diagram_panel,
    localise_events,
    refresh_loras,
    static_text,
    text_slots_in_every_language,
)
from .handlers import AppHandlers
from .i18n import SWITCH_HTML, SWITCH_JS, L
from .registry import ModelRegistry
from .sessions import SessionStore

__all__ = ["CSS", "TABS", "TabContext", "build_blocks", "diagram_panel"]

#: the page's style (``static/app.css``; gradio 6 takes it at ``launch``)
CSS = static_text("app.css") + static_text("walkthrough.css")
DEFAULT_PROMPT = attention.DEFAULT_PROMPT


def build_experiments(ctx: TabContext) -> None:
    """The Experiments tab (``unetviz.app.experiments``, on ``unetviz.edits``): imported when
    the app is built, not when this module is."""
    from .experiments import build_experiments as build

    build(ctx)


def build_dataset(ctx: TabContext) -> None:
    """The Dataset tab (``unetviz.app.dataset``, on ``unetviz.batch.dataset``)."""
    from .dataset import build_dataset as build

    build(ctx)


#: the app's tabs, in order: (title, builder)
TABS: list[tuple[str, Callable[[TabContext], None]]] = [
    ("Architecture", architecture.build),
    ("Attention", attention.build),
    ("Time embedding", temb.build),
    ("Experiments", build_experiments),
    ("Dataset", build_dataset),
    ("Walkthrough", walkthrough.build),
]


def build_blocks(
    registry: ModelRegistry,
    workdir: Path | None = None,
    sessions: SessionStore | None = None,
) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (serve it with :func:`unetviz.app.serve`)."""
    gr.set_static_paths([STATIC])
    ctx = TabContext(AppHandlers(registry, workdir, sessions), registry)
    ctx.c["tab_titles"] = [title for title, _ in TABS]  # the order tabs are built in
    with gr.Blocks(title="unetviz", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        gr.HTML(SWITCH_HTML, js_on_load=SWITCH_JS, elem_id="uv_lang_switch")
        gr.Markdown(
            L(
                "# unetviz\nSee inside the Stable Diffusion UNet: its architecture, where each "
                "prompt token attends, and how strongly the timestep speaks in every "
                "ResnetBlock2D."
            )
        )
        with gr.Tabs(elem_id="tabs"):
            for i, (title, build) in enumerate(TABS):
                with gr.Tab(L(title), id=f"tab{i}", elem_id=f"tab-{i}"):
                    build(ctx)
        for wire in ctx.wiring:
            wire(ctx)
        text_slots_in_every_language(ctx.c)
        architecture.wire_load(ctx, demo)
        refresh_loras(ctx, demo)
        demo.load(ctx.handlers.temb_intro, None, ctx.c["sinus"], api_visibility="private")

        def forget(request: gr.Request) -> None:
            ctx.handlers.forget(request)

        demo.unload(forget)
    localise_events(demo)  # the events not declared with `handler` (plain gradio functions)
    demo.unetviz_handlers = ctx.handlers  # type: ignore[attr-defined]
    demo.unetviz_context = ctx  # type: ignore[attr-defined]
    return demo

"""The Time-embedding tab: the temb ratio per resnet and step, the diagram filled by it at one
step, and the sinusoidal embedding (drawn before any run)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError

from . import views
from .common import HandlerBase, TabContext, diagram_panel, handler, log, parse_int
from .i18n import L, choices
from .registry import DEMO

#: everything the tab shows from a trace
TEMB_OUT = ("temb_heat", "temb_lines", "sinus", "temb_svg")


class TembHandlers(HandlerBase):
    """The Time-embedding tab's handlers."""

    def temb_intro(self) -> Any:
        """The demo model's sinusoidal embedding, drawn before any run."""
        try:
            return views.sinusoid_figure(self.registry.spec(DEMO).config)
        except UnetvizError as exc:
            log.warning("temb_intro: %s", exc)
            return None

    def temb_views(self, session: Any, form: dict[str, Any]) -> dict[str, Any]:
        """Every view of the tab for ``session``'s trace (a new run or upload)."""
        tr = session.trace
        heat, lines = views.temb_figures(tr, by=form.get("temb_by") or "layer")
        sinus = views.sinusoid_figure(tr.meta.get("config") or {}, list(tr.timesteps or []))
        n = parse_int(form.get("temb_step", 0), "step", 0, max(session.steps - 1, 0))
        svg = views.temb_diagram(tr, n, form.get("temb_detail") or "layers")
        return {"temb_heat": heat, "temb_lines": lines, "sinus": sinus, "temb_svg": svg,
                "temb_msg": ""}  # fmt: skip

    @handler(*TEMB_OUT, msg="temb_msg")
    def temb(self, form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        """temb heatmap, lines, sinusoidal embedding and the diagram coloured at the step."""
        return self.temb_views(self._need(request), form)

    @handler("temb_svg", msg="temb_msg")
    def temb_diagram(self, form: dict[str, Any], request: gr.Request = None) -> dict:
        """Only the diagram (a step or detail change)."""
        session = self._need(request)
        n = parse_int(form.get("temb_step", 0), "step", 0, max(session.steps - 1, 0))
        svg = views.temb_diagram(session.trace, n, form.get("temb_detail") or "layers")
        return {"temb_svg": svg, "temb_msg": ""}

    @handler("temb_heat", "temb_lines", msg="temb_msg")
    def temb_plots(self, form: dict[str, Any], request: gr.Request = None) -> dict:
        """Only the heatmap and lines (grouping changed)."""
        session = self._need(request)
        heat, lines = views.temb_figures(session.trace, by=form.get("temb_by") or "layer")
        return {"temb_heat": heat, "temb_lines": lines, "temb_msg": ""}


def build(ctx: TabContext) -> None:
    """temb ratio per resnet and step, the diagram filled by it, the sinusoidal embedding."""
    from .attention import DEFAULT_PROMPT

    c = ctx.c
    gr.Markdown(
        L(
            "How big is the projected time embedding next to the feature map it is added to, "
            "in every ResnetBlock2D, along the denoising trajectory? The sinusoidal embedding "
            "below needs no run; the ratios need a run or an uploaded trace."
        )
    )
    with gr.Row():
        c["temb_example"] = gr.Button(
            L("Run the example prompt ({prompt})", prompt=repr(DEFAULT_PROMPT)),
            variant="primary",
            elem_id="temb_example",
            scale=2,
        )
        c["temb_msg"] = gr.Markdown("", elem_id="temb_msg", elem_classes=["uv-msg"])
    c["sinus"] = gr.Plot(label=L("sinusoidal timestep embedding"), elem_id="sinusoid")
    with gr.Row():
        c["temb_step"] = gr.Slider(
            0, 24, value=12, step=1, label=L("Step for the diagram fill"), elem_id="temb_step"
        )
        c["temb_detail"] = gr.Radio(
            choices("blocks", "layers"),
            value="blocks",
            label=L("Diagram detail"),
            elem_id="temb_detail",
        )
        c["temb_by"] = gr.Radio(
            [(L("per resnet"), "layer"), (L("per block"), "block")],
            value="layer",
            label=L("Plots"),
            elem_id="temb_by",
        )
    c["temb_svg"] = diagram_panel("temb_diagram")
    with gr.Row():
        c["temb_heat"] = gr.Plot(label=L("temb ratio heatmap"), elem_id="temb_heat")
        c["temb_lines"] = gr.Plot(label=L("temb ratio lines"), elem_id="temb_lines")
    ctx.wiring.append(wire)


def wire(ctx: TabContext) -> None:
    """The tab's controls, and its example button: the Attention tab's Run of the example
    prompt (the same post-load step as any Run)."""
    from .attention import DEFAULT_PROMPT, run_event

    h, c = ctx.handlers, ctx.c
    ctx.on(c["temb_by"].input, h.temb_plots, ("temb_by",),
           api_visibility="private", show_progress="hidden")  # fmt: skip
    ctx.on(
        [c["temb_step"].input, c["temb_detail"].input],
        h.temb_diagram,
        ("temb_step", "temb_detail"),
        api_name="temb_diagram",
        trigger_mode="always_last",
        show_progress="minimal",
    )
    filled = c["temb_example"].click(
        lambda: DEFAULT_PROMPT, None, c["prompt"], api_visibility="private", show_progress="hidden"
    )
    run_event(ctx, filled, api_visibility="private")

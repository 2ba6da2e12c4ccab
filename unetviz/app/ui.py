"""The Gradio Blocks: one tab per entry of :data:`TABS`, wired to :class:`AppHandlers`.

A tab builder is ``def build(ctx: TabContext) -> None``, called inside its ``gr.Tab``; it
creates components, registers the ones other tabs use in ``ctx.c`` and may append a wiring
function to ``ctx.wiring`` (called once every tab exists, for events that cross tabs). New tabs
(experiments, reports) are one more ``(title, builder)`` entry in :data:`TABS`.

Generation events share one queue (``concurrency_id="model"``, limit 1) and the registry's lock;
re-aggregation reads only the session's cached Trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ..pipelines.base import MAX_SEED
from . import views
from .handlers import GUIDANCE_SLIDER, MAX_STEPS, AppHandlers
from .registry import DEMO, ModelRegistry, describe_roots
from .sessions import SessionStore

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PROMPT = "a red circle and a blue square"
MODEL_CHOICES = [
    ("demo model (shipped, runs offline)", DEMO),
    ("SD 1.5 preset (meta: shapes only)", "sd15"),
    ("SD 2.1 preset (meta)", "sd21"),
    ("SDXL preset (meta)", "sdxl"),
    ("local folder (inside the model roots)", "folder"),
]

CSS = """
footer { display: none !important; }
.unetviz-diagram { border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: white; color: #222; }
.uv-head { display: flex; justify-content: space-between; align-items: center; gap: 8px;
  padding: 4px 8px; font-size: 14px; border-bottom: 1px solid #e5e5e5; }
.uv-tools button { margin-left: 4px; padding: 1px 10px; border: 1px solid #bbb;
  border-radius: 6px; background: #f6f6f6; color: #222; cursor: pointer; }
.uv-panel { height: 760px; max-height: 85vh; overflow: hidden; cursor: grab; }
.uv-panel > svg { width: 100%; height: 100%; display: block; }
.uv-panel a, .uv-panel a:hover { text-decoration: none !important; }
.uv-panel g.node { cursor: pointer; }
.uv-legend { border-top: 1px solid #e5e5e5; padding: 4px 8px; max-height: 240px; overflow: auto; }
.uv-legend svg { max-width: 100%; height: auto; }
.uv-legend a, .uv-legend text { text-decoration: none !important; }
.uv-title { font-weight: 600; }
.uv-selected path, .uv-selected polygon { stroke: #ff5a00 !important;
  stroke-width: 4px !important; }
/* tables are read-only: no edit ring on a clicked cell (gradio draws it on the cell's inner
   span as an inset box-shadow), no cell menu */
.table-wrap [role=gridcell], .table-wrap [role=gridcell] *, .table-wrap [role=gridcell]:focus,
.table-wrap [role=gridcell]:focus-within { outline: none !important; box-shadow: none !important; }
.table-wrap .cell-menu-button, .table-wrap .selection-button { display: none !important; }
/* gradio tints a row only under the mouse: the picked block's row stays tinted */
#block_table [role=row]:has(.cell-selected) { background: var(--table-row-focus); }
.uv-colorbar { max-width: 420px; font-size: 12px; margin: 4px 0; }
.uv-cb-bar { height: 14px; border-radius: 3px; border: 1px solid #999; }
.uv-cb-ticks { display: flex; justify-content: space-between; }
.uv-msg p { color: #b45309; font-weight: 600; margin: 0.3em 0; }
.uv-range { padding: 6px 8px; font-size: 14px; }
.uv-range-track { position: relative; height: 28px; }
.uv-range-track input { position: absolute; left: 0; top: 6px; width: 100%; margin: 0;
  pointer-events: none; background: none; -webkit-appearance: none; appearance: none; }
.uv-range-track input::-webkit-slider-thumb { pointer-events: auto; -webkit-appearance: none;
  width: 16px; height: 16px; border-radius: 50%; background: #f97316; cursor: pointer; }
.uv-range-track .uv-rail { position: absolute; left: 0; right: 0; top: 13px; height: 4px;
  background: #ddd; border-radius: 2px; }
#status p, #arch_status p { margin: 0.2em 0; }
.uv-tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr));
  gap: 8px; padding: 30px 0 4px; }
.uv-tile { position: relative; margin: 0; min-width: 0; }
.uv-tile img { display: block; width: 100%; height: auto; border-radius: 4px; cursor: zoom-in; }
.uv-tile.uv-big { grid-column: span 2; grid-row: span 2; }
.uv-tile.uv-big img { cursor: zoom-out; }
.uv-tile figcaption { text-align: center; font-size: 13px; margin-top: 2px; }
.uv-tile .uv-save { position: absolute; top: 4px; right: 4px; padding: 0 6px;
  border: 1px solid #bbb; border-radius: 4px; background: rgba(255,255,255,0.85);
  color: #222; cursor: pointer; font-size: 13px; }
.uv-tiles-empty { color: var(--body-text-color-subdued); padding: 24px 8px; }
.uv-no-daam { color: var(--body-text-color); padding: 16px; margin: 8px 0;
  border: 1px dashed var(--border-color-primary); border-radius: 8px; }
"""

TILES_EMPTY = '<p class="uv-tiles-empty">The heatmaps appear here after a Run.</p>'
#: the tiles' behaviour (they arrive as one HTML block): a click enlarges a tile, its button
#: saves it as a PNG named after its token
TILES_JS = """
element.addEventListener('click', (e) => {
  const fig = e.target.closest('.uv-tile');
  if (!fig) return;
  const img = fig.querySelector('img');
  if (e.target.closest('.uv-save')) {
    const a = document.createElement('a');
    const name = fig.querySelector('figcaption').textContent.trim();
    a.href = img.src;
    a.download = 'heatmap-' + name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '') + '.' + img.src.slice(11, img.src.indexOf(';'));
    a.click();
  } else if (e.target === img) {
    fig.classList.toggle('uv-big');
  }
});
"""

RANGE_TEMPLATE = (
    '<div class="uv-range"><div>Steps <b class="uv-range-text">${value.lo}–${value.hi}</b>'
    ' of 0–${value.max} (drag either end)</div><div class="uv-range-track">'
    '<div class="uv-rail"></div>'
    '<input type="range" class="lo" min="0" max="${value.max}" step="1" value="${value.lo}"'
    ' aria-label="first step">'
    '<input type="range" class="hi" min="0" max="${value.max}" step="1" value="${value.hi}"'
    ' aria-label="last step"></div></div>'
)
RANGE_JS = """
const ends = () => [element.querySelector('input.lo'), element.querySelector('input.hi')];
element.addEventListener('input', (e) => {
  const [lo, hi] = ends();
  if (!lo || !hi) return;
  if (+lo.value > +hi.value) { if (e.target === lo) hi.value = lo.value; else lo.value = hi.value; }
  element.querySelector('.uv-range-text').textContent = lo.value + '–' + hi.value;
});
element.addEventListener('change', () => {
  const [lo, hi] = ends();
  props.value = {lo: +lo.value, hi: +hi.value, max: props.value.max};
  trigger('change');
});
"""


@dataclass
class TabContext:
    """What tab builders share: handlers, registry, named components, late wiring."""

    handlers: AppHandlers
    registry: ModelRegistry
    c: dict[str, Any] = field(default_factory=dict)
    wiring: list[Callable[[TabContext], None]] = field(default_factory=list)


def _static_url(name: str) -> str:
    return f"/gradio_api/file={STATIC / name}"


def diagram_panel(elem_id: str, value: str | None = None) -> gr.HTML:
    """A gr.HTML whose SVG gets pan/zoom, an outside title and legend, node selection."""
    return gr.HTML(
        value,
        elem_id=elem_id,
        head=f'<script src="{_static_url("svg-pan-zoom.min.js")}"></script>',
        js_on_load=(STATIC / "diagram.js").read_text(),
    )


def _msg(elem_id: str) -> gr.Markdown:
    return gr.Markdown("", elem_id=elem_id, elem_classes=["uv-msg"])


# ------------------------------------------------------------------------------ architecture
def _arch_controls(ctx: TabContext) -> tuple[Any, ...]:
    """The Architecture tab's first row: model, folder, size, batch, detail, Draw."""
    with gr.Row(equal_height=True):
        model = gr.Dropdown(MODEL_CHOICES, value=DEMO, label="Model", elem_id="arch_model", scale=3)
        folder = gr.Textbox(
            label="Local model folder",
            placeholder="a diffusers folder inside the model roots",
            info=f"allowed roots: {describe_roots(ctx.registry.roots)}",
            visible=False,
            elem_id="arch_folder",
            scale=3,
        )
        side = _demo_side(ctx.registry)
        height = gr.Number(side, label="height (px)", precision=0, elem_id="arch_h", min_width=90)
        width = gr.Number(side, label="width (px)", precision=0, elem_id="arch_w", min_width=90)
        batch = gr.Number(
            2, label="UNet batch (2 = CFG)", precision=0, elem_id="arch_batch", min_width=90
        )
        detail = gr.Radio(
            list(views.DETAILS), value="blocks", label="Detail", elem_id="arch_detail", scale=3
        )
        draw = gr.Button("Draw", variant="primary", elem_id="arch_draw", scale=1)
    return model, folder, height, width, batch, detail, draw


def build_architecture(ctx: TabContext) -> None:
    """Model, size, detail -> a pan/zoom diagram, its downloads and the block table."""
    h, c = ctx.handlers, ctx.c
    arch_state = gr.State(None, time_to_live=ctx.handlers.sessions.ttl_s)
    model, folder, height, width, batch, detail, draw = _arch_controls(ctx)
    # the demo's diagram is on the first page (drawn from its cached structure, no torch)
    first = c["first_drawing"] = h.first_drawing()
    panel0, rows0, status0 = first or (None, None, "")
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            arch_msg = _msg("arch_msg")
            arch_status = gr.Markdown(status0, elem_id="arch_status")
            gr.Markdown(
                "Wheel: zoom · drag: pan · **Fit**: the whole diagram · click a block: its row "
                "and parts below"
            )
        dl = [
            gr.DownloadButton(k.upper(), size="sm", min_width=60, elem_id=f"dl_{k}", scale=0)
            for k in ("svg", "png", "dot", "json")
        ]
    diagram_html = diagram_panel("diagram", panel0)
    with gr.Row():
        search = gr.Textbox(
            label="Find a module",
            placeholder="diffusers name, LDM key or A1111 label (e.g. IN04, input_blocks.4)",
            elem_id="block_search",
            scale=3,
        )
        search_msg = gr.Markdown(elem_id="search_msg")
    table, picked, parts = _block_tables(rows0)
    arch_in = [model, folder, height, width, batch, detail]
    arch_out = [diagram_html, table, arch_status, arch_state, arch_msg]
    draw_kw = {"concurrency_id": "arch", "concurrency_limit": 2}
    quiet = {"api_visibility": "private", "show_progress": "hidden"}
    exports = (h.exports, [arch_state], [*dl, arch_msg])
    gr.on(
        [draw.click, detail.input, folder.submit],
        h.architecture,
        arch_in,
        arch_out,
        api_name="architecture",
        **draw_kw,
    ).then(*exports, api_name="exports", show_progress="hidden")
    # a model choice sets its native size and draws at once: one round trip, not two
    # (``change``: the dropdown sends ``input`` twice per choice, which drew twice)
    model.change(
        h.choose_model,
        [model, folder, batch, detail],
        [height, width, folder, *arch_out],
        api_name="choose_model",
        trigger_mode="always_last",
        **draw_kw,
    ).then(*exports, **quiet)
    gr.on(
        [search.submit, search.input],
        h.search,
        [arch_state, search],
        [table, search_msg],
        api_name="search",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    table.select(h.select_block, [arch_state], [parts, picked, arch_msg], api_name="select_block")
    c.update(arch_in=arch_in, arch_out=arch_out, arch_exports=exports, arch_state=arch_state)


def _block_tables(rows: list[list[Any]] | None) -> tuple[Any, Any, Any]:
    """The block table (first ``rows``), the picked block's name and its parts table."""
    table = gr.Dataframe(
        rows,
        headers=views.TABLE_HEADERS,
        type="array",
        interactive=False,
        wrap=True,
        max_height=420,
        label="Blocks (click a row: its node is highlighted in the diagram, its parts below)",
        elem_id="block_table",
    )
    picked = gr.Markdown(elem_id="block_picked")
    parts = gr.Dataframe(
        headers=views.PARTS_HEADERS,
        type="array",
        interactive=False,
        wrap=True,
        column_widths=["18%", "14%", "30%", "30%", "8%"],
        label="Parts and shapes",
        elem_id="block_parts",
    )
    return table, picked, parts


def _demo_side(registry: ModelRegistry) -> int:
    try:
        return registry.spec(DEMO).default_size
    except Exception:  # a broken demo folder: the Architecture tab says so on load
        return 24


# ------------------------------------------------------------------------------ attention
def _prompt_column(ctx: TabContext) -> None:
    c = ctx.c
    c["prompt"] = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=1, elem_id="prompt")
    words = ctx.registry.demo_words()
    with gr.Row(elem_id="examples"):
        for i, ex in enumerate(views.demo_examples(words)):
            b = gr.Button(ex, size="sm", elem_id=f"example_{i}", elem_classes=["uv-example"])
            b.click(None, None, c["prompt"], js=f"() => {json.dumps(ex)}")
    gr.Markdown(
        (f"**Demo vocabulary** ({len(words)} words): " + " · ".join(f"`{w}`" for w in words))
        + f"\n\n{views.demo_limits(words, _demo_side(ctx.registry))}",
        elem_id="demo_help",
    )
    with gr.Row():
        c["negative"] = gr.Textbox("", label="Negative prompt", elem_id="negative", scale=2)
        c["seed"] = gr.Textbox(
            "0", label="Seed", info=f"a whole number 0..{MAX_SEED}", elem_id="seed", scale=2
        )
        c["steps"] = gr.Number(
            25, label="Steps", precision=0, info=f"1..{MAX_STEPS}", elem_id="steps", scale=1
        )
        c["guidance"] = gr.Slider(
            *GUIDANCE_SLIDER, value=4.0, step=0.5, label="Guidance", elem_id="guidance"
        )
    with gr.Row(equal_height=True):
        c["run_model"] = gr.Textbox(
            DEMO,
            label="Model",
            info="'demo' or a diffusers folder inside the model roots",
            scale=2,
            elem_id="run_model",
        )
        c["run"] = gr.Button("Run", variant="primary", scale=1, elem_id="run")
        c["run_msg"] = gr.Markdown("", elem_id="run_msg", elem_classes=["uv-msg"])
    c["status"] = gr.Markdown(
        "Nothing generated yet: press **Run** (or pick an example first), or upload a trace "
        "bundle below.",
        elem_id="status",
    )
    with gr.Accordion("Explore a saved trace bundle (no model needed)", open=False):
        c["upload"] = gr.File(
            label=f"trace bundle (.zip written by unetviz, up to {views.MAX_UPLOAD_MB} MB)",
            file_types=[".zip"],
            type="filepath",
            elem_id="upload",
        )


def _control_column(ctx: TabContext) -> None:
    c = ctx.c
    c["token_pick"] = gr.CheckboxGroup([], label="Tokens to map", elem_id="token_pick")
    c["step_range"] = gr.HTML(
        {"lo": 0, "hi": 24, "max": 24},
        html_template=RANGE_TEMPLATE,
        js_on_load=RANGE_JS,
        elem_id="step_range",
    )
    c["preset"] = gr.Radio(
        [("custom", "custom"), ("DAAM", "daam"), ("P2P", "p2p")],
        value="custom",
        label="Aggregation preset",
        elem_id="preset",
    )
    c["preset_note"] = gr.Markdown(elem_id="preset_note")
    c["locations"] = gr.CheckboxGroup(
        list(views.LOCATIONS), value=list(views.LOCATIONS), label="Layers", elem_id="locations"
    )
    c["res_pick"] = gr.CheckboxGroup([], label="Resolutions", elem_id="resolutions")
    c["heads"] = gr.CheckboxGroup([], label="Heads (none ticked: mean)", elem_id="heads")
    c["normalize"] = gr.Radio(
        list(views.NORMALIZE), value="minmax", label="Normalisation", elem_id="normalize"
    )
    c["scale"] = gr.Radio(
        list(views.SCALES),
        value="shared",
        label="Colour scale",
        info="shared: one scale for all tokens, tiles comparable",
        elem_id="scale",
    )
    with gr.Row():
        c["threshold"] = gr.Slider(
            0, 1, value=0.0, step=0.05, label="Outline at (0 = off)", elem_id="threshold"
        )
        c["opacity"] = gr.Slider(0, 1, value=0.6, step=0.05, label="Opacity", elem_id="opacity")
    c["ctrl_msg"] = _msg("ctrl_msg")


CONTROL_NAMES = (
    "token_pick",
    "step_range",
    "locations",
    "res_pick",
    "heads",
    "preset",
    "normalize",
    "scale",
    "threshold",
    "opacity",
)
#: outputs of Run and upload, in AppHandlers._loaded's order
LOADED = (
    "image",
    "tokens_view",
    "token_pick",
    "step_range",
    "locations",
    "res_pick",
    "heads",
    "tiles",
    "colorbar",
    "status",
    "run_msg",
    "temb_step",
    "preset_note",
    "preset",
)


def build_attention(ctx: TabContext) -> None:
    """Prompt, examples and vocabulary; Run; per-token heatmaps on one colour scale."""
    c = ctx.c
    with gr.Row():
        with gr.Column(scale=2):
            _prompt_column(ctx)
        with gr.Column(scale=1, min_width=260):
            c["image"] = gr.Image(
                label="Generated image",
                type="pil",
                format="png",
                interactive=False,
                height=256,
                buttons=["download"],
                elem_id="image",
            )
            c["tokens_view"] = gr.HighlightedText(
                label="Tokens",
                color_map={"word": "#fdae6b", "special": "#d9d9d9"},
                elem_id="tokens",
            )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            _control_column(ctx)
        with gr.Column(scale=3):
            c["tiles"] = gr.HTML(
                TILES_EMPTY,
                label="Per-token cross-attention heatmaps (over a grey copy of the image)",
                show_label=True,
                container=True,
                js_on_load=TILES_JS,
                elem_id="heatmaps",
            )
            c["colorbar"] = gr.HTML("", elem_id="colorbar_box")
            with gr.Row():
                c["dl_zip"] = gr.DownloadButton("Heatmaps (PNG zip)", elem_id="dl_heatmaps")
                c["dl_trace"] = gr.DownloadButton("Trace bundle", elem_id="dl_trace")
                c["dl_report"] = gr.DownloadButton("Report (HTML)", elem_id="dl_report")
            c["layer_plot"] = gr.Plot(
                label="Every layer's own map (rows: layers in UNet order, columns: tokens)",
                elem_id="layer_grid",
            )
    ctx.wiring.append(_wire_attention)


def _wire_attention(ctx: TabContext) -> None:
    h, c = ctx.handlers, ctx.c
    controls = [c[k] for k in CONTROL_NAMES]
    loaded = [c[k] for k in LOADED]
    quiet = {"api_visibility": "private", "show_progress": "hidden"}

    def follow_up(ev: Any) -> Any:
        return ev.then(h.layer_grid, controls, [c["layer_plot"], c["ctrl_msg"]], **quiet).then(
            h.downloads, controls, [c["dl_zip"], c["ctrl_msg"]], **quiet
        )

    c["follow_up"] = follow_up
    run_in = [c[k] for k in ("run_model", "prompt", "negative", "seed", "steps", "guidance")]
    run_ev = gr.on(
        [c["run"].click, c["prompt"].submit],
        h.run,
        [*run_in, *controls],
        loaded,
        api_name="run",
        concurrency_id="model",
        concurrency_limit=1,
    )
    follow_up(run_ev).then(h.bundle, None, [c["dl_trace"], c["ctrl_msg"]], **quiet).then(
        h.report, None, [c["dl_report"], c["ctrl_msg"]], **quiet
    )
    run_ev.then(h.temb, c["temb_in"], c["temb_out"], **quiet)
    up_ev = c["upload"].upload(
        h.upload, [c["upload"], *controls], loaded, api_name="upload_trace", concurrency_limit=2
    )
    follow_up(up_ev).then(h.bundle, None, [c["dl_trace"], c["ctrl_msg"]], **quiet).then(
        h.report, None, [c["dl_report"], c["ctrl_msg"]], **quiet
    )
    up_ev.then(h.temb, c["temb_in"], c["temb_out"], **quiet)
    boxes = [c[k] for k in ("prompt", "negative", "seed", "steps", "guidance")]
    up_ev.then(h.trace_inputs, None, boxes, **quiet)
    preset_ev = c["preset"].input(
        h.preset_changed,
        [c["preset"]],
        [c["locations"], c["res_pick"], c["preset_note"], c["ctrl_msg"]],
        **quiet,
    )
    agg_out = [c["tiles"], c["colorbar"], c["ctrl_msg"], c["locations"]]
    triggers = [x.input for x in controls if x not in (c["step_range"], c["preset"])]
    triggers.append(c["step_range"].change)
    follow_up(preset_ev.then(h.heatmaps, controls, agg_out, api_name="preset_heatmaps", **quiet))
    agg = gr.on(
        triggers,
        h.heatmaps,
        controls,
        agg_out,
        api_name="heatmaps",
        trigger_mode="always_last",
        show_progress="minimal",
        concurrency_limit=4,
    )
    follow_up(agg)


# ------------------------------------------------------------------------------ time embedding
def build_temb(ctx: TabContext) -> None:
    """temb ratio per resnet and step, the diagram filled by it, the sinusoidal embedding."""
    c = ctx.c
    gr.Markdown(
        "How big is the projected time embedding next to the feature map it is added to, in "
        "every ResnetBlock2D, along the denoising trajectory? The sinusoidal embedding below "
        "needs no run; the ratios need a run or an uploaded trace."
    )
    with gr.Row():
        c["temb_example"] = gr.Button(
            f"Run the example prompt ({DEFAULT_PROMPT!r})",
            variant="primary",
            elem_id="temb_example",
            scale=2,
        )
        c["temb_msg"] = gr.Markdown("", elem_id="temb_msg", elem_classes=["uv-msg"])
    c["sinus"] = gr.Plot(label="sinusoidal timestep embedding", elem_id="sinusoid")
    with gr.Row():
        c["temb_step"] = gr.Slider(
            0, 24, value=12, step=1, label="Step for the diagram fill", elem_id="temb_step"
        )
        c["temb_detail"] = gr.Radio(
            ["blocks", "layers"], value="blocks", label="Diagram detail", elem_id="temb_detail"
        )
        c["temb_by"] = gr.Radio(
            [("per resnet", "layer"), ("per block", "block")],
            value="layer",
            label="Plots",
            elem_id="temb_by",
        )
    c["temb_svg"] = diagram_panel("temb_diagram")
    with gr.Row():
        c["temb_heat"] = gr.Plot(label="temb ratio heatmap", elem_id="temb_heat")
        c["temb_lines"] = gr.Plot(label="temb ratio lines", elem_id="temb_lines")
    c["temb_in"] = [c["temb_step"], c["temb_detail"], c["temb_by"]]
    c["temb_out"] = [c["temb_heat"], c["temb_lines"], c["sinus"], c["temb_svg"], c["temb_msg"]]
    ctx.wiring.append(_wire_temb)


def _wire_temb(ctx: TabContext) -> None:
    h, c = ctx.handlers, ctx.c
    quiet = {"api_visibility": "private", "show_progress": "hidden"}
    c["temb_by"].input(
        h.temb_plots, [c["temb_by"]], [c["temb_heat"], c["temb_lines"], c["temb_msg"]], **quiet
    )
    gr.on(
        [c["temb_step"].input, c["temb_detail"].input],
        h.temb_diagram,
        [c["temb_step"], c["temb_detail"]],
        [c["temb_svg"], c["temb_msg"]],
        api_name="temb_diagram",
        trigger_mode="always_last",
        show_progress="minimal",
    )
    run_in = [c[k] for k in ("run_model", "prompt", "negative", "seed", "steps", "guidance")]
    controls = [c[k] for k in CONTROL_NAMES]
    example = (
        c["temb_example"]
        .click(lambda: DEFAULT_PROMPT, None, c["prompt"], **quiet)
        .then(
            h.run,
            [*run_in, *controls],
            [c[k] for k in LOADED],
            concurrency_id="model",
            concurrency_limit=1,
            **quiet,
        )
    )
    example.then(h.temb, c["temb_in"], c["temb_out"], **quiet)
    c["follow_up"](example).then(h.bundle, None, [c["dl_trace"], c["ctrl_msg"]], **quiet)


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
    ("Architecture", build_architecture),
    ("Attention", build_attention),
    ("Time embedding", build_temb),
    ("Experiments", build_experiments),
    ("Dataset", build_dataset),
]


def build_blocks(
    registry: ModelRegistry,
    workdir: Path | None = None,
    sessions: SessionStore | None = None,
) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (serve it with :func:`unetviz.app.serve`)."""
    gr.set_static_paths([STATIC])
    ctx = TabContext(AppHandlers(registry, workdir, sessions), registry)
    with gr.Blocks(title="unetviz", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# unetviz\nSee inside the Stable Diffusion UNet: its architecture, where each "
            "prompt token attends, and how strongly the timestep speaks in every ResnetBlock2D."
        )
        with gr.Tabs(elem_id="tabs"):
            for i, (title, build) in enumerate(TABS):
                with gr.Tab(title, id=f"tab{i}", elem_id=f"tab-{i}"):
                    build(ctx)
        for wire in ctx.wiring:
            wire(ctx)
        c = ctx.c
        if c["first_drawing"]:  # drawn already: the load event fetches only the Trace
            fn, outs = ctx.handlers.arch_state, [c["arch_state"], c["arch_out"][-1]]
        else:
            fn, outs = ctx.handlers.architecture, c["arch_out"]
        shown = "hidden" if c["first_drawing"] else "full"
        demo.load(
            fn,
            c["arch_in"],
            outs,
            api_visibility="private",
            concurrency_id="arch",
            show_progress=shown,
        ).then(*c["arch_exports"], api_visibility="private", show_progress="hidden")
        demo.load(ctx.handlers.temb_intro, None, c["sinus"], api_visibility="private")

        def forget(request: gr.Request) -> None:
            ctx.handlers.forget(request)

        demo.unload(forget)
    demo.unetviz_handlers = ctx.handlers  # type: ignore[attr-defined]
    return demo

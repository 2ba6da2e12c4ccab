"""The Architecture tab: a model (demo, a preset, a folder in the model roots), its size and
detail -> a pan/zoom diagram, its downloads, the block table, a search and one block's parts.

Every drawing replaces everything that described the previous one (table, picked block, its
parts, the search box), so nothing of another model stays on the page.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

import gradio as gr

from . import views
from .common import (
    QUIET,
    HandlerBase,
    InputError,
    TabContext,
    demo_side,
    diagram_panel,
    handler,
    lora_controls,
    parse_int,
    text_md,
)
from .common import message_slot as _msg
from .i18n import L, bilingual, choices
from .registry import DEMO, PRESETS, LoraChange, architecture_state, describe_roots, size_multiple

MODEL_CHOICES = [
    (L("demo model (shipped, runs offline)"), DEMO),
    (L("SD 1.5 preset (meta: shapes only)"), "sd15"),
    (L("SD 2.1 preset (meta)"), "sd21"),
    (L("SDXL preset (meta)"), "sdxl"),
    (L("local folder (inside the model roots)"), "folder"),
]
#: what a drawing reads (the LoRA last: the routes' older positional inputs keep their places)
ARCH_IN = (
    "arch_model",
    "arch_folder",
    "arch_h",
    "arch_w",
    "arch_batch",
    "arch_detail",
    "arch_lora",
    "arch_lora_scale",
)
ARCH_LORA_INFO = "a LoRA file in the model roots: the U filled by what it changes"
#: the LoRA ranking table's columns
LORA_HEADERS = ["block", "sum ‖ΔW‖/‖W‖", "modules"]
#: what a drawing replaces: the diagram, its table and status, and everything that described
#: the previous drawing (picked block, its parts, the search)
DRAWN = (
    "diagram",
    "block_table",
    "arch_status",
    "arch_state",
    "block_parts",
    "block_picked",
    "block_search",
    "search_msg",
    "lora_table",
)


def _status(
    label: str, h: int, w: int, b: int, detail: str, rows: int, params: int, t0: float
) -> str:
    """The Architecture tab's status line under the controls."""
    return (
        f"**{label}** · {w}×{h} px · UNet batch {b} · {detail} detail · {rows} rows · "
        f"{params / 1e6:,.1f} M parameters · {(time.perf_counter() - t0) * 1000:.0f} ms"
    )


class ArchitectureHandlers(HandlerBase):
    """The Architecture tab's handlers; drawn diagrams are cached across sessions."""

    #: drawn diagrams (panel HTML and table rows) and their export files kept for reuse
    MAX_DRAWN = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drawn: OrderedDict[tuple, tuple[Any, str, list[list[Any]]]] = OrderedDict()
        self._exported: OrderedDict[tuple, dict] = OrderedDict()
        self._drawn_lock = threading.Lock()

    @handler(*DRAWN, "arch_h", "arch_w", "arch_folder", msg="arch_msg")
    def choose_model(self, form: dict[str, Any]) -> dict[str, Any]:
        """A model choice -> its native height and width, the folder box's visibility and its
        diagram, in one round trip."""
        model, folder = form.get("arch_model") or DEMO, form.get("arch_folder") or ""
        show = gr.update(visible=model == "folder")
        if model == "folder" and not folder.strip():
            return {
                "arch_folder": show,
                "arch_msg": "type a folder inside the model roots, then Draw",
            }
        spec = self.registry.spec(model, folder)
        size, step = spec.default_size, size_multiple(spec)
        lora, note = self.registry.lora_change(
            spec, form.get("arch_lora"), form.get("arch_lora_scale")
        )
        drawn = self._draw(
            spec, size, size, form.get("arch_batch", 2), form.get("arch_detail"), lora
        )
        # two updates, not one object twice: gradio consumes an update as it applies it
        return drawn | {
            "arch_h": gr.update(value=size, step=step),
            "arch_w": gr.update(value=size, step=step),
            "arch_folder": show,
            "arch_msg": note,
        }

    @handler(*DRAWN, msg="arch_msg")
    def architecture(self, form: dict[str, Any]) -> dict[str, Any]:
        """The drawing of the chosen model at the typed size and detail (the downloads follow
        in :meth:`exports`, after the diagram is on screen)."""
        spec = self.registry.spec(form.get("arch_model") or DEMO, form.get("arch_folder") or "")
        lora, note = self.registry.lora_change(
            spec, form.get("arch_lora"), form.get("arch_lora_scale")
        )
        drawn = self._draw(
            spec,
            form.get("arch_h"),
            form.get("arch_w"),
            form.get("arch_batch", 2),
            form.get("arch_detail"),
            lora,
        )
        self.page_seen.set()  # the load event's handler when the page has no first drawing
        return drawn | {"arch_msg": note}

    def _draw(
        self,
        spec: Any,
        height: Any,
        width: Any,
        batch: Any,
        detail: Any,
        lora: LoraChange | None = None,
    ) -> dict:
        """Everything :data:`DRAWN` names for ``spec`` at that size and detail (filled by
        ``lora``'s change per block when given); the panel and rows come from :attr:`_drawn`
        when this exact diagram was drawn before."""
        detail = detail or "blocks"
        if detail not in views.DETAILS:
            raise InputError(f"detail={detail!r}: expected one of {list(views.DETAILS)}")
        t0 = time.perf_counter()
        h = parse_int(height, "height", 8, 4096)
        w = parse_int(width, "width", 8, 4096)
        b = parse_int(batch, "batch", 1, 64)
        key = (spec.key, json.dumps(spec.config, sort_keys=True), h, w, b, detail)
        key += (lora.key,) if lora else ()
        trace = self.registry.architecture(spec, h, w, b)
        fill = views.lora_fill(trace, lora.modules) if lora else None
        with self._drawn_lock:
            hit = self._drawn.get(key)
            if hit is not None:
                self._drawn.move_to_end(key)
        if hit is None or hit[0] is not trace:
            hit = (trace, *views.drawing(trace, detail, fill))
            with self._drawn_lock:
                self._drawn[key] = hit
                while len(self._drawn) > self.MAX_DRAWN:
                    self._drawn.popitem(last=False)
        _, panel, rows = hit
        total = sum(r.params for r in trace.blocks if r.level == "block")
        stem = f"{views.slug(spec.label)}-{w}x{h}-{detail}" + ("-lora" if lora else "")
        status = _status(spec.label, h, w, b, detail, len(rows), total, t0)
        if lora:
            status += f" · filled by what LoRA {text_md(lora.names)} changes (‖ΔW‖/‖W‖)"
        return {
            "diagram": panel,
            "block_table": rows,
            "arch_status": status,
            "arch_state": {
                "trace": trace,
                "rows": rows,
                "detail": detail,
                "stem": stem,
                "key": key,
                "fill": fill,
            },  # fmt: skip
            "block_parts": [],
            "block_picked": "",
            "block_search": "",
            "search_msg": "",
            "lora_table": views.lora_rows(lora.table) if lora else [],
        }

    def first_drawing(self) -> tuple[str, list[list[Any]], str] | None:
        """The demo model's blocks diagram, table and status at its native size, drawn from
        its cached structure with no torch import: the first page shows them at once (the
        Architecture tab's initial values); None when the demo cannot be read (the page's
        load event then draws and says why)."""
        from .common import log

        try:
            t0 = time.perf_counter()
            spec = self.registry.spec(DEMO)
            side = spec.default_size
            state = architecture_state(spec, side, side, 2)
            panel, rows = views.drawing(state, "blocks")
        except Exception:  # shown by the load event's message instead
            log.warning("first drawing of the demo model failed", exc_info=True)
            return None
        total = sum(b["params"] for b in state["blocks"] if b.get("level") == "block")
        return panel, rows, _status(spec.label, side, side, 2, "blocks", len(rows), total, t0)

    @handler("arch_state", msg="arch_msg")
    def arch_state(self, form: dict[str, Any]) -> dict[str, Any]:
        """Only the arch state (the Trace behind search, row selection and downloads) of the
        diagram already on the page (:meth:`first_drawing`): nothing is re-sent."""
        spec = self.registry.spec(form.get("arch_model") or DEMO, form.get("arch_folder") or "")
        state = self._draw(
            spec,
            form.get("arch_h"),
            form.get("arch_w"),
            form.get("arch_batch", 2),
            form.get("arch_detail"),
        )["arch_state"]
        self.page_seen.set()  # the page's load event: the first page is drawn
        return {"arch_state": state, "arch_msg": ""}

    def prerender(self, models: tuple[str, ...] = (DEMO, *PRESETS), detail: str = "blocks") -> int:
        """Draw ``models`` at their native size into the diagram cache (start-up, in the
        background: a later choice of one of them is one cached round trip). Returns how many
        were drawn; a model that fails is logged and skipped."""
        from .common import log

        done = 0
        for model in models:
            try:
                spec = self.registry.spec(model)
                self._draw(spec, spec.default_size, spec.default_size, 2, detail)
                done += 1
            except Exception:  # a broken demo folder: the Architecture tab says so on use
                log.warning("prerender %s failed", model, exc_info=True)
        return done

    @handler("dl_svg", "dl_png", "dl_dot", "dl_json", msg="arch_msg")
    def exports(self, form: dict[str, Any]) -> dict[str, Any]:
        """SVG / PNG / DOT / JSON of the drawn diagram (full labels) for the download buttons."""
        from unetviz.render.diagram import diagram

        arch = form.get("arch_state")
        if not arch:
            return {}
        key = (arch.get("key"), arch["stem"])
        with self._drawn_lock:
            files = self._exported.get(key)
        if files is None or not all(p.is_file() for p in files.values()):
            trace, detail = arch["trace"], arch["detail"]
            graph = diagram(trace, detail=detail, **views.lora_fill_args(arch.get("fill")))
            svg = views.render_svg(graph)
            files = views.write_exports(trace, detail, self._outdir(), arch["stem"], graph, svg)
            with self._drawn_lock:
                self._exported[key] = files
                while len(self._exported) > self.MAX_DRAWN:
                    self._exported.popitem(last=False)
        return {f"dl_{k}": str(files[k]) for k in ("svg", "png", "dot", "json")}

    @handler("block_table", "search_msg", msg="search_msg")
    def search(self, form: dict[str, Any]) -> dict[str, Any]:
        """Block table filtered to modules whose diffusers name, LDM key or A1111 label
        contains the query (the page then highlights the best hit in the diagram)."""
        arch, query = form.get("arch_state"), form.get("block_search") or ""
        if not arch:
            return {"search_msg": ""}
        rows = views.search_rows(arch["rows"], query)
        if not rows:
            return {"search_msg": f"no module matches {query.strip()[:60]!r}"}
        n = len(rows)
        note = "" if not query.strip() else ("1 match" if n == 1 else f"{n} matches")
        return {"block_table": rows, "search_msg": note}

    @handler("block_parts", "block_picked", msg="arch_msg")
    def select_block(self, form: dict[str, Any], evt: gr.SelectData | None = None) -> dict:
        """A table row (or a diagram node, through the table) -> its parts and its name."""
        arch = form.get("arch_state")
        row = evt.row_value if evt is not None else form.get("row")
        if not arch or not row:
            return {"arch_msg": ""}
        name = str(row[0])
        parts = views.block_parts(arch["trace"], name)
        return {"block_parts": parts, "block_picked": f"**{name}** · {row[1]} · {row[2]}",
                "arch_msg": ""}  # fmt: skip


def _controls(ctx: TabContext) -> None:
    """The first row: model, folder, size, batch, detail, Draw."""
    c = ctx.c
    with gr.Row(equal_height=True):
        c["arch_model"] = gr.Dropdown(
            MODEL_CHOICES, value=DEMO, label=L("Model"), elem_id="arch_model", scale=3
        )
        c["arch_folder"] = gr.Textbox(
            label=L("Local model folder"),
            placeholder=L("a diffusers folder inside the model roots"),
            info=L("allowed roots: {roots}", roots=describe_roots(ctx.registry.roots)),
            visible=False,
            elem_id="arch_folder",
            scale=3,
        )
        side = demo_side(ctx.registry)
        c["arch_h"] = gr.Number(
            side, label=L("height (px)"), precision=0, elem_id="arch_h", min_width=90
        )
        c["arch_w"] = gr.Number(
            side, label=L("width (px)"), precision=0, elem_id="arch_w", min_width=90
        )
        c["arch_batch"] = gr.Number(
            2, label=L("UNet batch (2 = CFG)"), precision=0, elem_id="arch_batch", min_width=90
        )
        c["arch_detail"] = gr.Radio(
            choices(*views.DETAILS),
            value="blocks",
            label=L("Detail"),
            elem_id="arch_detail",
            scale=3,
        )
        c["arch_draw"] = gr.Button(L("Draw"), variant="primary", elem_id="arch_draw", scale=1)
    with gr.Row(equal_height=True):  # a LoRA: the U filled by what it changes
        lora_controls(ctx, "arch_lora", "arch_lora_scale", ARCH_LORA_INFO)


def build(ctx: TabContext) -> None:
    """Model, size, detail -> a pan/zoom diagram, its downloads and the block table."""
    h, c = ctx.handlers, ctx.c
    c["arch_state"] = gr.State(None, time_to_live=h.sessions.ttl_s)
    _controls(ctx)
    # the demo's diagram is on the first page (drawn from its cached structure, no torch)
    first = c["first_drawing"] = h.first_drawing()
    panel0, rows0, status0 = first or (None, None, "")
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            c["arch_msg"] = _msg("arch_msg")
            c["arch_status"] = gr.Markdown(bilingual(status0), elem_id="arch_status")
            gr.Markdown(
                L(
                    "Wheel: zoom · drag: pan · **Fit**: the whole diagram · click a block: its "
                    "row and parts below"
                )
            )
        for k in ("svg", "png", "dot", "json"):
            c[f"dl_{k}"] = gr.DownloadButton(
                k.upper(), size="sm", min_width=60, elem_id=f"dl_{k}", scale=0
            )
    c["diagram"] = diagram_panel("diagram", panel0)
    _lora_table(ctx)
    with gr.Row():
        c["block_search"] = gr.Textbox(
            label=L("Find a module"),
            placeholder=L("diffusers name, LDM key or A1111 label (e.g. IN04, input_blocks.4)"),
            elem_id="block_search",
            scale=3,
        )
        c["search_msg"] = gr.Markdown(elem_id="search_msg")
    c["block_table"] = gr.Dataframe(
        rows0,
        headers=views.TABLE_HEADERS,
        type="array",
        interactive=False,
        wrap=True,
        max_height=420,
        label=L("Blocks (click a row: its node is highlighted in the diagram, its parts below)"),
        elem_id="block_table",
    )
    c["block_picked"] = gr.Markdown(elem_id="block_picked")
    c["block_parts"] = gr.Dataframe(
        headers=views.PARTS_HEADERS,
        type="array",
        interactive=False,
        wrap=True,
        column_widths=["18%", "14%", "30%", "30%", "8%"],
        label=L("Parts and shapes (click a block above)"),
        elem_id="block_parts",
    )
    _wire(ctx)


def _lora_table(ctx: TabContext) -> None:
    """The ranking per block of what the chosen LoRA changes (below the diagram it fills)."""
    ctx.c["lora_table"] = gr.Dataframe(
        headers=LORA_HEADERS,
        type="array",
        interactive=False,
        max_height=300,
        label=L("What the LoRA changes, per block (largest first)"),
        elem_id="lora_table",
    )


def _wire(ctx: TabContext) -> None:
    """The tab's events: draw, exports, model choice, search, a row picked."""
    h, c = ctx.handlers, ctx.c
    draw_kw = {"concurrency_id": "arch", "concurrency_limit": 2}
    drawn = ctx.on(
        [
            c["arch_draw"].click,
            c["arch_detail"].input,
            c["arch_folder"].submit,
            c["arch_lora"].input,
            c["arch_lora_scale"].release,
        ],  # fmt: skip
        h.architecture,
        ARCH_IN,
        api_name="architecture",
        **draw_kw,
    )
    ctx.on(drawn, h.exports, ["arch_state"], api_name="exports", show_progress="hidden")
    # a model choice sets its native size and draws at once: one round trip, not two
    # (``change``: the dropdown sends ``input`` twice per choice, which drew twice)
    chosen = ctx.on(
        c["arch_model"].change,
        h.choose_model,
        ARCH_IN,
        api_name="choose_model",
        trigger_mode="always_last",
        **draw_kw,
    )
    ctx.on(chosen, h.exports, ["arch_state"], **QUIET)
    searched = ctx.on(
        [c["block_search"].submit, c["block_search"].input],
        h.search,
        ["arch_state", "block_search"],
        api_name="search",
        trigger_mode="always_last",
        show_progress="hidden",
    )
    searched.then(None, [c["block_search"]], None, js="(q) => window.__uvSearchHit(q)")
    ctx.on(c["block_table"].select, h.select_block, ["arch_state"], api_name="select_block")


def wire_load(ctx: TabContext, demo: gr.Blocks) -> None:
    """The page's load event: the arch state of the first drawing (or the drawing itself when
    the demo's structure could not be read at build time), then its downloads."""
    h, c = ctx.handlers, ctx.c
    fn = h.arch_state if c["first_drawing"] else h.architecture
    shown = "hidden" if c["first_drawing"] else "full"
    loaded = ctx.on(demo.load, fn, ARCH_IN, concurrency_id="arch", show_progress=shown)
    ctx.on(loaded, h.exports, ["arch_state"], **QUIET)

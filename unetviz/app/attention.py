"""The Attention tab: prompt, examples and vocabulary; Run (per-step progress with an estimate
of the time left, and a Cancel that stops at the next step); or an uploaded trace bundle;
per-token heatmaps on one colour scale, re-aggregated from the session's cached Trace.

Run, Upload and every example's Run end in the same post-load step (``AppHandlers.post_load``):
the layer grid, the downloads, the report and the Time-embedding tab all follow what the
Attention tab shows.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from unetviz.callargs import (
    APP_MAX_GUIDANCE,
    APP_MAX_STEPS,
    MAX_SEED,
    check_guidance,
    check_seed,
    check_steps,
)

from . import views
from .common import (
    QUIET,
    TEMB_IN,
    HandlerBase,
    InputError,
    TabContext,
    handler,
    log,
    lora_controls,
    session_key,
    static_text,
    text_md,
)
from .common import message_slot as _msg
from .i18n import L
from .registry import DEMO
from .sessions import Session

#: the page's Guidance slider, whose values gradio checks (Run and its route accept up to
#: ``callargs.APP_MAX_GUIDANCE``)
GUIDANCE_SLIDER = (1.0, 15.0)
MAX_PROMPT_BOX = 2000  # an uploaded trace's prompt put back in the box
#: the Attention tab's first prompt: drawn right by the demo model at seed 0
DEFAULT_PROMPT = "a red circle and a blue square"
TILES_EMPTY = '<p class="uv-tiles-empty">The heatmaps appear here after a Run.</p>'

#: what a Run reads besides the controls
RUN_IN = ("run_model", "prompt", "negative", "seed", "steps", "guidance")
#: the LoRA a Run fuses for its length (after the controls: the /run route's older
#: positional inputs keep their places)
LORA_IN = ("lora_pick", "lora_scale")
LORA_INFO = "a LoRA file in the model roots, fused for this run only"
#: the heatmap controls, in :meth:`AttentionHandlers.controls`' order
CONTROLS = (
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
#: what a Run or an upload shows
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
    "temb_step",
    "preset_note",
    "preset",
)
#: the boxes an uploaded trace fills with its own values (Run then draws it again)
RUN_BOXES = ("prompt", "negative", "seed", "steps", "guidance")

#: the preset's note when a trace without DAAM sums is loaded while DAAM is chosen
NO_DAAM_NOTE = (
    "**This trace has no DAAM per-head sums**, so the DAAM preset cannot draw it: showing "
    "**custom** (every layer, every step) instead. For DAAM, capture with `daam=True` "
    "(`unetviz.capture(..., daam=True)` or `pipe(prompt, daam=True)`), or press Run here: a "
    "Run always keeps them."
)


class Cancelled(InputError):
    """The user pressed Cancel: the run stopped at its next step; the page keeps what it
    showed."""


def step_window(value: Any) -> tuple[int, int]:
    """The step range control's value ``{"lo", "hi", "max"}`` -> (from, to)."""
    if isinstance(value, dict):
        lo, hi = int(value.get("lo", 0)), int(value.get("hi", -1))
    elif isinstance(value, (list, tuple)) and len(value) >= 2:
        lo, hi = int(value[0]), int(value[1])
    else:
        lo, hi = 0, -1
    return (min(lo, hi), max(lo, hi)) if hi >= 0 else (lo, hi)


def eta_text(done: int, total: int, elapsed: float) -> str:
    """ "about N s left" from the mean time per finished step ("" before the first)."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed / done * (total - done)
    if left >= 90:
        return f" · about {left / 60:.0f} min left"
    return f" · about {left:.0f} s left"


def controls(form: dict[str, Any]) -> views.HeatmapControls:
    """The named heatmap controls of ``form`` -> HeatmapControls (missing ones: defaults)."""
    lo, hi = step_window(form.get("step_range"))
    opacity = form.get("opacity")
    return views.HeatmapControls(
        tokens=tuple(int(t) for t in form.get("token_pick") or ()),
        step_from=lo,
        step_to=hi,
        locations=tuple(form.get("locations") or ()),
        resolutions=tuple(int(r) for r in form.get("res_pick") or ()),
        heads=tuple(int(h) for h in form.get("heads") or ()),
        preset=form.get("preset") or "custom",
        normalize=form.get("normalize") or "minmax",
        scale=form.get("scale") or "shared",
        threshold=float(form.get("threshold") or 0.0),
        opacity=float(0.6 if opacity is None else opacity),
    )


def _forget_upload(path: Path) -> None:
    """Delete gradio's copy of an upload once it is loaded (gradio would keep it in its temp
    folder for hours): the file and the folder gradio made for it, when that is empty. Only
    inside gradio's upload folder: a path handed to the handler from Python is the caller's."""
    from gradio.utils import get_upload_folder

    try:
        root = Path(get_upload_folder()).resolve()
        if root == path.resolve().parent or root not in path.resolve().parents:
            return
        path.unlink(missing_ok=True)
        path.parent.rmdir()  # only when empty
    except OSError:
        pass


class AttentionHandlers(HandlerBase):
    """The Attention tab's handlers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: session key -> the Cancel flag of its run in progress
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()

    def _loaded(self, session: Session, c: views.HeatmapControls, note: str) -> dict[str, Any]:
        """What Run and upload show (:data:`LOADED`). A trace without DAAM sums loaded while
        DAAM is chosen is drawn with the custom preset, and the preset's note and the status
        say so (the preset control moves)."""
        tr = session.trace
        n = session.steps
        words = views.default_tokens(tr)
        total = len(views.word_tokens(tr))
        if total > len(words):
            note += (
                f" · heatmaps of the first {len(words)} of {total} word tokens: tick others in "
                "**Tokens to map**"
            )
        preset, out = c.preset, {}
        if preset == "daam" and views.daam_missing(session):
            preset = out["preset"] = "custom"
            note += " · no DAAM per-head sums in this trace"
        locs, res, pnote = views.preset_selection(tr, preset)
        if preset != c.preset:
            pnote = NO_DAAM_NOTE
        c = views.HeatmapControls(
            tokens=tuple(words),
            step_to=n - 1,
            locations=tuple(locs),
            preset=preset,
            normalize=c.normalize,
            scale=c.scale,
            threshold=c.threshold,
            opacity=c.opacity,
        )
        tiles, lo, hi = views.heatmap_tiles(session, c)
        nh = views.head_count(tr)
        custom = c.preset == "custom"
        return out | {
            "image": views.display_image(session.image),
            "tokens_view": views.highlighted_tokens(tr),
            "token_pick": gr.update(choices=views.token_choices(tr), value=words),
            "step_range": {"lo": 0, "hi": n - 1, "max": n - 1},
            "locations": gr.update(value=locs, interactive=custom),
            "res_pick": gr.update(
                choices=[(f"{r}×{r}", r) for r in views.resolutions(tr)],
                value=res,
                interactive=custom,
            ),
            "heads": gr.update(
                choices=[(f"head {i}", i) for i in range(nh)],
                value=[],
                interactive=nh > 0,
                info=None if nh else "this trace kept the mean over heads",
            ),
            "tiles": views.tiles_html(tiles),
            "colorbar": views.colorbar_html(lo, hi, c),
            "status": note,
            "run_msg": "",
            "temb_step": gr.update(maximum=max(n - 1, 1), value=min(n - 1, n // 2)),
            "preset_note": pnote,
        }

    @handler(*LOADED, msg="run_msg")
    def run(
        self, form: dict[str, Any], request: gr.Request = None, progress: Any = None
    ) -> dict[str, Any]:
        """Generate with capture (under the model lock); keep the trace for this session.
        Cancel (:meth:`cancel`) stops it at its next step and keeps what the page shows."""
        prompt = (form.get("prompt") or "").strip()
        if not prompt:
            raise InputError("the prompt is empty: type what to draw, e.g. 'a red circle'")
        n = check_steps(form.get("steps", 25), APP_MAX_STEPS, error=InputError)
        g = check_guidance(form.get("guidance", 4.0), 1.0, APP_MAX_GUIDANCE, error=InputError)
        s = check_seed(form.get("seed", 0), error=InputError)
        c = controls(form)
        model = (form.get("run_model") or DEMO).strip() or DEMO
        loras = self.registry.loras(form.get("lora_pick"), form.get("lora_scale"))
        if progress is None:  # (not `or`: a gr.Progress is falsy until it tracks something)
            progress = lambda *a, **k: None  # noqa: E731
        key = session_key(request)
        stop = threading.Event()
        with self._running_lock:
            self._running[key] = stop
        try:
            progress(0, desc="loading the model…")
            pipe = self.registry.pipeline(model)
            # DAAM's per-head sums for every model, so the DAAM preset works before or after
            # Run (SD 1.5: +63 MiB a run; the session store's byte budget bounds the total);
            # the demo's tiny maps are also kept per head for the heads control; the feature
            # pictures of every block and layer for the Walkthrough tab (8 bytes/pixel/step)
            extra = {
                "daam": True,
                "per_head": getattr(pipe, "name", "") == DEMO,
                "features": "layers",
            }
            t0 = time.perf_counter()

            def on_step(i: int, total: int) -> None:
                if stop.is_set():
                    raise Cancelled(
                        f"cancelled after step {i} of {total}: the page keeps what it showed"
                    )
                eta = eta_text(i, total, time.perf_counter() - t0)
                progress((i, total), desc=f"denoising step {i}/{total}{eta}", unit="steps")

            result = self.registry.generate(
                model,
                prompt=prompt,
                negative_prompt=form.get("negative") or "",
                seed=s,
                steps=n,
                guidance=g,
                progress=on_step,
                loras=loras,
                **extra,
            )
        finally:
            with self._running_lock:
                if self._running.get(key) is stop:
                    del self._running[key]
        session = Session(trace=result.trace, image=result.image, label=prompt)
        out = self._loaded(session, c, "")
        self.sessions.put(key, session)
        took = time.perf_counter() - t0
        out["status"] = run_status(prompt, s, n, g, loras, took) + out["status"]
        return out

    @handler("run_msg", msg="run_msg")
    def cancel(self, form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        """Ask this session's run to stop at its next step (its message then says so)."""
        with self._running_lock:
            stop = self._running.get(session_key(request))
        if stop is None:
            return {"run_msg": "nothing is running"}
        stop.set()
        return {"run_msg": "cancelling at the next step…"}

    @handler(*LOADED, *RUN_BOXES, msg="run_msg")
    def upload(self, form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        """Load a trace bundle (explored without any model); the prompt, seed, steps and
        guidance boxes take the trace's own values (Run then draws that image again)."""
        file = form.get("upload")
        if file is None:
            raise InputError("no file: upload a trace bundle (.zip written by unetviz)")
        path = Path(file if isinstance(file, str | os.PathLike) else getattr(file, "name", file))
        self.registry.apply_thread_policy()  # no-op once applied
        try:
            session = views.load_bundle(path, max_bytes=self.sessions.max_bytes)
        finally:
            _forget_upload(path)
        m = session.trace.meta
        note = (
            f"Showing trace **{text_md(path.name)}** · prompt “{text_md(m.get('prompt', '?'))}” "
            f"· {session.trace.steps} steps · model {text_md(m.get('model', '?'))}"
            + ("" if session.image is not None else " · no image in the bundle (grey background)")
        )
        out = self._loaded(session, controls(form), note)
        self.sessions.put(session_key(request), session)
        return out | trace_inputs(m)

    @handler("tiles", "colorbar", "locations", msg="ctrl_msg")
    def heatmaps(self, form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        """Re-aggregate from the cached trace (no model run): tiles (one HTML block of inline
        images), colour bar and the layer boxes (re-ticked when all were unticked). DAAM chosen
        for a trace without its sums: the heatmap area says why, in place of tiles."""
        session = self._need(request)
        c = controls(form)
        out: dict[str, Any] = {"ctrl_msg": ""}
        if not c.locations:
            c = views.HeatmapControls(**{**c.__dict__, "locations": views.LOCATIONS})
            out = {"locations": list(views.LOCATIONS),
                   "ctrl_msg": "at least one layer location stays ticked"}  # fmt: skip
        self.registry.apply_thread_policy()  # no-op once applied
        try:
            tiles, lo, hi = views.heatmap_tiles(session, c)
        except views.NoDaamError as exc:
            log.info("heatmaps: %s", exc)
            return out | {"tiles": views.no_daam_html(str(exc)), "colorbar": ""}
        return out | {"tiles": views.tiles_html(tiles), "colorbar": views.colorbar_html(lo, hi, c)}

    @handler("locations", "res_pick", "preset_note", msg="ctrl_msg")
    def preset_changed(self, form: dict[str, Any], request: gr.Request = None) -> dict:
        """An aggregation preset fixes the layers and resolutions: the boxes show its choice."""
        session = self.session(request)
        preset = form.get("preset") or "custom"
        custom = preset == "custom"
        if session is None:
            return {"locations": gr.update(interactive=custom),
                    "res_pick": gr.update(interactive=custom), "ctrl_msg": ""}  # fmt: skip
        locs, res, note = views.preset_selection(session.trace, preset)
        if preset == "daam" and views.daam_missing(session):
            note = "DAAM needs per-head sums this trace does not hold (see the heatmap area)"
        return {
            "locations": gr.update(value=locs, interactive=custom),
            "res_pick": gr.update(value=res, interactive=custom),
            "preset_note": note,
            "ctrl_msg": "",
        }

    def _zip(self, session: Session, c: views.HeatmapControls) -> dict[str, Any]:
        """The heatmaps zip for its button, unless the one there is already for ``c``."""
        if session.shown.get("zip") == c:
            return {}  # the file on the button is already this one
        stem = views.slug(session.label, "trace")
        try:
            path = views.heatmaps_zip(session, c, self._outdir() / f"{stem}-heatmaps.zip")
        except views.NoDaamError:  # the heatmap area says why; no stale zip on the button
            session.shown.pop("zip", None)
            return {"dl_zip": None}
        session.shown["zip"] = c
        return {"dl_zip": str(path)}

    def _grid(self, session: Session, c: views.HeatmapControls) -> dict[str, Any]:
        """The layers x tokens mosaic, unless what it reads (tokens, step window, scale) is
        what the one on the page was made from."""
        key = (c.tokens, c.step_from, c.step_to, c.scale)
        if session.shown.get("grid") == key:
            return {}
        figure = views.layer_figure(session.trace, c)
        session.shown["grid"] = key
        return {"layer_plot": figure}

    @handler("layer_plot", "dl_zip", msg="ctrl_msg")
    def follow_controls(self, form: dict[str, Any], request: gr.Request = None) -> dict:
        """After a control change: the layer grid and the zip, each remade only when what it
        reads changed (normalisation, threshold and opacity do not touch the grid)."""
        session = self.session(request)
        if session is None:
            return {"ctrl_msg": ""}
        c = controls(form)
        return self._grid(session, c) | self._zip(session, c) | {"ctrl_msg": ""}


def run_status(prompt: str, seed: int, steps: int, g: float, loras: list, took: float) -> str:
    """The status line of a Run: what it drew, with which settings and LoRAs, how fast (its
    " · "-joined parts are translated one by one: ``unetviz.app.i18n.translate``)."""
    lora = " · ".join(f"LoRA {text_md(p.name)} ×{w:g}" for p, w in loras)
    return (
        f"Showing **{text_md(prompt)}** · seed {seed} · {steps} steps · guidance {g:g} · {lora} "
        f"· generated and captured in {took:.1f} s"
        if loras
        else f"Showing **{text_md(prompt)}** · seed {seed} · {steps} steps · guidance {g:g} · "
        f"generated and captured in {took:.1f} s"
    )


def trace_inputs(meta: dict[str, Any]) -> dict[str, Any]:
    """The prompt, negative prompt, seed, steps and guidance boxes' values from an uploaded
    trace's meta; a value missing or out of the boxes' range leaves its box as it was."""
    out: dict[str, Any] = {}
    for key, box in (("prompt", "prompt"), ("negative_prompt", "negative")):
        value = meta.get(key)
        if isinstance(value, str):
            out[box] = value[:MAX_PROMPT_BOX]

    def number(key: str, lo: float, hi: float) -> Any:
        value = meta.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return value if ok and lo <= value <= hi else None  # NaN fails too

    for key, lo, hi in (
        ("seed", 0, MAX_SEED),
        ("steps", 1, APP_MAX_STEPS),
        ("guidance", *GUIDANCE_SLIDER),  # beyond it the slider refuses the next Run
    ):
        value = number(key, lo, hi)
        if value is not None:
            out[key] = str(value) if key == "seed" else value
    return out


# ---------------------------------------------------------------------------------- layout
def _prompt_column(ctx: TabContext) -> None:
    c = ctx.c
    c["prompt"] = gr.Textbox(DEFAULT_PROMPT, label=L("Prompt"), lines=1, elem_id="prompt")
    words = ctx.registry.demo_words()
    with gr.Row(elem_id="examples"):
        for i, ex in enumerate(views.demo_examples(words)):
            b = gr.Button(ex, size="sm", elem_id=f"example_{i}", elem_classes=["uv-example"])
            b.click(None, None, c["prompt"], js=f"() => {json.dumps(ex)}")
    from .common import demo_side

    gr.Markdown(
        (f"**Demo vocabulary** ({len(words)} words): " + " · ".join(f"`{w}`" for w in words))
        + f"\n\n{views.demo_limits(words, demo_side(ctx.registry))}",
        elem_id="demo_help",
    )
    with gr.Row():
        c["negative"] = gr.Textbox("", label=L("Negative prompt"), elem_id="negative", scale=2)
        c["seed"] = gr.Textbox(
            "0",
            label=L("Seed"),
            info=L("a whole number 0..{max}", max=MAX_SEED),
            elem_id="seed",
            scale=2,
        )
        c["steps"] = gr.Number(
            25, label=L("Steps"), precision=0, info=f"1..{APP_MAX_STEPS}", elem_id="steps", scale=1
        )
        c["guidance"] = gr.Slider(
            *GUIDANCE_SLIDER,
            value=4.0,
            step=0.5,
            label=L("Guidance"),
            elem_id="guidance",
            min_width=200,  # narrower, its max label "15" was cut to "1"
        )
    with gr.Row(equal_height=True):
        lora_controls(ctx, "lora_pick", "lora_scale", LORA_INFO)
    with gr.Row(equal_height=True):
        c["run_model"] = gr.Textbox(
            DEMO,
            label=L("Model"),
            info=L("'demo' or a diffusers folder inside the model roots"),
            scale=2,
            elem_id="run_model",
        )
        c["run"] = gr.Button(L("Run"), variant="primary", scale=1, elem_id="run")
        c["cancel"] = gr.Button(
            L("Cancel"), variant="stop", scale=0, min_width=90, elem_id="cancel"
        )
        c["run_msg"] = _msg("run_msg")
    c["status"] = gr.Markdown(
        L(
            "Nothing generated yet: press **Run** (or pick an example first), or upload a "
            "trace bundle below."
        ),
        elem_id="status",
    )
    with gr.Accordion(L("Explore a saved trace bundle (no model needed)"), open=False):
        c["upload"] = gr.File(
            label=L(
                "trace bundle (.zip written by unetviz, up to {mb} MB)", mb=views.MAX_UPLOAD_MB
            ),
            file_types=[".zip"],
            type="filepath",
            elem_id="upload",
        )


def _control_column(ctx: TabContext) -> None:
    c = ctx.c
    c["token_pick"] = gr.CheckboxGroup([], label=L("Tokens to map"), elem_id="token_pick")
    c["step_range"] = gr.HTML(
        {"lo": 0, "hi": 24, "max": 24},
        html_template=static_text("range.html").strip(),
        js_on_load=static_text("range.js"),
        elem_id="step_range",
    )
    c["preset"] = gr.Radio(
        [("custom", "custom"), ("DAAM", "daam"), ("P2P", "p2p")],
        value="custom",
        label=L("Aggregation preset"),
        elem_id="preset",
    )
    c["preset_note"] = gr.Markdown(elem_id="preset_note")
    c["locations"] = gr.CheckboxGroup(
        list(views.LOCATIONS), value=list(views.LOCATIONS), label=L("Layers"), elem_id="locations"
    )
    c["res_pick"] = gr.CheckboxGroup([], label=L("Resolutions"), elem_id="resolutions")
    c["heads"] = gr.CheckboxGroup([], label=L("Heads (none ticked: mean)"), elem_id="heads")
    c["normalize"] = gr.Radio(
        list(views.NORMALIZE), value="minmax", label=L("Normalisation"), elem_id="normalize",
        info=L("minmax: each tile stretched to its own 0..1 (shapes, not strengths); "
               "none: raw probabilities, comparable across tiles"),
    )  # fmt: skip
    c["scale"] = gr.Radio(
        list(views.SCALES),
        value="shared",
        label=L("Colour scale"),
        info=L("shared: one colour scale for all tiles"),
        elem_id="scale",
    )
    with gr.Row():
        c["threshold"] = gr.Slider(
            0, 1, value=0.0, step=0.05, label=L("Outline at (0 = off)"), elem_id="threshold"
        )
        c["opacity"] = gr.Slider(0, 1, value=0.6, step=0.05, label=L("Opacity"), elem_id="opacity")
    c["ctrl_msg"] = _msg("ctrl_msg")


def build(ctx: TabContext) -> None:
    """Prompt, examples and vocabulary; Run; per-token heatmaps on one colour scale."""
    c = ctx.c
    with gr.Row():
        with gr.Column(scale=2):
            _prompt_column(ctx)
        with gr.Column(scale=1, min_width=260):
            c["image"] = gr.Image(
                label=L("Generated image"),
                type="pil",
                format="png",
                interactive=False,
                height=256,
                buttons=["download"],
                elem_id="image",
            )
            c["tokens_view"] = gr.HighlightedText(
                label=L("Tokens"),
                color_map={"word": "#fdae6b", "special": "#d9d9d9"},
                show_inline_category=False,  # colour says word / special; chips stay small
                elem_id="tokens",
            )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            _control_column(ctx)
        with gr.Column(scale=3):
            c["tiles"] = gr.HTML(
                TILES_EMPTY,
                label=L("Per-token cross-attention heatmaps (over a grey copy of the image)"),
                show_label=True,
                container=True,
                js_on_load=static_text("tiles.js"),
                elem_id="heatmaps",
            )
            c["colorbar"] = gr.HTML("", elem_id="colorbar_box")
            with gr.Row():
                c["dl_zip"] = gr.DownloadButton(L("Heatmaps (PNG zip)"), elem_id="dl_heatmaps")
                c["dl_trace"] = gr.DownloadButton(L("Trace bundle"), elem_id="dl_trace")
                c["dl_report"] = gr.DownloadButton(L("Report (HTML)"), elem_id="dl_report")
            c["layer_plot"] = gr.Plot(
                label=L("Every layer's own map (rows: layers in UNet order, columns: tokens)"),
                elem_id="layer_grid",
            )
    ctx.wiring.append(wire)


def run_event(ctx: TabContext, trigger: Any, **kwargs: Any) -> Any:
    """A Run of the Attention tab's inputs on ``trigger`` (Run, Enter, an example's Run),
    followed by the one post-load step."""
    h = ctx.handlers
    ev = ctx.on(
        trigger,
        h.run,
        (*RUN_IN, *CONTROLS, *LORA_IN),
        concurrency_id="model",
        concurrency_limit=1,
        **kwargs,
    )
    return after_load(ctx, ev)


def after_load(ctx: TabContext, event: Any) -> Any:
    """The post-load step every Run and upload ends with (``AppHandlers.post_load``)."""
    shown = ctx.on(event, ctx.handlers.post_load, (*CONTROLS, *TEMB_IN), **QUIET)
    return ctx.on(shown, ctx.handlers.post_load_files, (), **QUIET)


def wire(ctx: TabContext) -> None:
    """Run, Cancel, upload and the controls (once every tab exists: a Run fills the
    Time-embedding tab too)."""
    h, c = ctx.handlers, ctx.c
    ctx.c["run_event"] = run_event(ctx, [c["run"].click, c["prompt"].submit], api_name="run")
    # not on the model's queue: it must get through while the run holds it
    ctx.on(c["cancel"].click, h.cancel, (), api_name="cancel", concurrency_id="cancel",
           concurrency_limit=None, show_progress="hidden")  # fmt: skip
    # one upload held at a time: each is capped at the session budget before it is read
    up = ctx.on(c["upload"].upload, h.upload, ("upload", *CONTROLS), api_name="upload_trace",
                concurrency_limit=1)  # fmt: skip
    after_load(ctx, up)
    preset_ev = ctx.on(c["preset"].input, h.preset_changed, ("preset",), **QUIET)
    drawn = ctx.on(preset_ev, h.heatmaps, CONTROLS, api_name="preset_heatmaps", **QUIET)
    ctx.on(drawn, h.follow_controls, CONTROLS, **QUIET)
    # every control's user event (the step range's too: see static/range.js), never a change
    # a Run makes, which would re-aggregate with the previous trace's tokens
    triggers = [c[k].input for k in CONTROLS if k != "preset"]
    agg = ctx.on(
        triggers,
        h.heatmaps,
        CONTROLS,
        api_name="heatmaps",
        trigger_mode="always_last",
        show_progress="minimal",
        concurrency_limit=4,
    )
    ctx.on(agg, h.follow_controls, CONTROLS, **QUIET)

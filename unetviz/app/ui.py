"""The Gradio Blocks: three tabs (Architecture, Attention, Time embedding) wired to
:mod:`unetviz.app.views` and a :class:`~unetviz.app.registry.ModelRegistry`.

Every event that runs a model (generation) shares one queue (``concurrency_id="model"``,
limit 1) and the registry's lock; architecture views build their own meta model per call.
Re-aggregation events read only the session's cached Trace in ``gr.State``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from . import views
from .registry import DEMO, ModelAccessError, ModelRegistry, describe_roots, size_multiple

log = logging.getLogger("unetviz.app")

DEFAULT_PROMPT = "a red circle on the left and a blue square"
MODEL_CHOICES = [
    ("demo model (shipped, runs offline)", DEMO),
    ("SD 1.5 preset (meta: shapes only)", "sd15"),
    ("SD 2.1 preset (meta)", "sd21"),
    ("SDXL preset (meta)", "sdxl"),
    ("local folder (inside the model roots)", "folder"),
]
MAX_STEPS = 100

CSS = """
#heatmaps .caption-label { font-size: 0.95em; }
.unetviz-diagram svg { max-width: none; height: auto; }
.unetviz-diagram a, .unetviz-diagram a:hover { text-decoration: none !important; }
.unetviz-diagram text { text-decoration: none; }
#status p, #arch_status p { margin: 0.2em 0; }
footer { display: none !important; }
"""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from unetviz.capture import TraceError
    from unetviz.config import ConfigError
    from unetviz.pipelines import PipelineError
    from unetviz.weights import WeightsError

    return (
        ModelAccessError,
        TraceError,
        PipelineError,
        ConfigError,
        WeightsError,
        ValueError,
        KeyError,
        OSError,
    )


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into ``gr.Error`` (a red toast; the server stays up); unexpected
    ones are logged and shown as an internal error naming the exception."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except _expected_errors() as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise gr.Error(msg, duration=15) from None
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"internal error in {fn.__name__}: {type(exc).__name__}: {exc}"
            ) from None

    return wrapper


def _int(value: Any, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a whole number") from None
    if f != int(f):
        raise ValueError(f"{name}={value!r}: expected a whole number")
    return int(f)


class AppHandlers:
    """Event handlers: plain methods (tests call them directly), errors as ``gr.Error``."""

    #: download files older than this are removed (gradio keeps its own copies)
    KEEP_S = 2 * 3600

    def __init__(self, registry: ModelRegistry, workdir: Path | None = None) -> None:
        self.registry = registry
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="unetviz-app-"))
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _outdir(self) -> Path:
        """A fresh folder for one response's files; old ones are pruned."""
        now = time.time()
        for old in self.workdir.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > self.KEEP_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        d = self.workdir / uuid.uuid4().hex[:12]
        d.mkdir(parents=True)
        return d

    # ------------------------------------------------------------------ architecture
    @ui_errors
    def arch_defaults(self, model: str, folder: str) -> tuple[Any, Any, Any]:
        """Native size of the chosen model -> height, width, and the folder box visibility."""
        visible = gr.update(visible=model == "folder")
        if model == "folder" and not (folder or "").strip():
            return gr.update(), gr.update(), visible
        spec = self.registry.spec(model, folder)
        size = spec.default_size
        step = size_multiple(spec)
        return gr.update(value=size, step=step), gr.update(value=size, step=step), visible

    @ui_errors
    def architecture(
        self,
        model: str,
        folder: str,
        height: float,
        width: float,
        batch: float,
        detail: str,
        zoom: float,
    ) -> tuple[Any, ...]:
        """Diagram (inline SVG), block table, block picker, 4 downloads, status, arch state."""
        if detail not in views.DETAILS:
            raise ValueError(f"detail={detail!r}: expected one of {list(views.DETAILS)}")
        t0 = time.perf_counter()
        spec = self.registry.spec(model, folder)
        h, w, b = _int(height, "height"), _int(width, "width"), _int(batch, "batch")
        trace = self.registry.architecture(spec, h, w, b)
        from unetviz.render.diagram import diagram

        graph = diagram(trace, detail=detail)
        svg = views.render_svg(graph)
        rows = views.block_table(trace, detail)
        files = views.write_exports(
            trace,
            detail,
            self._outdir(),
            f"{views.slug(spec.label)}-{w}x{h}-{detail}",
            graph=graph,
            svg=svg,
        )
        total = sum(r.params for r in trace.blocks if r.level == "block")
        status = (
            f"**{spec.label}** · {w}×{h} px · UNet batch {b} · {detail} detail · "
            f"{len(rows)} rows · {total / 1e6:,.1f} M parameters · "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        state = {"trace": trace, "svg": svg, "detail": detail}
        names = [r[0] for r in rows]
        return (
            views.inline_svg(svg, zoom),
            rows,
            gr.update(choices=names, value=None),
            *(str(files[k]) for k in ("svg", "png", "dot", "json")),
            status,
            state,
        )

    @ui_errors
    def rezoom(self, arch: dict | None, zoom: float) -> str:
        """Re-wrap the cached SVG at another zoom (no re-render)."""
        if not arch:
            return ""
        return views.inline_svg(arch["svg"], zoom)

    @ui_errors
    def block_parts(self, arch: dict | None, name: str | None) -> list[list[Any]]:
        """Parts of the picked block with their shapes."""
        if not arch or not name:
            return []
        return views.block_parts(arch["trace"], name)

    def pick_row(self, arch: dict | None, evt: gr.SelectData) -> Any:
        """Clicking a table row picks that block."""
        row = evt.row_value if evt is not None else None
        return gr.update(value=row[0]) if row else gr.update()

    # ------------------------------------------------------------------ attention
    @staticmethod
    def controls(
        tokens: list[int] | None,
        step_from: float,
        step_to: float,
        locations: list[str] | None,
        resolutions: list[int] | None,
        heads: list[int] | None,
        preset: str,
        normalize: str,
        threshold: float,
        opacity: float,
    ) -> views.HeatmapControls:
        """UI values -> HeatmapControls (validated where cheap)."""
        return views.HeatmapControls(
            tokens=tuple(int(t) for t in tokens or ()),
            step_from=_int(step_from, "step from"),
            step_to=_int(step_to, "step to"),
            locations=tuple(locations or ()),
            resolutions=tuple(int(r) for r in resolutions or ()),
            heads=tuple(int(h) for h in heads or ()),
            preset=preset or "custom",
            normalize=normalize or "minmax",
            threshold=float(threshold or 0.0),
            opacity=float(0.6 if opacity is None else opacity),
        )

    def _loaded(self, session: views.Session, c: views.HeatmapControls, note: str) -> tuple:
        """Outputs shared by Run and upload: image, tokens, control updates, gallery, status."""
        tr = session.trace
        n = session.steps
        words = views.word_tokens(tr)
        c = views.HeatmapControls(
            tokens=tuple(words),
            step_from=0,
            step_to=n - 1,
            locations=c.locations or views.LOCATIONS,
            resolutions=(),
            heads=(),
            preset=c.preset,
            normalize=c.normalize,
            threshold=c.threshold,
            opacity=c.opacity,
        )
        gallery = views.heatmap_gallery(session, c)
        res = views.resolutions(tr)
        nh = views.head_count(tr)
        last = max(n - 1, 1)
        return (
            views.display_image(session.image),
            views.highlighted_tokens(tr),
            gr.update(choices=views.token_choices(tr), value=words),
            gr.update(maximum=last, value=0),
            gr.update(maximum=last, value=n - 1),
            gr.update(choices=[(f"{r}×{r}", r) for r in res], value=res),
            gr.update(
                choices=[(f"head {i}", i) for i in range(nh)],
                value=[],
                interactive=nh > 0,
                info=None if nh else "this trace kept the mean over heads",
            ),
            gallery,
            note,
            session,
            gr.update(maximum=last, value=min(n - 1, n // 2)),
        )

    @ui_errors
    def run(
        self,
        model: str,
        prompt: str,
        negative: str,
        seed: float,
        steps: float,
        guidance: float,
        *control_values: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple:
        """Generate with capture (under the model lock), cache the trace in the session."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("the prompt is empty: type what to draw, e.g. 'a red circle'")
        n = _int(steps, "steps")
        if not 1 <= n <= MAX_STEPS:
            raise ValueError(f"steps={n}: expected 1..{MAX_STEPS}")
        g = float(guidance)
        if not 1.0 <= g <= 30.0:
            raise ValueError(f"guidance={g}: expected 1..30")
        s = _int(seed, "seed")
        if not 0 <= s < 2**63:
            raise ValueError(f"seed={s}: expected 0..2**63-1")
        c = self.controls(*control_values)
        model = (model or DEMO).strip() or DEMO
        progress(0, desc="loading the model…")
        pipe = self.registry.pipeline(model)
        extra = {"per_head": True} if getattr(pipe, "name", "") == DEMO else {}

        def on_step(i: int, total: int) -> None:
            progress((i, total), desc=f"denoising step {i}/{total}", unit="steps")

        t0 = time.perf_counter()
        result = self.registry.generate(
            model,
            prompt=prompt,
            negative_prompt=negative or "",
            seed=s,
            steps=n,
            guidance=g,
            progress=on_step,
            **extra,
        )
        dt = time.perf_counter() - t0
        session = views.Session(trace=result.trace, image=result.image, label=prompt)
        note = (
            f"**{prompt}** · seed {s} · {n} steps · guidance {g:g} · generated and captured "
            f"in {dt:.1f} s · {len(views.word_tokens(result.trace))} word tokens"
        )
        return self._loaded(session, c, note)

    @ui_errors
    def upload(self, file: Any, *control_values: Any) -> tuple:
        """Load a trace bundle (explored without any model)."""
        if file is None:
            raise ValueError("no file: upload a trace bundle (.zip written by unetviz)")
        path = Path(file if isinstance(file, str) else getattr(file, "name", file))
        self.registry.apply_thread_policy()  # no-op once applied
        session = views.load_bundle(path)
        c = self.controls(*control_values)
        m = session.trace.meta
        note = (
            f"loaded trace **{path.name}** · prompt {m.get('prompt', '?')!r} · "
            f"{session.trace.steps} steps · model {m.get('model', '?')}"
            + ("" if session.image is not None else " · no image in the bundle (grey background)")
        )
        return self._loaded(session, c, note)

    @ui_errors
    def heatmaps(self, session: views.Session | None, *control_values: Any) -> list:
        """Re-aggregate from the cached trace (no model run)."""
        if session is None:
            raise ValueError("nothing to show yet: press Run or upload a trace bundle first")
        self.registry.apply_thread_policy()  # no-op once applied
        return views.heatmap_gallery(session, self.controls(*control_values))

    @ui_errors
    def downloads(self, session: views.Session | None, *control_values: Any) -> tuple[Any, Any]:
        """Heatmaps zip and trace bundle for the download buttons."""
        if session is None:
            return gr.update(value=None), gr.update(value=None)
        out = self._outdir()
        stem = views.slug(session.label, "trace")
        z = views.heatmaps_zip(
            session, self.controls(*control_values), out / f"{stem}-heatmaps.zip"
        )
        t = views.save_bundle(session, out / f"{stem}.trace.zip")
        return str(z), str(t)

    # ------------------------------------------------------------------ time embedding
    @ui_errors
    def temb(
        self,
        session: views.Session | None,
        step: float,
        detail: str,
        zoom: float,
        by: str = "layer",
    ) -> tuple:
        """temb heatmap, lines (per resnet or block), sinusoidal embedding and the diagram
        coloured at ``step``."""
        if session is None:
            raise ValueError("nothing to show yet: press Run or upload a trace bundle first")
        tr = session.trace
        heat, lines = views.temb_figures(tr, by=by or "layer")
        sinus = views.sinusoid_figure(tr)
        svg = views.temb_diagram(tr, _int(step, "step"), detail or "layers", zoom)
        return heat, lines, sinus, svg

    @ui_errors
    def temb_plots(self, session: views.Session | None, by: str) -> tuple:
        """Only the heatmap and lines (grouping changed)."""
        if session is None:
            return None, None
        return views.temb_figures(session.trace, by=by or "layer")

    @ui_errors
    def layer_grid(self, session: views.Session | None, *control_values: Any) -> Any:
        """Layers x tokens mosaic for the current tokens and step window."""
        if session is None:
            return None
        return views.layer_figure(session.trace, self.controls(*control_values))

    @ui_errors
    def temb_diagram(
        self, session: views.Session | None, step: float, detail: str, zoom: float
    ) -> str:
        """Only the diagram (a step change)."""
        if session is None:
            return ""
        return views.temb_diagram(session.trace, _int(step, "step"), detail or "layers", zoom)


def build_blocks(registry: ModelRegistry, workdir: Path | None = None) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (launch it with :func:`unetviz.app.launch_kwargs`)."""
    h = AppHandlers(registry, workdir)
    try:
        demo_side = registry.spec(DEMO).default_size
    except Exception:  # a broken demo folder: the Architecture tab says so on load
        demo_side = 32
    with gr.Blocks(title="unetviz", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        session = gr.State(None)
        arch_state = gr.State(None)
        gr.Markdown(
            "# unetviz\nSee inside the Stable Diffusion UNet: its architecture, where each "
            "prompt token attends, and how strongly the timestep speaks in every ResnetBlock2D."
        )
        with gr.Tabs(elem_id="tabs"):
            # ---------------------------------------------------------- architecture
            with gr.Tab("Architecture", id="arch", elem_id="tab-arch"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        model = gr.Dropdown(
                            MODEL_CHOICES, value=DEMO, label="Model", elem_id="arch_model"
                        )
                        folder = gr.Textbox(
                            label="Local model folder",
                            placeholder="a diffusers folder inside the model roots",
                            info=f"allowed roots: {describe_roots(registry.roots)}",
                            visible=False,
                            elem_id="arch_folder",
                        )
                        with gr.Row():
                            height = gr.Number(
                                demo_side, label="height (px)", precision=0, elem_id="arch_h"
                            )
                            width = gr.Number(32, label="width (px)", precision=0, elem_id="arch_w")
                            batch = gr.Number(
                                2,
                                label="UNet batch",
                                precision=0,
                                info="2 = one image with CFG",
                                elem_id="arch_batch",
                            )
                        detail = gr.Radio(
                            list(views.DETAILS),
                            value="layers",
                            label="Detail",
                            elem_id="arch_detail",
                        )
                        zoom = gr.Slider(
                            20, 200, value=70, step=5, label="Zoom %", elem_id="arch_zoom"
                        )
                        draw = gr.Button("Draw", variant="primary", elem_id="arch_draw")
                        arch_status = gr.Markdown(elem_id="arch_status")
                        with gr.Row():
                            dl = {
                                k: gr.DownloadButton(
                                    k.upper(),
                                    size="sm",
                                    min_width=60,
                                    elem_id=f"dl_{k}",
                                    variant="secondary",
                                )
                                for k in ("svg", "png", "dot", "json")
                            }
                    with gr.Column(scale=3):
                        diagram_html = gr.HTML(elem_id="diagram")
                table = gr.Dataframe(
                    headers=views.TABLE_HEADERS,
                    type="array",
                    interactive=False,
                    wrap=True,
                    max_height=420,
                    label="Blocks (click a row to see its parts)",
                    elem_id="block_table",
                )
                with gr.Row():
                    block_pick = gr.Dropdown(
                        [], label="Block", scale=1, elem_id="block_pick", allow_custom_value=False
                    )
                    parts = gr.Dataframe(
                        headers=views.PARTS_HEADERS,
                        type="array",
                        interactive=False,
                        wrap=True,
                        scale=3,
                        label="Parts and shapes",
                        elem_id="block_parts",
                    )

            # ---------------------------------------------------------- attention
            with gr.Tab("Attention", id="attn", elem_id="tab-attn"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(
                            DEFAULT_PROMPT, label="Prompt", lines=1, elem_id="prompt"
                        )
                        negative = gr.Textbox("", label="Negative prompt", elem_id="negative")
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                            steps = gr.Number(
                                25,
                                label="Steps",
                                precision=0,
                                info=f"denoising steps, 1..{MAX_STEPS}",
                                elem_id="steps",
                            )
                            guidance = gr.Slider(
                                1, 15, value=4.0, step=0.5, label="Guidance", elem_id="guidance"
                            )
                        with gr.Row():
                            run_model = gr.Textbox(
                                DEMO,
                                label="Model",
                                info="'demo' or a diffusers folder inside the model roots",
                                scale=3,
                                elem_id="run_model",
                            )
                            run_btn = gr.Button("Run", variant="primary", scale=1, elem_id="run")
                        status = gr.Markdown(
                            "Press **Run** to generate with the demo model, or upload a trace "
                            "bundle below.",
                            elem_id="status",
                        )
                        with gr.Accordion(
                            "Explore a saved trace bundle (no model needed)", open=False
                        ):
                            upload = gr.File(
                                label="trace bundle (.zip)",
                                file_types=[".zip", ".trace"],
                                type="filepath",
                                elem_id="upload",
                            )
                    with gr.Column(scale=1, min_width=260):
                        image = gr.Image(
                            label="Generated image",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=256,
                            elem_id="image",
                        )
                        tokens_view = gr.HighlightedText(
                            label="Tokens",
                            color_map={"word": "#fdae6b", "special": "#d9d9d9"},
                            elem_id="tokens",
                        )
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        token_pick = gr.CheckboxGroup(
                            [], label="Tokens to map", elem_id="token_pick"
                        )
                        with gr.Row():
                            step_from = gr.Slider(
                                0, 24, value=0, step=1, label="Steps from", elem_id="step_from"
                            )
                            step_to = gr.Slider(
                                0, 24, value=24, step=1, label="to", elem_id="step_to"
                            )
                        preset = gr.Radio(
                            [("custom", "custom"), ("DAAM", "daam"), ("P2P", "p2p")],
                            value="custom",
                            label="Aggregation preset",
                            elem_id="preset",
                        )
                        locations = gr.CheckboxGroup(
                            list(views.LOCATIONS),
                            value=list(views.LOCATIONS),
                            label="Layers",
                            elem_id="locations",
                        )
                        res_pick = gr.CheckboxGroup([], label="Resolutions", elem_id="resolutions")
                        heads = gr.CheckboxGroup(
                            [], label="Heads (none ticked: mean over all)", elem_id="heads"
                        )
                        normalize = gr.Radio(
                            list(views.NORMALIZE),
                            value="minmax",
                            label="Normalisation",
                            elem_id="normalize",
                        )
                        with gr.Row():
                            threshold = gr.Slider(
                                0,
                                1,
                                value=0.0,
                                step=0.05,
                                label="Outline at (0 = off)",
                                elem_id="threshold",
                            )
                            opacity = gr.Slider(
                                0, 1, value=0.6, step=0.05, label="Opacity", elem_id="opacity"
                            )
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(
                            label="Per-token cross-attention heatmaps",
                            columns=5,
                            format="png",
                            object_fit="contain",
                            allow_preview=True,
                            elem_id="heatmaps",
                        )
                        with gr.Row():
                            dl_zip = gr.DownloadButton("Heatmaps (PNG zip)", elem_id="dl_heatmaps")
                            dl_trace = gr.DownloadButton("Trace bundle", elem_id="dl_trace")
                        layer_plot = gr.Plot(
                            label="Every layer's own map (rows: layers, columns: tokens)",
                            elem_id="layer_grid",
                        )

            # ---------------------------------------------------------- time embedding
            with gr.Tab("Time embedding", id="temb", elem_id="tab-temb"):
                gr.Markdown(
                    "How big is the projected time embedding next to the feature map it is "
                    "added to, in every ResnetBlock2D, along the denoising trajectory? "
                    "(Needs a run or an uploaded trace.)"
                )
                with gr.Row():
                    temb_step = gr.Slider(
                        0,
                        24,
                        value=12,
                        step=1,
                        label="Step for the diagram fill",
                        elem_id="temb_step",
                    )
                    temb_detail = gr.Radio(
                        ["blocks", "layers"],
                        value="layers",
                        label="Diagram detail",
                        elem_id="temb_detail",
                    )
                    temb_zoom = gr.Slider(
                        20, 200, value=70, step=5, label="Zoom %", elem_id="temb_zoom"
                    )
                    temb_by = gr.Radio(
                        [("per resnet", "layer"), ("per block", "block")],
                        value="layer",
                        label="Plots",
                        elem_id="temb_by",
                    )
                temb_svg = gr.HTML(elem_id="temb_diagram")
                temb_btn = gr.Button("Refresh", visible=False, elem_id="temb_refresh")
                with gr.Row():
                    temb_heat = gr.Plot(label="temb ratio heatmap", elem_id="temb_heat")
                    temb_lines = gr.Plot(label="temb ratio lines", elem_id="temb_lines")
                sinus = gr.Plot(label="sinusoidal timestep embedding", elem_id="sinusoid")

        # ------------------------------------------------------------------ wiring
        arch_in = [model, folder, height, width, batch, detail, zoom]
        arch_out = [diagram_html, table, block_pick, *dl.values(), arch_status, arch_state]
        model.change(
            h.arch_defaults, [model, folder], [height, width, folder], api_name="arch_defaults"
        )
        gr.on(
            [draw.click, detail.input, folder.submit],
            h.architecture,
            arch_in,
            arch_out,
            api_name="architecture",
            concurrency_id="arch",
            concurrency_limit=2,
        )
        demo.load(
            h.architecture, arch_in, arch_out, api_visibility="private", concurrency_id="arch"
        )
        zoom.input(
            h.rezoom,
            [arch_state, zoom],
            diagram_html,
            api_visibility="private",
            show_progress="hidden",
        )
        block_pick.change(h.block_parts, [arch_state, block_pick], parts, api_name="block_parts")
        table.select(h.pick_row, [arch_state], block_pick, api_visibility="private")

        controls = [
            token_pick,
            step_from,
            step_to,
            locations,
            res_pick,
            heads,
            preset,
            normalize,
            threshold,
            opacity,
        ]
        loaded_out = [
            image,
            tokens_view,
            token_pick,
            step_from,
            step_to,
            res_pick,
            heads,
            gallery,
            status,
            session,
            temb_step,
        ]
        temb_in = [session, temb_step, temb_detail, temb_zoom]
        temb_out = [temb_heat, temb_lines, sinus, temb_svg]

        def after(ev: Any) -> None:
            ev.then(
                h.downloads, [session, *controls], [dl_zip, dl_trace], api_visibility="private"
            ).then(h.layer_grid, [session, *controls], layer_plot, api_visibility="private").then(
                h.temb, [*temb_in, temb_by], temb_out, api_visibility="private"
            )

        after(
            gr.on(
                [run_btn.click, prompt.submit],
                h.run,
                [run_model, prompt, negative, seed, steps, guidance, *controls],
                loaded_out,
                api_name="run",
                concurrency_id="model",
                concurrency_limit=1,
            )
        )
        after(
            upload.upload(
                h.upload,
                [upload, *controls],
                loaded_out,
                api_name="upload_trace",
                concurrency_limit=2,
            )
        )
        reaggregate = gr.on(
            [c.input for c in controls],
            h.heatmaps,
            [session, *controls],
            gallery,
            api_name="heatmaps",
            trigger_mode="always_last",
            show_progress="minimal",
            concurrency_limit=4,
        )
        reaggregate.then(
            h.downloads, [session, *controls], [dl_zip, dl_trace], api_visibility="private"
        ).then(h.layer_grid, [session, *controls], layer_plot, api_visibility="private")
        temb_by.input(
            h.temb_plots, [session, temb_by], [temb_heat, temb_lines], api_visibility="private"
        )
        gr.on(
            [temb_step.input, temb_detail.input, temb_zoom.input],
            h.temb_diagram,
            temb_in,
            temb_svg,
            api_name="temb_diagram",
            trigger_mode="always_last",
            show_progress="minimal",
        )
        temb_btn.click(h.temb, [*temb_in, temb_by], temb_out, api_name="temb_figures")
    return demo

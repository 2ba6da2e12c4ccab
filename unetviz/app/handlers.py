"""The app's event handlers: plain methods (tests and the bench call them directly).

Errors keep the user's work: a user error (:class:`unetviz.errors.UnetvizError`) leaves every
output as it was (``gr.skip()``) and writes its message in the one message slot beside the
control that failed, logging one line; anything else is a bug: its traceback goes to the log
and the slot says "internal error". No toasts, no red pills on outputs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError
from unetviz.pipelines.base import MAX_SEED

from . import views
from .registry import DEMO, PRESETS, ModelRegistry, architecture_state, size_multiple
from .sessions import Session, SessionStore

log = logging.getLogger("unetviz.app")

MAX_STEPS = 100
MAX_GUIDANCE = 30.0  # what Run accepts (the API too)
GUIDANCE_SLIDER = (1.0, 15.0)  # the page's Guidance slider, whose values gradio checks
MAX_PROMPT_SHOWN = 60
MAX_PROMPT_BOX = 2000  # an uploaded trace's prompt put back in the box


def clean_message(text: str, limit: int = 400) -> str:
    """A user-facing message without server temp paths and with long quoted values cut."""
    tmp = re.escape(str(Path(tempfile.gettempdir())))
    text = re.sub(tmp + r"/[^\s'\"]*/([^/\s'\"]+)", r"\1", text)
    text = re.sub(
        r"(['\"])([^'\"]{" + str(MAX_PROMPT_SHOWN + 1) + r",})\1",
        lambda m: f"{m[1]}{m[2][: MAX_PROMPT_SHOWN - 1]}…{m[1]}",
        text,
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def keep_work(n_out: int, msg_at: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a handler with ``n_out`` outputs whose output ``msg_at`` is its message slot:
    on an error every other output is skipped (kept as it is on screen)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UnetvizError as exc:
                msg = clean_message(str(exc))
                log.warning("%s: %s", fn.__name__, msg)
                text = f"⚠ {msg}"
            except Exception as exc:  # a bug: the traceback goes to the log
                log.exception("internal error in %s", fn.__name__)
                text = f"⚠ internal error in {fn.__name__} ({type(exc).__name__}); see the log"
            out: list[Any] = [gr.skip()] * n_out
            out[msg_at] = text
            return out[0] if n_out == 1 else tuple(out)

        return wrapper

    return deco


def _status(
    label: str, h: int, w: int, b: int, detail: str, rows: int, params: int, t0: float
) -> str:
    """The Architecture tab's status line under the controls."""
    return (
        f"**{label}** · {w}×{h} px · UNet batch {b} · {detail} detail · {rows} rows · "
        f"{params / 1e6:,.1f} M parameters · {(time.perf_counter() - t0) * 1000:.0f} ms"
    )


#: the preset's note when a trace without DAAM sums is loaded while DAAM is chosen
NO_DAAM_NOTE = (
    "**This trace has no DAAM per-head sums**, so the DAAM preset cannot draw it: showing "
    "**custom** (every layer, every step) instead. For DAAM, capture with `daam=True` "
    "(`unetviz.capture(..., daam=True)` or `pipe(prompt, daam=True)`), or press Run here: a "
    "Run always keeps them."
)


class InputError(UnetvizError):
    """A value typed in the UI is out of range or not a number."""


def parse_int(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` (a number or its text) as an exact int in lo..hi, else InputError."""
    text = str(value).strip() if value is not None else ""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not re.fullmatch(r"[+-]?\d{1,40}", text):
        raise InputError(f"{name}={text[:40]!r}: expected a whole number {lo}..{hi}")
    n = int(text)
    if not lo <= n <= hi:
        raise InputError(f"{name}={n}: expected a whole number {lo}..{hi}")
    return n


def session_key(request: Any) -> str:
    """The browser session's key (gradio's session hash)."""
    return str(getattr(request, "session_hash", None) or "anonymous")


def step_window(value: Any) -> tuple[int, int]:
    """The step range control's value ``{"lo", "hi", "max"}`` -> (from, to)."""
    if isinstance(value, dict):
        lo, hi = int(value.get("lo", 0)), int(value.get("hi", -1))
    elif isinstance(value, (list, tuple)) and len(value) >= 2:
        lo, hi = int(value[0]), int(value[1])
    else:
        lo, hi = 0, -1
    return (min(lo, hi), max(lo, hi)) if hi >= 0 else (lo, hi)


class AppHandlers:
    """Event handlers; results per browser session live in :attr:`sessions`."""

    #: download files older than this are removed (gradio keeps its own copies)
    KEEP_S = 2 * 3600
    #: drawn diagrams (panel HTML and table rows) and their export files kept for reuse
    MAX_DRAWN = 16

    def __init__(
        self,
        registry: ModelRegistry,
        workdir: Path | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.registry = registry
        self.sessions = sessions if sessions is not None else SessionStore()
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="unetviz-app-"))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._drawn: OrderedDict[tuple, tuple[Any, str, list[list[Any]]]] = OrderedDict()
        self._exported: OrderedDict[tuple, dict[str, Path]] = OrderedDict()
        self._drawn_lock = threading.Lock()
        #: set once a page has loaded its diagram's state (the page's load event)
        self.page_seen = threading.Event()

    def _outdir(self) -> Path:
        """A fresh folder for one response's files; old ones are pruned."""
        import shutil
        import uuid

        now = time.time()
        for old in self.workdir.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > self.KEEP_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        d = self.workdir / uuid.uuid4().hex[:12]
        d.mkdir(parents=True, mode=0o700)
        return d

    def session(self, request: Any) -> Session | None:
        """This browser's results, or None (never ran, or expired)."""
        return self.sessions.get(session_key(request))

    def forget(self, request: Any) -> None:
        """Free this browser's results (on disconnect)."""
        self.sessions.drop(session_key(request))

    # ------------------------------------------------------------------ architecture
    @keep_work(8, 7)
    def choose_model(self, model: str, folder: str, batch: Any, detail: str) -> tuple[Any, ...]:
        """A model choice -> its native height and width, the folder box's visibility and its
        diagram, table, status and state, in one round trip (the outputs of
        :meth:`architecture` follow the first three)."""
        show = gr.update(visible=model == "folder")
        if model == "folder" and not (folder or "").strip():
            msg = "type a folder inside the model roots, then Draw"
            return (gr.skip(), gr.skip(), show, *[gr.skip()] * 4, msg)
        spec = self.registry.spec(model, folder)
        size, step = spec.default_size, size_multiple(spec)
        drawn = self._draw(spec, size, size, batch, detail)
        # two updates, not one object twice: gradio consumes an update as it applies it
        return (
            gr.update(value=size, step=step),
            gr.update(value=size, step=step),
            show,
            *drawn,
            "",
        )

    @keep_work(5, 4)
    def architecture(
        self, model: str, folder: str, height: Any, width: Any, batch: Any, detail: str
    ) -> tuple[Any, ...]:
        """Diagram panel, block table, status, arch state, message (the downloads follow in
        :meth:`exports`, after the diagram is on screen)."""
        spec = self.registry.spec(model, folder)
        drawn = self._draw(spec, height, width, batch, detail)
        self.page_seen.set()  # the load event's handler when the page has no first drawing
        return (*drawn, "")

    def _draw(self, spec: Any, height: Any, width: Any, batch: Any, detail: str) -> tuple:
        """(panel, rows, status, state) of ``spec`` at that size and detail; the panel and
        rows come from :attr:`_drawn` when this exact diagram was drawn before."""
        if detail not in views.DETAILS:
            raise InputError(f"detail={detail!r}: expected one of {list(views.DETAILS)}")
        t0 = time.perf_counter()
        h = parse_int(height, "height", 8, 4096)
        w = parse_int(width, "width", 8, 4096)
        b = parse_int(batch, "batch", 1, 64)
        key = (spec.key, json.dumps(spec.config, sort_keys=True), h, w, b, detail)
        trace = self.registry.architecture(spec, h, w, b)
        with self._drawn_lock:
            hit = self._drawn.get(key)
            if hit is not None:
                self._drawn.move_to_end(key)
        if hit is None or hit[0] is not trace:
            hit = (trace, *views.drawing(trace, detail))
            with self._drawn_lock:
                self._drawn[key] = hit
                while len(self._drawn) > self.MAX_DRAWN:
                    self._drawn.popitem(last=False)
        _, panel, rows = hit
        total = sum(r.params for r in trace.blocks if r.level == "block")
        status = _status(spec.label, h, w, b, detail, len(rows), total, t0)
        stem = f"{views.slug(spec.label)}-{w}x{h}-{detail}"
        state = {"trace": trace, "rows": rows, "detail": detail, "stem": stem, "key": key}
        return panel, rows, status, state

    def first_drawing(self) -> tuple[str, list[list[Any]], str] | None:
        """The demo model's blocks diagram, table and status at its native size, drawn from
        its cached structure with no torch import: the first page shows them at once (the
        Architecture tab's initial values); None when the demo cannot be read (the page's
        load event then draws and says why)."""
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

    @keep_work(2, 1)
    def arch_state(
        self, model: str, folder: str, height: Any, width: Any, batch: Any, detail: str
    ) -> tuple[Any, str]:
        """Only the arch state (the Trace behind search, row selection and downloads) of the
        diagram already on the page (:meth:`first_drawing`): nothing is re-sent."""
        spec = self.registry.spec(model, folder)
        state = self._draw(spec, height, width, batch, detail)[3]
        self.page_seen.set()  # the page's load event: the first page is drawn
        return state, ""

    def prerender(self, models: tuple[str, ...] = (DEMO, *PRESETS), detail: str = "blocks") -> int:
        """Draw ``models`` at their native size into the diagram cache (start-up, in the
        background: a later choice of one of them is one cached round trip). Returns how many
        were drawn; a model that fails is logged and skipped."""
        done = 0
        for model in models:
            try:
                spec = self.registry.spec(model)
                self._draw(spec, spec.default_size, spec.default_size, 2, detail)
                done += 1
            except Exception:  # a broken demo folder: the Architecture tab says so on use
                log.warning("prerender %s failed", model, exc_info=True)
        return done

    @keep_work(5, 4)
    def exports(self, arch: dict | None) -> tuple[Any, ...]:
        """SVG / PNG / DOT / JSON of the drawn diagram (full labels) for the download buttons."""
        from unetviz.render.diagram import diagram

        if not arch:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        key = (arch.get("key"), arch["stem"])
        with self._drawn_lock:
            files = self._exported.get(key)
        if files is None or not all(p.is_file() for p in files.values()):
            trace, detail = arch["trace"], arch["detail"]
            graph = diagram(trace, detail=detail)
            svg = views.render_svg(graph)
            files = views.write_exports(trace, detail, self._outdir(), arch["stem"], graph, svg)
            with self._drawn_lock:
                self._exported[key] = files
                while len(self._exported) > self.MAX_DRAWN:
                    self._exported.popitem(last=False)
        return (*(str(files[k]) for k in ("svg", "png", "dot", "json")), "")

    @keep_work(2, 1)
    def search(self, arch: dict | None, query: str) -> tuple[Any, str]:
        """Block table filtered to modules whose diffusers name, LDM key or A1111 label
        contains ``query``."""
        if not arch:
            return gr.skip(), ""
        rows = views.search_rows(arch["rows"], query)
        if not rows:
            return gr.skip(), f"no module matches {query.strip()[:60]!r}"
        n = len(rows)
        return rows, "" if not (query or "").strip() else f"{n} match{'es' * (n != 1)}"

    @keep_work(3, 2)
    def select_block(self, arch: dict | None, evt: gr.SelectData) -> tuple[Any, Any, str]:
        """A table row (or a diagram node, through the table) -> its parts and its name."""
        row = evt.row_value if evt is not None else None
        if not arch or not row:
            return gr.skip(), gr.skip(), ""
        name = str(row[0])
        parts = views.block_parts(arch["trace"], name)
        return parts, f"**{name}** · {row[1]} · {row[2]}", ""

    # ------------------------------------------------------------------ attention
    @staticmethod
    def controls(
        tokens: list[int] | None,
        steps: Any,
        locations: list[str] | None,
        resolutions: list[int] | None,
        heads: list[int] | None,
        preset: str,
        normalize: str,
        scale: str,
        threshold: float,
        opacity: float,
    ) -> views.HeatmapControls:
        """UI values -> HeatmapControls."""
        lo, hi = step_window(steps)
        return views.HeatmapControls(
            tokens=tuple(int(t) for t in tokens or ()),
            step_from=lo,
            step_to=hi,
            locations=tuple(locations or ()),
            resolutions=tuple(int(r) for r in resolutions or ()),
            heads=tuple(int(h) for h in heads or ()),
            preset=preset or "custom",
            normalize=normalize or "minmax",
            scale=scale or "shared",
            threshold=float(threshold or 0.0),
            opacity=float(0.6 if opacity is None else opacity),
        )

    def _loaded(self, session: Session, c: views.HeatmapControls, note: str) -> tuple:
        """Outputs shared by Run and upload (see :data:`LOADED`). A trace without DAAM sums
        loaded while DAAM is chosen is drawn with the custom preset, and the preset's note
        and the status say so (the last output moves the preset control)."""
        tr = session.trace
        n = session.steps
        words = views.word_tokens(tr)
        preset, moved = c.preset, gr.skip()
        if preset == "daam" and views.daam_missing(session):
            preset, moved = "custom", "custom"
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
        return (
            views.display_image(session.image),
            views.highlighted_tokens(tr),
            gr.update(choices=views.token_choices(tr), value=words),
            {"lo": 0, "hi": n - 1, "max": n - 1},
            gr.update(value=locs, interactive=custom),
            gr.update(
                choices=[(f"{r}×{r}", r) for r in views.resolutions(tr)],
                value=res,
                interactive=custom,
            ),
            gr.update(
                choices=[(f"head {i}", i) for i in range(nh)],
                value=[],
                interactive=nh > 0,
                info=None if nh else "this trace kept the mean over heads",
            ),
            views.tiles_html(tiles),
            views.colorbar_html(lo, hi, c),
            note,
            "",
            gr.update(maximum=max(n - 1, 1), value=min(n - 1, n // 2)),
            pnote,
            moved,
        )

    @keep_work(14, 10)
    def run(
        self,
        request: gr.Request = None,
        progress: Any = gr.Progress(),  # noqa: B008
        model: str = DEMO,
        prompt: str = "",
        negative: str = "",
        seed: Any = 0,
        steps: Any = 25,
        guidance: Any = 4.0,
        *control_values: Any,
    ) -> tuple:
        """Generate with capture (under the model lock); keep the trace for this session.
        ``request`` and ``progress`` come first: gradio injects only parameters before
        ``*control_values``."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("the prompt is empty: type what to draw, e.g. 'a red circle'")
        n = parse_int(steps, "steps", 1, MAX_STEPS)
        try:
            g = float(guidance)
        except (TypeError, ValueError):
            expected = f"expected a number 1..{MAX_GUIDANCE:g}"
            raise InputError(f"guidance={guidance!r}: {expected}") from None
        if not 1.0 <= g <= MAX_GUIDANCE:  # NaN fails too
            raise InputError(f"guidance={g}: expected a number 1..{MAX_GUIDANCE:g}")
        s = parse_int(seed, "seed", 0, MAX_SEED)
        c = self.controls(*control_values)
        model = (model or DEMO).strip() or DEMO
        progress = progress or (lambda *a, **k: None)
        progress(0, desc="loading the model…")
        pipe = self.registry.pipeline(model)
        # DAAM's per-head sums for every model, so the DAAM preset works before or after Run
        # (SD 1.5: +63 MiB a run; the session store's byte budget bounds the total); the
        # demo's tiny maps are also kept per head for the heads control
        extra = {"daam": True, "per_head": getattr(pipe, "name", "") == DEMO}

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
        session = Session(trace=result.trace, image=result.image, label=prompt)
        out = self._loaded(session, c, "")
        self.sessions.put(session_key(request), session)
        shown = prompt if len(prompt) <= MAX_PROMPT_SHOWN else prompt[: MAX_PROMPT_SHOWN - 1] + "…"
        note = (
            f"Showing **{shown}** · seed {s} · {n} steps · guidance {g:g} · generated and "
            f"captured in {time.perf_counter() - t0:.1f} s"
        )
        return (*out[:9], note, *out[10:])

    @keep_work(14, 10)
    def upload(self, request: gr.Request, file: Any, *control_values: Any) -> tuple:
        """Load a trace bundle (explored without any model)."""
        if file is None:
            raise InputError("no file: upload a trace bundle (.zip written by unetviz)")
        path = Path(file if isinstance(file, str | os.PathLike) else getattr(file, "name", file))
        self.registry.apply_thread_policy()  # no-op once applied
        session = views.load_bundle(path, max_bytes=self.sessions.max_bytes)
        c = self.controls(*control_values)
        m = session.trace.meta
        prompt = str(m.get("prompt", "?"))[:MAX_PROMPT_SHOWN]
        note = (
            f"Showing trace **{path.name}** · prompt {prompt!r} · {session.trace.steps} steps "
            f"· model {m.get('model', '?')}"
            + ("" if session.image is not None else " · no image in the bundle (grey background)")
        )
        out = self._loaded(session, c, note)
        self.sessions.put(session_key(request), session)
        return out

    def trace_inputs(self, request: gr.Request) -> tuple:
        """After an upload, the prompt, negative prompt, seed, steps and guidance boxes show the
        trace's own (so Run draws that image again with the model that made it). A value that
        is missing or out of the boxes' range leaves its box as it was."""
        session = self.session(request)
        meta = session.trace.meta if session is not None else {}

        def text(key: str) -> Any:
            value = meta.get(key)
            return value[:MAX_PROMPT_BOX] if isinstance(value, str) else gr.skip()

        def number(key: str, lo: float, hi: float) -> Any:
            value = meta.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return value if ok and lo <= value <= hi else gr.skip()  # NaN fails too

        return (
            text("prompt"),
            text("negative_prompt"),
            number("seed", 0, MAX_SEED),
            number("steps", 1, MAX_STEPS),
            number("guidance", *GUIDANCE_SLIDER),  # beyond it the slider refuses the next Run
        )

    def _need(self, request: Any) -> Session:
        session = self.session(request)
        if session is None:
            raise InputError(
                "nothing to show yet (or your results expired after "
                f"{self.sessions.ttl_s / 60:.0f} idle minutes): press Run or upload a trace"
            )
        return session

    @keep_work(4, 2)
    def heatmaps(self, request: gr.Request, *control_values: Any) -> tuple:
        """Re-aggregate from the cached trace (no model run): tiles (one HTML block of inline
        PNGs), colour bar, message and the layer boxes (re-ticked when all were unticked).
        DAAM chosen for a trace without its sums: the heatmap area says why, in place of
        tiles drawn for other controls."""
        session = self._need(request)
        c = self.controls(*control_values)
        fix, msg = gr.skip(), ""
        if not c.locations:
            c = views.HeatmapControls(**{**c.__dict__, "locations": views.LOCATIONS})
            fix, msg = list(views.LOCATIONS), "at least one layer location stays ticked"
        self.registry.apply_thread_policy()  # no-op once applied
        try:
            tiles, lo, hi = views.heatmap_tiles(session, c)
        except views.NoDaamError as exc:
            log.info("heatmaps: %s", exc)
            return views.no_daam_html(str(exc)), "", msg, fix
        return views.tiles_html(tiles), views.colorbar_html(lo, hi, c), msg, fix

    @keep_work(4, 3)
    def preset_changed(self, request: gr.Request, preset: str) -> tuple:
        """An aggregation preset fixes the layers and resolutions: the boxes show its choice."""
        session = self.session(request)
        custom = preset in ("", "custom")
        if session is None:
            return gr.update(interactive=custom), gr.update(interactive=custom), "", ""
        locs, res, note = views.preset_selection(session.trace, preset)
        if preset == "daam" and views.daam_missing(session):
            note = "DAAM needs per-head sums this trace does not hold (see the heatmap area)"
        return (
            gr.update(value=locs, interactive=custom),
            gr.update(value=res, interactive=custom),
            note,
            "",
        )

    @keep_work(2, 1)
    def downloads(self, request: gr.Request, *control_values: Any) -> tuple:
        """The heatmaps zip for its download button (follows the controls)."""
        session = self.session(request)
        if session is None:
            return gr.skip(), ""
        stem = views.slug(session.label, "trace")
        c = self.controls(*control_values)
        if session.shown.get("zip") == c:
            return gr.skip(), ""  # the file on the button is already this one
        try:
            path = views.heatmaps_zip(session, c, self._outdir() / f"{stem}-heatmaps.zip")
        except views.NoDaamError:  # the heatmap area says why; no stale zip on the button
            session.shown.pop("zip", None)
            return None, ""
        session.shown["zip"] = c
        return str(path), ""

    @keep_work(2, 1)
    def bundle(self, request: gr.Request) -> tuple:
        """The trace bundle for its download button (once per run or upload)."""
        session = self.session(request)
        if session is None:
            return gr.skip(), ""
        stem = views.slug(session.label, "trace")
        return str(views.save_bundle(session, self._outdir() / f"{stem}.trace.zip")), ""

    @keep_work(2, 1)
    def report(self, request: gr.Request) -> tuple:
        """The self-contained HTML report (``unetviz.report``) for its download button."""
        session = self.session(request)
        if session is None:
            return gr.skip(), ""
        from unetviz.report.html import write_report

        stem = views.slug(session.label, "trace")
        return str(write_report(session, self._outdir() / f"{stem}-report.html")), ""

    @keep_work(2, 1)
    def layer_grid(self, request: gr.Request, *control_values: Any) -> tuple:
        """Layers x tokens mosaic for the current tokens, step window and scale (skipped when
        none of them changed: normalisation, threshold, opacity do not touch it)."""
        session = self.session(request)
        if session is None:
            return gr.skip(), ""
        c = self.controls(*control_values)
        key = (c.tokens, c.step_from, c.step_to, c.scale)
        if session.shown.get("grid") == key:
            return gr.skip(), ""  # what the grid reads did not change: nothing to re-send
        figure = views.layer_figure(session.trace, c)
        session.shown["grid"] = key
        return figure, ""

    # ------------------------------------------------------------------ time embedding
    def temb_intro(self) -> Any:
        """The demo model's sinusoidal embedding, drawn before any run."""
        try:
            return views.sinusoid_figure(self.registry.spec(DEMO).config)
        except UnetvizError as exc:
            log.warning("temb_intro: %s", exc)
            return None

    @keep_work(5, 4)
    def temb(self, request: gr.Request, step: Any, detail: str, by: str = "layer") -> tuple:
        """temb heatmap, lines, sinusoidal embedding and the diagram coloured at ``step``."""
        session = self._need(request)
        tr = session.trace
        heat, lines = views.temb_figures(tr, by=by or "layer")
        sinus = views.sinusoid_figure(tr.meta.get("config") or {}, list(tr.timesteps or []))
        n = parse_int(step, "step", 0, max(session.steps - 1, 0))
        svg = views.temb_diagram(tr, n, detail or "layers")
        return heat, lines, sinus, svg, ""

    @keep_work(2, 1)
    def temb_diagram(self, request: gr.Request, step: Any, detail: str) -> tuple:
        """Only the diagram (a step or detail change)."""
        session = self._need(request)
        n = parse_int(step, "step", 0, max(session.steps - 1, 0))
        return views.temb_diagram(session.trace, n, detail or "layers"), ""

    @keep_work(3, 2)
    def temb_plots(self, request: gr.Request, by: str) -> tuple:
        """Only the heatmap and lines (grouping changed)."""
        session = self._need(request)
        return (*views.temb_figures(session.trace, by=by or "layer"), "")

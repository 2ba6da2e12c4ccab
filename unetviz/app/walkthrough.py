"""The Walkthrough tab: one forward pass of the UNet, stage by stage, in the order the data flows.

:func:`stages` reads a shapes trace at ``modules`` detail (the app's meta trace of the chosen
model and size, :meth:`ModelRegistry.architecture`) and lists the stages: the time embedding,
``conv_in``, every down block with its resnets, transformers and downsampler, the mid block,
every up block with its parts, and the output head. Each stage carries its diffusers name, LDM
key, input / output shapes and, inside a ResnetBlock2D or a Transformer2DModel, its sub-steps
with their shapes. :func:`render_stage` draws one stage as HTML: the explanation (data, from
``locales/walkthrough.<lang>.json``, both languages in the page, CSS shows one), the shapes and,
when a run's trace holds them, the pictures of what flows there: the feature PCA and norm maps
(``capture(features=...)``), the cross-attention maps of a transformer's words, the temb ratio
of a resnet over the steps.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..names import unet_names
from .i18n import LANGS, LOCALES, spans

#: the Architecture tab's position in the app's tab list (the stage links switch to it)
ARCHITECTURE_TAB = 0
PICTURE_PX = 112  # side of a feature picture in the page
MAX_WORD_MAPS = 6


@cache
def texts(lang: str) -> dict[str, str]:
    """The walkthrough's explanations in ``lang`` (one JSON file per language)."""
    if lang not in LANGS:
        raise ValueError(f"lang={lang!r}: expected one of {list(LANGS)}")
    data = json.loads((LOCALES / f"walkthrough.{lang}.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


# ------------------------------------------------------------------------------- the stages
@dataclass
class Stage:
    """One stop of the walkthrough."""

    kind: str  # key of its explanation: time_embedding, conv_in, down_block, resnet, ...
    name: str  # diffusers module name
    type: str
    depth: int  # 0: a block, 1: a part inside one
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    ldm: str | None = None
    node: str = ""  # the Architecture diagram node that shows it (blocks detail)
    substeps: list[tuple[str, str, list[int] | None]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # numbers the explanation quotes

    @property
    def label(self) -> str:
        """``name · in -> out`` as the stage list and the picker show it."""
        return f"{self.name} · {shape_text(self.first_input)} → {shape_text(self.output)}"

    @property
    def first_input(self) -> list[int] | None:
        return next(iter(self.inputs.values()), None)

    @property
    def output(self) -> list[int] | None:
        out = self.outputs.get("sample")
        return out if out is not None else next(iter(self.outputs.values()), None)


def shape_text(shape: Any) -> str:
    """(2, 320, 64, 64) as text; '?' when unknown."""
    if not isinstance(shape, list) or not shape:
        return "?"
    if isinstance(shape[0], list):
        return " + ".join(shape_text(s) for s in shape)
    return "(" + ", ".join(str(v) for v in shape) + ("," if len(shape) == 1 else "") + ")"


_KINDS = {
    "ResnetBlock2D": "resnet",
    "Transformer2DModel": "transformer",
    "Downsample2D": "downsampler",
    "Upsample2D": "upsampler",
}


def stages(trace: Any) -> list[Stage]:
    """The stages of the forward pass recorded in ``trace`` (a Trace at ``modules`` detail, or
    ``layers`` without sub-step shapes; or its JSON state, read without torch), in the order
    the data flows."""
    if isinstance(trace, dict):  # Trace.to_state()[0] / unetviz.structure.structure()
        from types import SimpleNamespace

        blocks = [SimpleNamespace(**b) for b in trace.get("blocks", [])]
        trace = SimpleNamespace(blocks=blocks, meta=trace.get("meta") or {})
    records = {b.name: b for b in trace.blocks}
    config = trace.meta.get("config") or {}
    try:
        names = unet_names(config) if config else None
    except Exception:  # a config the name map does not know: LDM keys are left out
        names = None
    out: list[Stage] = []
    blocks = [b for b in trace.blocks if b.level == "block"]
    time_parts = [b for b in blocks if b.name in ("time_proj", "time_embedding")]
    extra = [b for b in blocks if b.name in ("add_time_proj", "add_embedding", "class_embedding")]
    if time_parts:
        first, last = time_parts[0], time_parts[-1]
        facts = {"sinusoids": (first.outputs.get("sample") or [0, 0])[-1]}
        facts["dim"] = (last.outputs.get("sample") or [0, 0])[-1]
        st = Stage(
            "time_embedding" if not extra else "time_embedding_added",
            "time_embedding",
            last.type,
            0,
            first.inputs,
            last.outputs,
            node="time_embedding",
            facts=facts,
        )
        st.substeps = [("sub.time_proj", "time_proj", first.outputs.get("sample"))]
        for part in ("linear_1", "act", "linear_2"):
            rec = records.get(f"time_embedding.{part}")
            st.substeps.append((f"sub.time.{part}", rec.name if rec else "", _out(rec)))
        for b in extra:
            st.substeps.append((f"sub.{b.name}", b.name, b.outputs.get("sample")))
        out.append(st)
    head = [b for b in blocks if b.name in ("conv_norm_out", "conv_act", "conv_out")]
    for b in blocks:
        if b.name == "conv_in":
            out.append(Stage("conv_in", b.name, b.type, 0, b.inputs, b.outputs, node=b.name))
        elif b.name.startswith(("down_blocks.", "up_blocks.")) or b.name == "mid_block":
            out += _block_stages(b, trace.blocks, records)
    if head:
        st = Stage("out", "conv_out", "", 0, head[0].inputs, head[-1].outputs, node="conv_out")
        st.ldm = "out"
        st.type = " → ".join(b.type for b in head)
        st.substeps = [(f"sub.{b.name}", b.name, b.outputs.get("sample")) for b in head]
        out.append(st)
    for st in out:
        if names is not None and not st.ldm:
            try:
                st.ldm = names.ldm(st.name)
            except Exception:
                st.ldm = None
    return out


def _out(rec: Any) -> list[int] | None:
    return None if rec is None else rec.outputs.get("sample")


def _block_stages(block: Any, all_records: list[Any], records: dict[str, Any]) -> list[Stage]:
    kind = "mid_block"
    if block.name.startswith("down_blocks."):
        kind = "down_block_cross" if "CrossAttn" in block.type else "down_block"
    elif block.name.startswith("up_blocks."):
        kind = "up_block_cross" if "CrossAttn" in block.type else "up_block"
    parts = [r for r in all_records if r.level == "layer" and r.parent == block.name]
    facts = {
        "resnets": sum(1 for r in parts if r.type == "ResnetBlock2D"),
        "transformers": sum(1 for r in parts if r.type == "Transformer2DModel"),
        "skips": len(block.outputs.get("skips") or []),
    }
    st = Stage(kind, block.name, block.type, 0, block.inputs, block.outputs, node=block.name)
    st.facts = facts
    result = [st]
    for r in parts:
        kind = _KINDS.get(r.type, "part")
        sub = Stage(kind, r.name, r.type, 1, r.inputs, r.outputs, node=block.name)
        if kind == "resnet":
            sub.substeps = _resnet_steps(r, records)
            if "skip" in r.inputs:
                sub.kind = "resnet_skip"
                sub.facts = {"skip": shape_text(r.inputs["skip"])}
        elif kind == "transformer":
            sub.substeps, sub.facts = _transformer_steps(r, records)
        result.append(sub)
    return result


def _resnet_steps(r: Any, records: dict[str, Any]) -> list[tuple[str, str, list[int] | None]]:
    n = r.name
    steps = [
        ("sub.resnet.input", "", r.inputs.get("sample")),
        ("sub.resnet.norm1", f"{n}.norm1", _out(records.get(f"{n}.norm1"))),
        ("sub.resnet.conv1", f"{n}.conv1", _out(records.get(f"{n}.conv1"))),
        ("sub.resnet.temb", f"{n}.time_emb_proj", _out(records.get(f"{n}.time_emb_proj"))),
        ("sub.resnet.norm2", f"{n}.norm2", _out(records.get(f"{n}.norm2"))),
        ("sub.resnet.conv2", f"{n}.conv2", _out(records.get(f"{n}.conv2"))),
    ]
    if f"{n}.conv_shortcut" in records:
        steps.append(
            ("sub.resnet.shortcut_conv", f"{n}.conv_shortcut", _out(records[f"{n}.conv_shortcut"]))
        )
    else:
        steps.append(("sub.resnet.shortcut", "", r.inputs.get("sample")))
    steps.append(("sub.resnet.sum", "", r.outputs.get("sample")))
    return steps


def _transformer_steps(r: Any, records: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    n = r.name
    steps = [
        ("sub.tf.norm", f"{n}.norm", _out(records.get(f"{n}.norm"))),
        ("sub.tf.proj_in", f"{n}.proj_in", _out(records.get(f"{n}.proj_in"))),
    ]
    k = 0
    facts: dict[str, Any] = {}
    while f"{n}.transformer_blocks.{k}" in records:
        b = f"{n}.transformer_blocks.{k}"
        steps += [
            ("sub.tf.attn1", f"{b}.attn1", _out(records.get(f"{b}.attn1"))),
            ("sub.tf.attn2", f"{b}.attn2", _out(records.get(f"{b}.attn2"))),
            ("sub.tf.ff", f"{b}.ff", _out(records.get(f"{b}.ff"))),
        ]
        attn2 = records.get(f"{b}.attn2")
        if attn2 is not None and k == 0:
            q = attn2.inputs.get("sample")
            ctx = attn2.inputs.get("encoder_hidden_states")
            facts.update(tokens=q[1] if isinstance(q, list) and len(q) == 3 else "?")
            facts["context"] = shape_text(ctx)
        k += 1
    if k == 0:  # a layers-detail trace: the inner modules were not recorded
        steps += [("sub.tf.attn1", "", None), ("sub.tf.attn2", "", None), ("sub.tf.ff", "", None)]
    steps += [
        ("sub.tf.proj_out", f"{n}.proj_out", _out(records.get(f"{n}.proj_out"))),
        ("sub.tf.residual", "", r.outputs.get("sample")),
    ]
    facts["blocks"] = max(k, 1)
    return steps, facts


# ------------------------------------------------------------------------------- rendering
def both(key: str, **values: Any) -> str:
    """The text ``key`` in every language, each in a span the page's CSS shows or hides (the
    language switch needs no round trip); ``values`` fill its ``{placeholders}``."""
    parts = {}
    for lang in LANGS:
        text = texts(lang).get(key, texts("en").get(key, key))
        try:
            text = text.format_map(_Known(values))
        except (IndexError, ValueError):
            pass
        parts[lang] = _inline(text)
    return spans(parts)


class _Known(dict):
    """Format values; a placeholder the stage has no number for reads '?'."""

    def __missing__(self, key: str) -> str:
        return "?"


def _inline(text: str) -> str:
    """Escape, then `code` spans (the only markup the explanations use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _png(array: Any, px: int = PICTURE_PX) -> str:
    """An (h, w) or (h, w, 3) uint8 array as a PNG data URI, scaled up to ``px`` (nearest)."""
    from PIL import Image

    img = Image.fromarray(array)
    scale = max(1, px // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(uri: str, caption_key: str, **values: Any) -> str:
    return (
        f'<figure class="uv-wt-pic"><img src="{uri}" alt=""/>'
        f"<figcaption>{both(caption_key, **values)}</figcaption></figure>"
    )


def pictures(stage: Stage, run: Any, step: int) -> list[str]:
    """The pictures of what flows through ``stage`` at forward ``step`` of the run's trace."""
    if run is None:
        return []
    figs: list[str] = []
    feats = getattr(run, "features", {}) or {}
    name = stage.name
    if stage.kind == "out":
        name = "conv_out" if "conv_out" in feats else "conv_norm_out"
    rec = feats.get(name)
    if rec is not None and rec.steps:
        i = min(step, len(rec.steps) - 1)
        s = rec.steps[i]
        figs.append(_figure(_png(rec.rgb(s).numpy()), "pic.pca", step=s))
        figs.append(
            _figure(_png(_coloured(rec.norm_map(s).numpy())), "pic.norm", rms=f"{rec.rms[i]:.3g}")
        )
    if stage.kind == "transformer":
        figs += _word_maps(stage.name, run, step)
    if stage.kind.startswith("time_embedding"):
        figs += _sinusoids(stage, run, step)
    if stage.kind in ("resnet", "resnet_skip"):
        bars = _temb_bars(stage.name, run, step)
        if bars:
            figs.append(bars)
    return figs


def _coloured(values: Any) -> Any:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 through the project's one colour map."""
    from ..colors import colorize

    return colorize(values, 0.0, 1.0)


def _sinusoids(stage: Stage, run: Any, step: int) -> list[str]:
    """The timestep of ``step`` as the model's sinusoids: one row of the strip per step, this
    step's row marked (the model's own ``timestep_embedding``)."""
    import numpy as np
    import torch

    from ..model.embeddings import timestep_embedding

    steps = [t for t in run.timesteps if t is not None]
    dim = int(stage.facts.get("sinusoids") or 0)
    if not steps or dim <= 0:
        return []
    config = run.meta.get("config") or {}
    emb = timestep_embedding(
        torch.tensor(steps, dtype=torch.float32),
        dim,
        bool(config.get("flip_sin_to_cos", True)),
        float(config.get("freq_shift", 0) or 0),
    )
    rgb = _coloured(((emb + 1) / 2).numpy())
    row = min(step, len(steps) - 1)
    rgb[row, :, :] = np.maximum(rgb[row, :, :], 200)  # this step, lightened
    t = steps[row]
    return [_figure(_png(rgb, px=224), "pic.sinusoids", t=f"{t:g}")]


def _word_maps(transformer: str, run: Any, step: int) -> list[str]:
    rec = run.attention.get(f"{transformer}.transformer_blocks.0.attn2")
    if rec is None or not rec.maps or not rec.steps:
        return []
    i = rec.steps.index(step) if step in rec.steps else len(rec.steps) - 1
    maps = rec.maps[i].float().mean(0)  # (h, w, tokens)
    words = [(j, w) for j, w in enumerate(run.words or []) if w and j < maps.shape[-1]]
    figs = []
    for j, word in words[:MAX_WORD_MAPS]:
        m = maps[..., j]
        m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
        figs.append(_figure(_png(_coloured(m.numpy())), "pic.word", word=word))
    return figs


def _temb_bars(resnet: str, run: Any, step: int) -> str:
    rows = [r for r in run.temb if r.block == resnet]
    if not rows:
        return ""
    top = max((r.ratio or 0.0) for r in rows) or 1.0
    w, h = 220, 70
    bw = w / len(rows)
    bars = []
    for r in rows:
        v = (r.ratio or 0.0) / top
        colour = "#f97316" if r.step == step else "#9ca3af"
        bars.append(
            f'<rect x="{r.step * bw:.1f}" y="{h - v * h:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{v * h:.1f}" fill="{colour}"><title>{r.step}: {r.ratio}</title></rect>'
        )
    svg = f'<svg class="uv-wt-bars" viewBox="0 0 {w} {h}" width="{w}" height="{h}">{"".join(bars)}</svg>'
    here = next((r for r in rows if r.step == step), rows[-1])
    ratio = f"{here.ratio:.3g}" if here.ratio is not None else "–"
    return f'<figure class="uv-wt-pic">{svg}<figcaption>{both("pic.temb", ratio=ratio)}</figcaption></figure>'


def render_list(items: list[Stage], current: int) -> str:
    """The ordered list of every stage (name, type, input -> output shape)."""
    rows = []
    for i, st in enumerate(items):
        cls = "uv-wt-item" + (" uv-wt-current" if i == current else "") + f" uv-wt-d{st.depth}"
        rows.append(
            f'<li class="{cls}" data-stage="{i}" data-name="{html.escape(st.name)}">'
            f'<span class="uv-wt-name">{html.escape(st.name)}</span> '
            f'<span class="uv-wt-type">{html.escape(st.type)}</span> '
            f'<span class="uv-wt-shape">{shape_text(st.first_input)} → {shape_text(st.output)}</span>'
            "</li>"
        )
    return f'<ol id="wt_list" class="uv-wt-list">{"".join(rows)}</ol>'


def render_stage(stage: Stage, index: int, total: int, run: Any = None, step: int = 0) -> str:
    """One stage as HTML: title, names, shapes, sub-steps, explanation, pictures, diagram link."""
    ins = "".join(
        f"<li><code>{html.escape(k)}</code> {shape_text(v)}</li>" for k, v in stage.inputs.items()
    )
    outs = "".join(
        f"<li><code>{html.escape(k)}</code> {shape_text(v)}</li>" for k, v in stage.outputs.items()
    )
    facts = {k: v for k, v in stage.facts.items()}
    facts.setdefault("out", shape_text(stage.output))
    facts.setdefault("inp", shape_text(stage.first_input))
    subs = "".join(
        f"<li>{both(key)} <code>{html.escape(mod.rsplit('.', 1)[-1]) if mod else ''}</code> "
        f'<span class="uv-wt-shape">{shape_text(shape)}</span></li>'
        for key, mod, shape in stage.substeps
    )
    figs = pictures(stage, run, step)
    pics = (
        f'<div class="uv-wt-pics">{"".join(figs)}</div>'
        if figs
        else f'<p class="uv-wt-nopic">{both("pic.none")}</p>'
    )
    ldm = f" · LDM <code>{html.escape(stage.ldm)}</code>" if stage.ldm else ""
    return (
        f'<div class="uv-wt-stage" data-stage="{index}" data-name="{html.escape(stage.name)}">'
        f'<div class="uv-wt-head"><b>{index + 1} / {total}</b> · {both(f"title.{stage.kind}")}'
        f"</div>"
        f'<div class="uv-wt-names">diffusers <code>{html.escape(stage.name)}</code>{ldm} · '
        f"<code>{html.escape(stage.type)}</code> · "
        f'<a href="#" class="uv-wt-node" data-node="{html.escape(stage.node)}" '
        f'data-name="{html.escape(stage.name)}">{both("link.diagram")}</a></div>'
        f'<div class="uv-wt-io"><div>{both("io.in")}<ul>{ins}</ul></div>'
        f"<div>{both('io.out')}<ul>{outs}</ul></div></div>"
        f'<p class="uv-wt-text">{both(f"text.{stage.kind}", **facts)}</p>'
        + (f'<div class="uv-wt-subs">{both("io.substeps")}<ol>{subs}</ol></div>' if subs else "")
        + pics
        + "</div>"
    )


def page(items: list[Stage], index: int, run: Any = None, step: int = 0) -> str:
    """The tab's body: the current stage, then the list of every stage."""
    if not items:
        return f"<p>{both('pic.none')}</p>"
    index = max(0, min(index, len(items) - 1))
    return (
        '<div class="uv-wt">'
        + render_stage(items[index], index, len(items), run, step)
        + render_list(items, index)
        + "</div>"
    )


__all__ = [
    "LANGS",
    "Stage",
    "both",
    "page",
    "pictures",
    "render_list",
    "render_stage",
    "shape_text",
    "stages",
    "texts",
]


# ------------------------------------------------------------------------------- the tab
#: the model picker: the current run (else the demo model), or a model's structure alone
MODELS = (
    ("the current run (else the demo model)", "run"),
    ("demo model (shipped, runs offline)", "demo"),
    ("SD 1.5 preset (meta: shapes only)", "sd15"),
    ("SD 2.1 preset (meta)", "sd21"),
    ("SDXL preset (meta)", "sdxl"),
)
#: what the tab's handlers read
WALK_IN = ("wt_model", "wt_stage", "wt_step")


def _shapes_of_run(trace: Any) -> Any:
    """A modules-detail structure of the UNet that made ``trace`` (its config, size, batch,
    tokens), for the sub-step shapes a run's layers-detail trace lacks; the trace itself when
    that cannot be built."""
    from unetviz.structure import structure_trace

    meta = trace.meta
    try:
        latent = meta.get("latent") or [meta["height"] // 8, meta["width"] // 8]
        factor = int(meta.get("vae_scale_factor") or 8)
        return structure_trace(
            dict(meta["config"]),
            int(latent[0]) * factor,
            int(latent[1]) * factor,
            batch=int(meta.get("batch") or 2),
            detail="modules",
            tokens=len(trace.tokens) or 77,
            factor=factor,
        )
    except Exception:  # an uploaded trace with an odd config: its own records, fewer shapes
        return trace


class WalkthroughHandlers:
    """The tab's handlers, on the app's registry and per-browser sessions."""

    def __init__(self, handlers: Any) -> None:
        self.h = handlers
        self._presets: dict[str, list[Stage]] = {}

    def items(self, choice: str, request: Any) -> tuple[list[Stage], Any, str]:
        """(stages, the run's trace or None, cache key) for a model choice."""
        choice = choice or "run"
        session = self.h.session(request) if choice == "run" else None
        if session is not None and session.trace is not None:
            cached = session.shown.get("walkthrough")
            if cached is None:
                cached = session.shown["walkthrough"] = stages(_shapes_of_run(session.trace))
            return cached, session.trace, "run"
        key = "demo" if choice == "run" else choice
        if key not in self._presets:  # the structure's JSON state: no torch on the first page
            from .registry import architecture_state

            spec = self.h.registry.spec(key)
            size = spec.default_size
            self._presets[key] = stages(architecture_state(spec, size, size, 2))
        return self._presets[key], None, key

    def show(self, form: dict[str, Any], request: Any = None) -> dict[str, Any]:
        import gradio as gr

        items, run, _ = self.items(form.get("wt_model") or "run", request)
        try:
            index = int(form.get("wt_stage") or 0)
        except (TypeError, ValueError):
            index = 0
        index = max(0, min(index, len(items) - 1))
        n = run.steps if run is not None else 1
        try:
            step = int(form.get("wt_step") if form.get("wt_step") is not None else n - 1)
        except (TypeError, ValueError):
            step = n - 1
        step = max(0, min(step, n - 1))
        choices = [(f"{i + 1}. {st.label}", i) for i, st in enumerate(items)]
        return {
            "wt_body": page(items, index, run, step),
            "wt_stage": gr.update(choices=choices, value=index),
            "wt_step": gr.update(maximum=max(n - 1, 1), value=step, interactive=n > 1),
            "wt_msg": "",
        }

    def after_run(self, form: dict[str, Any], request: Any = None) -> dict[str, Any]:
        """A new run: its last step, the stage kept."""
        return self.show({**form, "wt_step": None}, request)

    def move(self, form: dict[str, Any], delta: int, request: Any = None) -> dict[str, Any]:
        """Previous / Next: the stage ``delta`` away, within the pass."""
        items, _, _ = self.items(form.get("wt_model") or "run", request)
        try:
            index = int(form.get("wt_stage") or 0)
        except (TypeError, ValueError):
            index = 0
        return {"wt_stage": max(0, min(index + delta, len(items) - 1))}

    def go(self, form: dict[str, Any], request: Any = None) -> dict[str, Any]:
        """The stage of a diagram node (a module name), from the Architecture tab's link."""
        from .common import InputError

        name = str(form.get("wt_go") or "").strip()
        items, _, _ = self.items(form.get("wt_model") or "run", request)
        for i, st in enumerate(items):
            if st.name == name:
                return {"wt_stage": i}
        for i, st in enumerate(items):
            if st.node == name or name.startswith(st.name + "."):
                return {"wt_stage": i}
        raise InputError(f"no stage of the walkthrough shows {name[:80]!r}")


WALK_JS = """
const ARCH_TAB = __ARCH__, WALK_TAB = __WALK__;
const tabs = () => [...document.querySelectorAll('#tabs [role=tab]')];
function showInDiagram(name, node) {
  const t = tabs()[ARCH_TAB];
  if (t) t.click();
  let n = 0;
  const attempt = () => {
    const hl = window.__uvHighlight;
    if (hl && (hl(name) || hl(node))) return;
    if (++n < 60) setTimeout(attempt, 150);
  };
  setTimeout(attempt, 150);
}
window.__uvWalkthroughGo = (name) => {
  const t = tabs()[WALK_TAB];
  if (t) t.click();
  const box = document.querySelector('#wt_go textarea, #wt_go input');
  if (!box) return;
  box.value = name;
  box.dispatchEvent(new Event('input', { bubbles: true }));
  // gradio's textbox submits on a keypress of Enter
  box.dispatchEvent(new KeyboardEvent('keypress', { key: 'Enter', bubbles: true }));
};
element.addEventListener('click', (e) => {
  const a = e.target.closest('a.uv-wt-node');
  if (a) { e.preventDefault(); showInDiagram(a.dataset.name, a.dataset.node); return; }
  const li = e.target.closest('li.uv-wt-item');
  if (li) window.__uvWalkthroughGo(li.dataset.name);
});
// the way back: a button in the Architecture diagram's toolbar opens the selected node's stage
const BACK = __BACK__;
function addBack() {
  document.querySelectorAll('#diagram .uv-tools').forEach((tools) => {
    if (tools.querySelector('.uv-wt-back')) return;
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'uv-wt-back';
    b.innerHTML = BACK;
    b.addEventListener('click', (e) => {
      e.preventDefault();
      const sel = document.querySelector('#diagram .uv-selected > title');
      window.__uvWalkthroughGo(sel ? sel.textContent.replace(/^cluster_/, '') : 'conv_in');
    });
    tools.appendChild(b);
  });
}
addBack();
new MutationObserver(addBack).observe(document.body, { childList: true, subtree: true });
"""


def build(ctx: Any) -> None:
    """The Walkthrough tab: model, stage, step, Previous / Next, the stage and the list."""
    import gradio as gr

    from .common import QUIET, handler, message_slot
    from .i18n import L

    wh = WalkthroughHandlers(ctx.handlers)
    ctx.c["walkthrough_handlers"] = wh
    c = ctx.c
    gr.Markdown(
        L(
            "Follow one forward pass of the UNet in the order the data flows: every stage with "
            "its diffusers name, LDM key, shapes and what flows there. Shapes come from the "
            "model's structure; the pictures from your last Run."
        )
    )
    try:
        first = wh.show({"wt_model": "run", "wt_stage": 0, "wt_step": 0})
        body, choices = first["wt_body"], first["wt_stage"]["choices"]
    except Exception:  # a broken demo folder: the tab draws on the first event instead
        body, choices = "", []
    with gr.Row(equal_height=True):
        c["wt_model"] = gr.Dropdown(
            [(L(k), v) for k, v in MODELS], value="run", label=L("Model"), elem_id="wt_model"
        )
        # the stage list changes with the model: any index is accepted, the handler clamps it
        c["wt_stage"] = gr.Dropdown(choices, value=0, label=L("Stage"), elem_id="wt_stage", scale=3,
                                    allow_custom_value=True)  # fmt: skip
        c["wt_step"] = gr.Slider(0, 1, value=0, step=1, label=L("Step"), elem_id="wt_step")
    with gr.Row():
        c["wt_prev"] = gr.Button(L("Previous"), elem_id="wt_prev", scale=0, min_width=120)
        c["wt_next"] = gr.Button(L("Next"), variant="primary", elem_id="wt_next", scale=0,
                                 min_width=120)  # fmt: skip
        c["wt_msg"] = message_slot("wt_msg")
    c["wt_go"] = gr.Textbox("", elem_id="wt_go", elem_classes=["uv-hidden"], show_label=False)
    titles = ctx.c["tab_titles"]
    js = (
        WALK_JS.replace("__ARCH__", str(ARCHITECTURE_TAB))
        .replace("__WALK__", str(titles.index("Walkthrough")))
        .replace("__BACK__", json.dumps(both("link.walkthrough")))
    )
    c["wt_body"] = gr.HTML(body, elem_id="wt_body", js_on_load=js)

    show = handler("wt_body", "wt_stage", "wt_step", msg="wt_msg")(wh.show)
    after = handler("wt_body", "wt_stage", "wt_step", msg="wt_msg")(wh.after_run)

    def prev(form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        return wh.move(form, -1, request)

    def nxt(form: dict[str, Any], request: gr.Request = None) -> dict[str, Any]:
        return wh.move(form, +1, request)

    prev = handler("wt_stage", msg="wt_msg")(prev)
    nxt = handler("wt_stage", msg="wt_msg")(nxt)
    go = handler("wt_stage", msg="wt_msg")(wh.go)

    def wire(ctx: Any) -> None:
        ctx.on([c["wt_model"].input, c["wt_stage"].input, c["wt_step"].release], show, WALK_IN,
               api_name="walkthrough", trigger_mode="always_last", **{"show_progress": "hidden"})  # fmt: skip
        for button, fn in ((c["wt_prev"], prev), (c["wt_next"], nxt)):
            moved = ctx.on(button.click, fn, ("wt_stage", "wt_model"), **QUIET)
            ctx.on(moved, show, WALK_IN, **QUIET)
        went = ctx.on(c["wt_go"].submit, go, ("wt_go", "wt_model"), **QUIET)
        ctx.on(went, show, WALK_IN, **QUIET)
        if "run_event" in ctx.c:
            ctx.on(ctx.c["run_event"], after, WALK_IN, **QUIET)

    ctx.wiring.append(wire)

"""What an "Experiments" tab calls: plain functions from a pipeline and the controls' values to
images, tables and diagrams (no Gradio here; ``app.experiments`` wires them to the
Experiments tab).

- :func:`choices`: the words, blocks, layers and skips the controls may offer.
- :func:`run_edited`: base and edited runs side by side, their difference, a summary table and
  the edited run's trace (for its heatmaps).
- :func:`run_sweep`: the diagram filled by effect (SVG) and the table, with a progress callback.
- :func:`run_lora_compare`: the same seed without and with LoRAs (``pipe.compare``): images
  side by side and every word's map without | with on one scale.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from unetviz.edits.model_map import ModelMap
from unetviz.edits.session import Comparison, pixel_diff
from unetviz.edits.spec import AblateBlock, AblateSkip, Edit, EditError, Reweight, ScaleTemb
from unetviz.edits.sweep import Sweep
from unetviz.render.edits import comparison_strip, sweep_diagram
from unetviz.training.edit_scores import scorer_for

Progress = Callable[[int, int], None] | None


def choices(pipe: Any, prompt: str | None = None) -> dict[str, list[str]]:
    """``{"words", "blocks", "layers", "skips", "resnets"}`` for dropdowns / checkboxes; skips
    read ``"3: down_blocks.1.attentions.0 -> up_blocks.1.resnets.0"`` (pass them back as-is)."""
    mm = ModelMap(pipe.unet)
    words: list[str] = []
    if prompt:
        words = [w for w in dict.fromkeys(_words(pipe, prompt)) if w]
    return {
        "words": words,
        "blocks": list(mm.blocks),
        "layers": list(mm.layers),
        "skips": [str(s) for s in mm.skips],
        "resnets": list(mm.resnets),
    }


def _words(pipe: Any, prompt: str) -> list[str | None]:
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "encode"):
        return list(tokenizer.encode(prompt)[2])  # the demo's word tokenizer
    return [w for w in prompt.split()]


def edits_from_controls(
    word: str | None = None,
    weight: float = 1.0,
    layers: str | Sequence[str] | None = None,
    skips: Sequence[str | int] = (),
    blocks: Sequence[str] = (),
    mode: str | float = "zero",
    temb_target: str | None = None,
    temb_scale: float = 1.0,
) -> list[Edit]:
    """The edits the controls describe (a word and its weight, ticked skips and blocks, a temb
    scale); at least one, or an EditError saying what to pick."""
    found: list[Edit] = []
    if word:
        lay = None if layers in (None, "", "all") else layers
        found.append(Reweight(word, float(weight), layers=lay))
    for s in skips:
        found.append(AblateSkip(int(str(s).split(":")[0]), mode))
    for b in blocks:
        found.append(AblateBlock(b, mode))
    if temb_target:
        found.append(ScaleTemb(temb_target, float(temb_scale)))
    if not found:
        raise EditError("pick an edit: a word to re-weight, skips or blocks to ablate, or a temb")
    return found


def run_edited(
    pipe: Any,
    prompt: str,
    edits: list[Edit],
    progress: Progress = None,
    edited_prompt: str | None = None,
    **call: Any,
) -> dict[str, Any]:
    """Base and edited runs (same seed): ``{"strip": PIL (base | edited | diff), "base",
    "edited", "diff": PIL images, "heatmaps": the re-weighted word's map on base and edited
    (None without a word), "rows": summary table rows, "headers", "comparison"}``. With
    ``edited_prompt`` (a prompt-to-prompt swap), the edited run draws that prompt and is
    scored against it."""
    after_prompt = edited_prompt or prompt
    edited = pipe(after_prompt, edits=edits, progress=progress, **call)  # a bad edit fails first
    base = _base_run(pipe, prompt, call)
    cmp = Comparison(base, edited, pixel_diff(base.image, edited.image), edited.trace.meta["edits"])
    score = scorer_for(pipe)
    rows = [["mean abs pixel change", f"{cmp.score:.4f}", ""]]
    rows.append(["max abs pixel change", f"{float(cmp.diff.max()):.4f}", ""])
    if score is not None:
        before, after = score(prompt, cmp.base.image), score(after_prompt, cmp.edited.image)
        for key, value in before.items():
            if value is not None or after.get(key) is not None:
                rows.append([key, str(value), str(after.get(key))])
    for e in cmp.edits:
        rows.append(["edit", e["edit"], ", ".join(f"{k}={v}" for k, v in e.items() if k != "edit")])
    words = [e.token for e in edits if isinstance(e, Reweight) and isinstance(e.token, str)]
    return {
        "heatmaps": heatmap_pair(cmp, words[0]) if words else None,
        "strip": comparison_strip(cmp, scale=max(1, 256 // cmp.base.image.width)),
        "base": cmp.base.image,
        "edited": cmp.edited.image,
        "diff": cmp.diff_image(),
        "rows": rows,
        "headers": ["", "base", "edited"],
        "comparison": cmp,
        "edits": cmp.edits,
    }


#: unedited runs by (pipeline, prompt, call): a second edit of the same prompt costs one run
_BASES: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
_BASES_KEPT = 4
_BASES_LOCK = threading.Lock()


def _base_run(pipe: Any, prompt: str, call: dict[str, Any]) -> Any:
    key = (id(pipe), prompt, tuple(sorted((k, repr(v)) for k, v in call.items())))
    with _BASES_LOCK:
        ref, run = _BASES.get(key, (None, None))
        if ref is not None and ref() is pipe:
            _BASES.move_to_end(key)
            return run
    run = pipe(prompt, **call)
    with _BASES_LOCK:
        _BASES[key] = (weakref.ref(pipe), run)
        while len(_BASES) > _BASES_KEPT:
            _BASES.popitem(last=False)
    return run


def heatmap_pair(cmp: Any, word: str | int, side: int = 192) -> Any:
    """The word's (or token position's) cross-attention heatmap over the base and the edited
    image, side by side on one shared scale (not normalised per map: a re-weighted word's map
    shrinks visibly)."""
    from PIL import Image

    from unetviz.render.heatmaps import heat_scales, overlay

    maps = [r.trace.heatmap(word, normalize=None) for r in (cmp.base, cmp.edited)]
    lo, hi = heat_scales(maps, "shared")[0]
    tiles = [
        overlay(m, r.image, lo, hi, size=side)
        for m, r in zip(maps, (cmp.base, cmp.edited), strict=True)
    ]
    pair = Image.new("RGB", (2 * side + 8, side), "white")
    for i, tile in enumerate(tiles):
        pair.paste(tile, (i * (side + 8), 0))
    return pair


#: the word maps a LoRA comparison draws at most (the first words of a long prompt)
LORA_WORDS = 12


def run_lora_compare(
    pipe: Any,
    prompt: str,
    loras: Sequence[tuple[Any, float]],
    progress: Progress = None,
    **call: Any,
) -> dict[str, Any]:
    """``pipe.compare(prompt, loras=...)`` on one seed: ``{"strip": without | with |
    difference, "pairs": [(PIL without | with, token position)] for the first
    :data:`LORA_WORDS` words, each pair on its own shared scale, "comparison"}``. The LoRAs
    are unfused again when it returns (``compare`` restores the weights bit for bit)."""
    from unetviz.render.heatmaps import word_tokens

    cmp = pipe.compare(prompt, loras=list(loras), progress=progress, **call)
    positions = word_tokens(cmp.base.trace)[:LORA_WORDS]
    side = 160
    return {
        "strip": comparison_strip(cmp, scale=max(1, 256 // cmp.base.image.width)),
        "pairs": [(heatmap_pair(cmp, i, side), i) for i in positions],
        "comparison": cmp,
    }


def run_sweep(
    pipe: Any,
    prompt: str,
    over: str = "blocks",
    edit: str = "ablate",
    mode: str | float = "mean",
    word: str | None = None,
    scale: float = 0.0,
    progress: Progress = None,
    **call: Any,
) -> dict[str, Any]:
    """One edit per block / layer / skip: ``{"svg": the diagram filled by effect, "rows",
    "headers", "result"}`` (rows sorted by effect, largest first); ``result.base.trace``
    carries the sweep in its meta (download it as the trace bundle)."""
    from unetviz.render.export import to_svg

    word = (word or None) if edit == "reweight" else None  # the box keeps its text otherwise
    spec = Sweep(over=over, edit=edit, mode=mode, word=word, scale=float(scale))
    result = spec.run(pipe, prompt, score=scorer_for(pipe), progress=progress, **call)
    keys = [k for k in dict.fromkeys(k for r in result.rows for k in r) if k != "edit"]
    rows = [[r.get(k) for k in keys] for r in sorted(result.rows, key=lambda r: -r["change"])]
    return {
        "svg": to_svg(sweep_diagram(result)),
        "rows": rows,
        "headers": keys,
        "result": result,
    }

"""``unetviz attention "a photo of a cat" --model PATH -o out/``: generate one image and write
what the UNet attended to.

    out/image.png                 the generated image
    out/heatmaps/NN_word.png      one cross-attention heatmap per prompt word, over a greyscale
                                  copy of the image, captioned (word, layers, steps, scale) with
                                  a colour bar
    out/grid.png                  with --grid: every word on one contact sheet
    out/run.trace                 the trace bundle (``unetviz.Trace.load``)
    out/tokens.json               token labels, words, scale, and the files written

``--model`` is ``demo`` (the shipped model), ``assets/demo`` or any demo-format folder, a
diffusers SD 1.x/2.x/SDXL folder, or a single original-format ``.safetensors`` file
(``unetviz.detect.detect_model`` decides). By default every word's map is drawn on one shared
colour scale of raw attention probabilities, so words compare (``--scale per-token`` gives
each map its own range; ``--normalize`` rescales each map first). ``--recipe daam|p2p``
(or ``daam-approx``) aggregates as those papers' code does (``--preset`` is its deprecated old name). Errors print
one ``error:`` line (exit status 2) and leave no partial output folder behind.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from unetviz.cli_progress import StepProgress, loaded, loading
from unetviz.errors import UnetvizError
from unetviz.outputs import check_output_folder, write_folder
from unetviz.pipelines.base import MAX_SEED, check_seed

_SAFE = re.compile(r"[^0-9A-Za-z_-]+")
#: Per-map normalisation before colouring (``trace.heatmap(normalize=...)``).
NORMALIZE = ("none", "max", "sum", "minmax")
SCALES = ("shared", "per-token")
MIN_SIDE = 256  # heatmap PNGs are at least this many pixels on their shorter side
_VALUE = {
    "none": "mean attention probability",
    "max": "attention / its max",
    "sum": "attention share (map sums to 1)",
    "minmax": "min-max normalised attention",
}


def recipes() -> tuple[str, ...]:
    """The aggregation recipes (``trace.heatmap(preset=...)``; ``unetviz.capture.aggregate``)."""
    from unetviz.capture.aggregate import PRESETS

    return tuple(PRESETS)


def _file_word(word: str) -> str:
    return _SAFE.sub("_", word).strip("_")[:40] or "token"


def word_groups(words: list[str | None], tokens: list[str], specials: bool = False):
    """``(label, indices)`` per distinct word (``unetviz.render.heatmaps.word_groups`` on a
    trace with these words and tokens; kept for callers of the first release)."""
    from unetviz.render.heatmaps import word_groups as groups

    return groups({"words": words, "tokens": tokens}, specials)


@dataclass(frozen=True)
class HeatmapStyle:
    """How the heatmap PNGs are computed and drawn (checked by :meth:`check`)."""

    recipe: str | None = None
    normalize: str = "none"
    scale: str = "shared"
    grid: bool = False
    specials: bool = False

    def check(self) -> HeatmapStyle:
        """Raise UnetvizError naming a value that is not one of the choices."""
        for flag, value, allowed in (
            ("--recipe", self.recipe, recipes()),
            ("--normalize", self.normalize, NORMALIZE),
            ("--scale", self.scale, SCALES),
        ):
            if value is not None and value not in allowed:
                raise UnetvizError(
                    f"{flag} {str(value)[:40]!r}: expected one of {', '.join(allowed)}"
                )
        return self


def run_attention(
    prompt: str,
    model: str = "demo",
    output: Path = Path("out"),
    negative_prompt: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    scheduler: str | None = None,
    config: Path | None = None,
    prediction_type: str | None = None,
    negative_maps: bool = False,
    stream: bool = False,
    specials: bool = False,
    preset: str | None = None,
    progress: bool = True,
    force: bool = False,
    recipe: str | None = None,
    normalize: str = "none",
    scale: str = "shared",
    grid: bool = False,
    lora: list[str] | None = None,
) -> dict[str, Any]:
    """Generate, then write the image, one captioned heatmap PNG per word (and a contact sheet
    with ``grid``), the trace bundle and tokens.json into ``output``
    (``unetviz.outputs.write_folder``: atomic, and a folder unetviz did not write is refused
    unless ``force``). ``preset`` is the old name of ``recipe``. Returns tokens.json's content.

    Every argument is checked, and the destination too, before the model loads."""
    style = HeatmapStyle(recipe or preset, normalize, scale, grid, specials).check()
    _check_numbers(seed, guidance)
    check_output_folder(output, force)
    from unetviz.lora import parse_lora_arg
    from unetviz.pipelines import load_pipeline

    loras = [parse_lora_arg(item) for item in lora or []]
    started = loading(model)
    pipe = load_pipeline(
        model,
        loras=loras,
        dtype=dtype,
        device=device,
        scheduler=scheduler,
        config=config,
        prediction_type=prediction_type,
    )
    loaded(started)
    kwargs: dict[str, Any] = {"negative_prompt": negative_prompt, "seed": seed}
    sizes = {"steps": steps, "guidance": guidance, "height": height, "width": width}
    kwargs.update({k: v for k, v in sizes.items() if v is not None})
    if negative_maps:
        kwargs["half"] = "uncond"
    if stream:
        kwargs["mode"] = "stream"
    if style.recipe == "daam":  # DAAM's exact recipe needs per-head sums kept while sampling
        kwargs["daam"] = True
    run = _generate(pipe, prompt, kwargs, steps or 25, progress)
    info = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "maps_of": "negative_prompt" if negative_maps else "prompt",
        "model": run.trace.meta.get("model", str(model)),
        "seed": seed,
        "truncated": run.extra.get("truncated", "") if run.extra else "",
    }
    took = run.extra.get("took", "") if isinstance(run.extra, dict) else ""
    write_folder(output, lambda tmp: _fill(tmp, run, style, info), force=force)
    return {**info, "took": took} if took else info


def _check_numbers(seed: int, guidance: float | None) -> None:
    check_seed(seed, "--seed")
    if guidance is not None and not math.isfinite(guidance):
        raise UnetvizError(f"--guidance {guidance}: expected a finite number")


def _generate(pipe: Any, prompt: str, kwargs: dict[str, Any], total: int, progress: bool) -> Any:
    """Run the pipeline, with the progress of its sampling steps on stderr (a bar on a
    terminal, lines on a pipe). The bar starts at the first step, so an error found before
    sampling prints only its ``error:`` line; the steps' timing ends in ``run.extra``."""
    if not progress:
        return pipe(prompt, **kwargs)
    with StepProgress("sampling") as tick:
        run = pipe(prompt, progress=tick, **kwargs)
    if isinstance(getattr(run, "extra", None), dict):
        run.extra["took"] = tick.summary()
    return run


def _fill(tmp: Path, run: Any, style: HeatmapStyle, info: dict[str, Any]) -> None:
    """Write every output of ``run`` into the temporary folder ``tmp``."""
    trace = run.trace
    run.image.save(tmp / "image.png")
    (tmp / "heatmaps").mkdir()
    pictures = heatmap_pictures(trace, run.image, style, info["prompt"])
    files = []
    weights = trace.meta.get("token_weights") or []
    for n, (label, indices, tile, _) in enumerate(pictures["words"]):
        name = f"heatmaps/{n:02d}_{_file_word(label)}.png"
        tile.save(tmp / name)
        entry = {"word": label, "tokens": indices, "file": name}
        if weights and indices and weights[indices[0]] != 1.0:  # emphasis, e.g. (word:1.3)
            entry["weight"] = weights[indices[0]]
        files.append(entry)
    if style.grid:
        pictures["grid"].save(tmp / "grid.png")
    trace.save(tmp / "run.trace", image=run.image)
    info.update(
        tokens=list(trace.tokens),
        words=list(trace.words),
        heatmaps=files,
        grid="grid.png" if style.grid else None,
        recipe=style.recipe,
        normalize=style.normalize,
        scale=style.scale,
        scales=[list(s) for *_, s in pictures["words"]],
        colormap=pictures["colormap"],
    )
    (tmp / "tokens.json").write_text(json.dumps(info, indent=1) + "\n")


def heatmap_pictures(
    trace: Any, image: Any, style: HeatmapStyle, title: str | None = None
) -> dict[str, Any]:
    """The captioned heatmap of every word (``(word, tokens, PIL image, (vmin, vmax))``) and,
    with ``style.grid``, the contact sheet of all of them, titled ``title``."""
    from unetviz.render import heatmaps as hm

    groups = hm.word_groups(trace, style.specials)
    if not groups:
        raise UnetvizError("the prompt has no words to draw heatmaps of")
    norm = None if style.normalize == "none" else style.normalize
    maps = [trace.heatmap(idx, preset=style.recipe, normalize=norm) for _, idx in groups]
    scales = hm.heat_scales(maps, style.scale)
    size = _tile_size(image)
    lines = describe(trace, style, len(groups))
    label = _VALUE[style.normalize]
    if style.recipe and style.normalize == "none":  # a recipe's own units (DAAM sums maps)
        label = f"attention, {style.recipe} aggregate"
    words = []
    for (word, idx), m, sc in zip(groups, maps, scales, strict=True):
        tile = hm.overlay(m, image, *sc, size=size)
        words.append((word, idx, hm.captioned(tile, word, lines, sc, label), sc))
    out: dict[str, Any] = {"words": words, "colormap": hm.COLORMAP}
    if style.grid:
        shared = style.scale == "shared"
        tiles = [
            hm.captioned(hm.overlay(m, image, *sc, size=size), w, [], None if shared else sc, label)
            for (w, _), m, sc in zip(groups, maps, scales, strict=True)
        ]
        sheet = hm.contact_sheet(tiles, cols=min(4, len(tiles)))
        title = title or _prompt_title(trace)
        out["grid"] = hm.captioned(sheet, title, lines, scales[0] if shared else None, label)
    return out


def _tile_size(image: Any) -> tuple[int, int]:
    """The heatmap's size: the image's, enlarged so the shorter side is at least MIN_SIDE."""
    w, h = image.size
    k = max(1.0, MIN_SIDE / min(w, h))
    return round(h * k), round(w * k)


def _prompt_title(trace: Any) -> str:
    words = [w for w in (trace.words or []) if w]
    return " ".join(dict.fromkeys(words)) if words else "cross-attention"


def describe(trace: Any, style: HeatmapStyle, n_words: int) -> list[str]:
    """Caption lines: which layers and steps were averaged, and the colour scale."""
    recs = [r for r in trace.attention.values() if r.captured]
    res = sorted({r.res[0] for r in recs}, reverse=True)
    sides = "/".join(map(str, res))
    if style.recipe:
        layers = f"layers: {style.recipe} recipe (of {len(recs)}, {sides} px)"
    else:
        layers = f"layers: all {len(recs)} ({sides} px)"
    ts = [t for t in (trace.timesteps or []) if t is not None]
    steps = f"steps: all {trace.steps}" + (f", t={ts[0]:g}..{ts[-1]:g}" if ts else "")
    scale = f"shared, {n_words} words" if style.scale == "shared" else "per word"
    return [layers, steps, f"scale: {scale}, norm {style.normalize}"]


def register(app: typer.Typer) -> None:
    """Add ``attention`` to the ``unetviz`` command (called by unetviz.cli)."""
    app.command(name="attention")(attention)


def attention(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: str = typer.Option(
        "demo", "--model", "-m", help="demo, a diffusers SD folder or a .safetensors file."
    ),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Output folder."),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
    seed: int = typer.Option(0, "--seed", "-s", help=f"0..{MAX_SEED}."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default 25)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="CFG scale (default: model's)."),
    height: int = typer.Option(None, "--height", help="Pixels (default: the model's)."),
    width: int = typer.Option(None, "--width", help="Pixels (default: the model's)."),
    dtype: str = typer.Option(None, "--dtype", help="float32, float16 or bfloat16."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    scheduler: str = typer.Option(
        None, "--scheduler", help="ddim, euler, euler_a, dpm, pndm, lms (default: model's)."
    ),
    config: Path = typer.Option(
        None, "--config", help="For a single file: a diffusers folder with its configs."
    ),
    prediction_type: str = typer.Option(
        None, "--prediction-type", help="epsilon or v_prediction (default: the model's)."
    ),
    negative_maps: bool = typer.Option(
        False, "--negative-maps", help="Maps of the negative prompt (unconditional half)."
    ),
    stream: bool = typer.Option(False, "--stream", help="Keep a running sum, not every step."),
    specials: bool = typer.Option(False, "--specials", help="Also write SOS/EOS maps."),
    recipe: str = typer.Option(
        None, "--recipe", help="Aggregation recipe: daam, daam-approx or p2p (as in the papers)."
    ),
    preset: str = typer.Option(None, "--preset", hidden=True, help="Old name of --recipe."),
    normalize: str = typer.Option("none", "--normalize", help="none, max, sum or minmax."),
    scale: str = typer.Option("shared", "--scale", help="shared (words compare) or per-token."),
    grid: bool = typer.Option(False, "--grid", help="Also write grid.png: all words, one sheet."),
    lora: list[str] = typer.Option(
        None, "--lora", help="A LoRA .safetensors to fuse: FILE[:SCALE] (repeatable)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into an existing non-empty folder unetviz did not create "
        "(replaces same-named files only, deletes nothing).",
    ),
) -> None:
    """Generate an image and write one cross-attention heatmap per prompt word."""
    if preset is not None:
        if recipe is not None and recipe != preset:
            raise UnetvizError(f"--preset {preset!r} and --recipe {recipe!r}: give only --recipe")
        typer.echo("warning: --preset is deprecated for attention; use --recipe", err=True)
    options = {k: v for k, v in locals().items() if k not in ("negative", "preset", "recipe")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = run_attention(negative_prompt=negative, recipe=recipe or preset, **options)
    for w in caught:
        if issubclass(w.category, UserWarning):
            typer.echo(f"warning: {w.message}", err=True)
    grid_note = f", {output}/grid.png" if grid else ""
    typer.echo(
        f"wrote {output}/image.png, {len(info['heatmaps'])} heatmaps in {output}/heatmaps/"
        f"{grid_note}, {output}/run.trace" + (f" ({info['took']})" if info.get("took") else ""),
        err=True,
    )

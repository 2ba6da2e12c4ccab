"""``unetviz attention "a photo of a cat" --model PATH -o out/``: generate one image and write
what the UNet attended to.

    out/image.png                 the generated image
    out/heatmaps/NN_word.png      one cross-attention heatmap per prompt word, over the image
    out/run.trace                 the trace bundle (``unetviz.Trace.load``)
    out/tokens.json               token labels, words, and the files written

``--model`` is ``demo`` (the shipped model), a diffusers SD 1.x/2.x/SDXL folder, or a single
original-format ``.safetensors`` file. A progress bar shows the sampling steps. Errors print one
``error:`` line (exit status 2) and leave no partial output folder behind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import typer

from unetviz.outputs import check_output_folder, write_folder

_SAFE = re.compile(r"[^0-9A-Za-z_-]+")


def _file_word(word: str) -> str:
    return _SAFE.sub("_", word).strip("_")[:40] or "token"


def word_groups(words: list[str | None], tokens: list[str], specials: bool = False):
    """``(label, indices)`` per distinct word in prompt order (merged BPE pieces, repeated
    words together); with ``specials``, SOS and the first EOS too."""
    groups: dict[str, list[int]] = {}
    for i, word in enumerate(words):
        if word is not None and any(c.isalnum() for c in word):
            groups.setdefault(word, []).append(i)
    out = list(groups.items())
    if specials and tokens:
        out.insert(0, (tokens[0], [0]))
        eos = next((i for i, w in enumerate(words) if i > 0 and w is None), None)
        if eos is not None:
            out.append((tokens[eos], [eos]))
    return out


def _load(model: str, **sd_options: Any):
    from unetviz.pipelines import load_pipeline

    path = Path(model)
    is_sd = path.is_file() or (path / "model_index.json").is_file()
    if model != "demo" and (is_sd or not path.exists()):
        from unetviz.pipelines.sd import load_sd_pipeline

        return load_sd_pipeline(path, **sd_options)
    given = [f"--{k.replace('_', '-')}" for k, v in sd_options.items() if v is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)}: only for Stable Diffusion models, and {model!r} is a demo model"
        )
    return load_pipeline(model)


def _overlay(heatmap: Any, image: Any) -> Any:
    try:
        from unetviz.render.plots import heatmap_image
    except ImportError:  # render not installed: a plain PIL overlay
        import numpy as np
        from PIL import Image

        a = heatmap.float().numpy()
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        heat = Image.fromarray((a * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
        red = Image.merge("RGB", (heat, Image.new("L", heat.size), Image.new("L", heat.size)))
        return Image.blend(image.convert("RGB"), red, 0.6)
    return heatmap_image(heatmap, image=image)


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
) -> dict[str, Any]:
    """Generate, then write the image, one heatmap PNG per word, the trace bundle and
    tokens.json into ``output`` (``unetviz.outputs.write_folder``: atomic, and a folder
    unetviz did not write is refused unless ``force``). Returns the tokens.json content.

    The destination is checked before the model loads, so a refused folder costs nothing."""
    check_output_folder(output, force)
    pipe = _load(
        model,
        dtype=dtype,
        device=device,
        scheduler=scheduler,
        config=config,
        prediction_type=prediction_type,
    )
    kwargs: dict[str, Any] = {"negative_prompt": negative_prompt, "seed": seed}
    if steps is not None:
        kwargs["steps"] = steps
    if guidance is not None:
        kwargs["guidance"] = guidance
    if height is not None:
        kwargs["height"] = height
    if width is not None:
        kwargs["width"] = width
    if negative_maps:
        kwargs["half"] = "uncond"
    if stream:
        kwargs["mode"] = "stream"
    total = steps or 25
    if progress:
        with typer.progressbar(length=total, label="sampling", file=sys.stderr) as bar:
            done = [0]

            def tick(i: int, n: int) -> None:
                if bar.length != n:
                    bar.length = n
                bar.update(i - done[0])
                done[0] = i

            run = pipe(prompt, progress=tick, **kwargs)
    else:
        run = pipe(prompt, **kwargs)

    trace = run.trace
    info: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        run.image.save(tmp / "image.png")
        (tmp / "heatmaps").mkdir()
        files = []
        groups = word_groups(trace.words, trace.tokens, specials)
        for n, (label, indices) in enumerate(groups):
            heat = trace.heatmap(indices, preset=preset)
            name = f"heatmaps/{n:02d}_{_file_word(label)}.png"
            _overlay(heat, run.image).save(tmp / name)
            files.append({"word": label, "tokens": indices, "file": name})
        trace.save(tmp / "run.trace")
        info.update(
            prompt=prompt,
            negative_prompt=negative_prompt,
            maps_of="negative_prompt" if negative_maps else "prompt",
            model=trace.meta.get("model", str(model)),
            seed=seed,
            tokens=list(trace.tokens),
            words=list(trace.words),
            heatmaps=files,
            truncated=run.extra.get("truncated", "") if run.extra else "",
        )
        (tmp / "tokens.json").write_text(json.dumps(info, indent=1) + "\n")

    write_folder(output, fill, force=force)
    return info


def register(app: typer.Typer) -> None:
    """Add ``attention`` to the ``unetviz`` command (called by unetviz.cli)."""
    from unetviz.cli import CliError

    @app.command()
    def attention(
        prompt: str = typer.Argument(..., help="The prompt."),
        model: str = typer.Option(
            "demo", "--model", "-m", help="demo, a diffusers SD folder or a .safetensors file."
        ),
        output: Path = typer.Option(Path("out"), "--output", "-o", help="Output folder."),
        negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
        seed: int = typer.Option(0, "--seed", "-s"),
        steps: int = typer.Option(None, "--steps", help="Sampling steps (default 25)."),
        guidance: float = typer.Option(
            None, "--guidance", "-g", help="CFG scale (default: the model's)."
        ),
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
        stream: bool = typer.Option(
            False, "--stream", help="Keep a running sum of maps, not every step's."
        ),
        specials: bool = typer.Option(False, "--specials", help="Also write SOS/EOS maps."),
        preset: str = typer.Option(None, "--preset", help="Aggregation preset (daam, p2p)."),
        force: bool = typer.Option(
            False,
            "--force",
            help="Write into an existing non-empty folder unetviz did not create "
            "(replaces same-named files only, deletes nothing).",
        ),
    ) -> None:
        """Generate an image and write one cross-attention heatmap per prompt word."""
        import warnings

        from unetviz.capture import TraceError
        from unetviz.pipelines.base import PipelineError
        from unetviz.weights import WeightsError

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                info = run_attention(
                    prompt,
                    model=model,
                    output=output,
                    negative_prompt=negative,
                    seed=seed,
                    steps=steps,
                    guidance=guidance,
                    height=height,
                    width=width,
                    dtype=dtype,
                    device=device,
                    scheduler=scheduler,
                    config=config,
                    prediction_type=prediction_type,
                    negative_maps=negative_maps,
                    stream=stream,
                    specials=specials,
                    preset=preset,
                    force=force,
                )
            except (PipelineError, WeightsError, TraceError, ValueError, OSError) as exc:
                raise CliError(str(exc)) from None
        for w in caught:
            if issubclass(w.category, UserWarning):
                typer.echo(f"warning: {w.message}", err=True)
        typer.echo(
            f"wrote {output}/image.png, {len(info['heatmaps'])} heatmaps in {output}/heatmaps/, "
            f"{output}/run.trace",
            err=True,
        )

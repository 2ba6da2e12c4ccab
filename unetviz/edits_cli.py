"""``unetviz edit`` and ``unetviz sweep``: interventions from the command line.

    unetviz edit "a red circle" --model demo --reweight red=0 --ablate-skip 3 -o out/
        -> out/base.png, edited.png, diff.png, base.trace, edited.trace, summary.json
    unetviz sweep "a red circle" --model demo --over blocks -o out/
        -> out/diagram.svg (filled by effect), sweep.csv, sweep.json, base.png, base.trace

Every folder is written by ``unetviz.outputs.write_folder`` (atomic; a folder unetviz did not
write is refused unless ``--force``), checked before the model loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .callargs import index_or_name
from .cli_progress import StepProgress, loaded, loading
from .edits.spec import (
    AblateBlock,
    AblateSkip,
    Edit,
    EditError,
    Patch,
    Replace,
    Reweight,
    ScaleTemb,
)
from .edits.sweep import Sweep
from .outputs import check_output_folder, write_folder


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.rpartition("=")
    if not sep or not key or not value:
        raise EditError(f"{flag} {text!r}: expected NAME=VALUE, e.g. {flag} red=0")
    return key.strip(), value.strip()


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EditError(f"{flag}: {text!r} is not a number") from None


def _mode(text: str) -> str | float:
    return text if text in ("zero", "mean") else _float(text, "--mode")


def build_edits(
    reweight: list[str],
    layers: str | None,
    ablate_skip: list[str],
    ablate_block: list[str],
    scale_temb: list[str],
    replace: str | None,
    patch: list[str],
    mode: str,
) -> list[Edit]:
    """Edits from the command line's flags (each checked when made)."""
    found: list[Edit] = []
    lay = [s.strip() for s in layers.split(",")] if layers else None
    for item in reweight:
        word, value = _pair(item, "--reweight")
        token = index_or_name(word)
        found.append(Reweight(token, _float(value, "--reweight"), layers=lay))
    for item in ablate_skip:
        found.append(AblateSkip(index_or_name(item), _mode(mode)))
    for item in ablate_block:
        found.append(AblateBlock(item, _mode(mode)))
    for item in scale_temb:
        name, value = _pair(item, "--scale-temb")
        found.append(ScaleTemb(name, _float(value, "--scale-temb")))
    if replace:
        found.append(Replace(replace))
    for item in patch:
        name, source = _pair(item, "--patch")
        found.append(Patch(name, source))
    if not found:
        raise EditError(
            "no edit given: use --reweight WORD=SCALE, --ablate-skip I, --ablate-block NAME, "
            "--scale-temb NAME=SCALE, --replace PROMPT or --patch NAME=PROMPT"
        )
    return found


def _load(model: str, dtype: str | None, device: str | None, lora: list[str] | None) -> Any:
    from unetviz.lora import parse_lora_arg
    from unetviz.pipelines import load_pipeline

    loras = [parse_lora_arg(item) for item in lora or []]
    started = loading(model)
    pipe = load_pipeline(model, dtype=dtype, device=device, loras=loras)
    loaded(started)
    return pipe


def run_edit(
    prompt: str, edits: list[Edit], output: Path, model: str = "demo", force: bool = False, **kw
) -> dict[str, Any]:
    """Base and edited runs of ``prompt``, written to ``output``; returns summary.json's data."""
    from .render.edits import comparison_strip
    from .training.edit_scores import scorer_for

    check_output_folder(output, force)
    pipe = _load(model, kw.pop("dtype", None), kw.pop("device", None), kw.pop("lora", None))
    call = {k: v for k, v in kw.items() if v is not None}
    start = time.perf_counter()
    with StepProgress("edited and base runs", runs=2) as tick:
        cmp = pipe.compare(prompt, edits=edits, progress=tick, **call)
    score = scorer_for(pipe)
    summary = {
        "prompt": prompt,
        "model": str(model),
        "call": call,
        "edits": cmp.edits,
        "mean_abs_pixel_change": round(cmp.score, 6),
        "max_abs_pixel_change": round(float(cmp.diff.max()), 6),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if score is not None:
        summary["base_scores"] = score(prompt, cmp.base.image)
        summary["edited_scores"] = score(prompt, cmp.edited.image)

    def fill(tmp: Path) -> None:
        cmp.base.image.save(tmp / "base.png")
        cmp.edited.image.save(tmp / "edited.png")
        cmp.diff_image().save(tmp / "diff.png")
        comparison_strip(cmp, scale=max(1, 256 // cmp.base.image.width)).save(tmp / "strip.png")
        cmp.base.trace.save(tmp / "base.trace")
        cmp.edited.trace.save(tmp / "edited.trace")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    write_folder(output, fill, force=force)
    return summary


def run_sweep(
    prompt: str,
    output: Path,
    model: str = "demo",
    force: bool = False,
    spec: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **kw: Any,
) -> Any:
    """A sweep of ``prompt`` written to ``output``; returns the SweepResult."""
    from unetviz.render.export import to_svg

    from .render.edits import sweep_diagram
    from .training.edit_scores import scorer_for

    sweep = Sweep(**(spec or {}))
    check_output_folder(output, force)
    pipe = _load(model, kw.pop("dtype", None), kw.pop("device", None), kw.pop("lora", None))
    call = {k: v for k, v in kw.items() if v is not None}
    result = sweep.run(pipe, prompt, score=scorer_for(pipe), progress=progress, **call)
    svg = to_svg(sweep_diagram(result))

    def fill(tmp: Path) -> None:
        (tmp / "diagram.svg").write_text(svg)
        (tmp / "sweep.csv").write_text(result.to_csv())
        (tmp / "sweep.json").write_text(result.to_json())
        result.base.image.save(tmp / "base.png")
        result.base.trace.save(tmp / "base.trace")

    write_folder(output, fill, force=force)
    return result


_FORCE_HELP = (
    "Write into an existing non-empty folder unetviz did not create (replaces same-named "
    "files only, deletes nothing)."
)


def _run_options(seed, steps, guidance, negative, dtype, device, height, width) -> dict[str, Any]:
    return dict(
        seed=seed,
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        negative_prompt=negative or None,
        dtype=dtype,
        device=device,
    )


def register(app: typer.Typer) -> None:
    """Add ``edit`` and ``sweep`` to the ``unetviz`` command (called by unetviz.cli)."""
    _add_edit(app)
    _add_sweep(app)


def _model_opt() -> Any:
    return typer.Option("demo", "--model", "-m", help="demo or a Stable Diffusion model.")


def _out_opt() -> Any:
    return typer.Option(..., "--output", "-o", help="Output folder.")


def _add_edit(app: typer.Typer) -> None:
    from unetviz.cli import CliError
    from unetviz.errors import UnetvizError

    model_opt, out_opt = _model_opt(), _out_opt()

    @app.command(name="edit")
    def edit_command(
        prompt: str = typer.Argument(..., help="The prompt."),
        model: str = model_opt,
        output: Path = out_opt,
        reweight: list[str] = typer.Option([], help="WORD=SCALE: P2P re-weighting (repeat)."),  # noqa: B008
        layers: str = typer.Option(None, help="Re-weight only here: down, mid, up or names."),
        ablate_skip: list[str] = typer.Option([], help="Skip index or 'src -> dst' (repeat)."),  # noqa: B008
        ablate_block: list[str] = typer.Option([], help="Module name to ablate (repeat)."),  # noqa: B008
        mode: str = typer.Option("zero", help="Ablation: zero, mean or a scale factor."),
        scale_temb: list[str] = typer.Option([], help="RESNET_OR_BLOCK=SCALE (repeat)."),  # noqa: B008
        replace: str = typer.Option(None, help="P2P word swap: the source prompt."),
        patch: list[str] = typer.Option([], help="NAME=SOURCE_PROMPT: activation patching."),  # noqa: B008
        seed: int = typer.Option(0, "--seed", "-s"),
        steps: int = typer.Option(None, help="Sampling steps (default 25)."),
        guidance: float = typer.Option(None, "--guidance", "-g", help="CFG scale."),
        height: int = typer.Option(None, help="Image height in pixels (default: the model's)."),
        width: int = typer.Option(None, help="Image width in pixels (default: the model's)."),
        negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
        dtype: str = typer.Option(None, help="SD models: float32, float16 or bfloat16."),
        device: str = typer.Option(None, help="SD models: cpu, cuda (default: auto)."),
        lora: list[str] = typer.Option([], "--lora", help="FILE[:SCALE]: a LoRA to fuse (repeat)."),  # noqa: B008
        force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    ) -> None:
        """Run a prompt with and without interventions; write both images and their diff."""
        try:
            chosen = build_edits(
                reweight, layers, ablate_skip, ablate_block, scale_temb, replace, patch, mode
            )
            opts = _run_options(seed, steps, guidance, negative, dtype, device, height, width) | {
                "lora": lora
            }
            summary = run_edit(prompt, chosen, output, model=model, force=force, **opts)
        except UnetvizError as exc:
            raise CliError(str(exc)) from None
        typer.echo(
            f"wrote {output}/base.png, edited.png, diff.png, strip.png, base.trace, "
            f"edited.trace, summary.json (mean abs pixel change "
            f"{summary['mean_abs_pixel_change']:.4f}; 2 runs in {summary['seconds']:.1f} s)",
            err=True,
        )


def _add_sweep(app: typer.Typer) -> None:
    from unetviz.cli import CliError
    from unetviz.errors import UnetvizError

    model_opt, out_opt = _model_opt(), _out_opt()

    @app.command(name="sweep")
    def sweep_command(
        prompt: str = typer.Argument(..., help="The prompt."),
        model: str = model_opt,
        output: Path = out_opt,
        over: str = typer.Option("blocks", help="blocks, layers or skips."),
        edit: str = typer.Option("ablate", help="ablate, reweight (needs --word) or temb."),
        mode: str = typer.Option("mean", help="Ablation: zero, mean or a scale factor."),
        word: str = typer.Option(None, help="The word a reweight sweep removes."),
        scale: float = typer.Option(0.0, help="Scale of reweight / temb sweeps."),
        seed: int = typer.Option(0, "--seed", "-s"),
        steps: int = typer.Option(None, help="Sampling steps (default 25)."),
        guidance: float = typer.Option(None, "--guidance", "-g", help="CFG scale."),
        height: int = typer.Option(None, help="Image height in pixels (default: the model's)."),
        width: int = typer.Option(None, help="Image width in pixels (default: the model's)."),
        negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
        dtype: str = typer.Option(None, help="SD models: float32, float16 or bfloat16."),
        device: str = typer.Option(None, help="SD models: cpu, cuda (default: auto)."),
        lora: list[str] = typer.Option([], "--lora", help="FILE[:SCALE]: a LoRA to fuse (repeat)."),  # noqa: B008
        force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    ) -> None:
        """One intervention per block, layer or skip; the diagram filled by each one's effect."""
        spec = dict(over=over, edit=edit, mode=mode, word=word, scale=scale)
        tick = StepProgress("sweep")
        try:
            spec["mode"] = _mode(mode)
            Sweep(**spec)  # checked before the bar shows
            check_output_folder(output, force)
            opts = _run_options(seed, steps, guidance, negative, dtype, device, height, width) | {
                "lora": lora
            }
            with tick:
                result = run_sweep(
                    prompt, output, model=model, force=force, spec=spec, progress=tick, **opts
                )
        except UnetvizError as exc:
            raise CliError(str(exc)) from None
        top = sorted(result.rows, key=lambda r: -r["change"])[:3]
        best = ", ".join(f"{r['target']} {r['change']:.4f}" for r in top)
        typer.echo(
            f"wrote {output}/diagram.svg, sweep.csv, sweep.json, base.png, base.trace "
            f"({len(result.rows)} runs in {result.seconds:.1f} s; largest: {best})",
            err=True,
        )

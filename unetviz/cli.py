"""The ``unetviz`` command.

    unetviz diagram --preset sdxl -o sdxl.svg          # .svg .png .pdf .dot/.gv .json
    unetviz diagram --config unet/config.json --height 768 --width 512 --detail layers -o u.png
    unetviz diagram --model path/to/model -o model.pdf  # reads only the config: no weights
    unetviz diagram --model demo -o demo.svg            # the shipped demo model (or assets/demo)
    unetviz summary --preset sd15 [--detail layers]     # a table: shapes, params, MACs, names

``--preset`` names a *model* preset (sd15, sd21, sdxl); the aggregation recipes of
``unetviz attention`` are ``--recipe`` (daam, p2p). Structure comes from a capture of the UNet
built on PyTorch's ``meta`` device: shapes only, no weights, no memory, cached by
:mod:`unetviz.structure` (the preset structures ship with the package; ``unetviz
bundle-structures`` rewrites them), so a cached diagram needs no torch at all.

Bad input (unknown preset, unreadable config, unknown extension, a size the UNet cannot take, a
bad flag, a full disk) prints one ``error:`` line and exits with status 2, leaving no file
behind: every ``unetviz.errors.UnetvizError`` is such an error. Anything else is a bug and
keeps its traceback.

Adding a subcommand (``attention``, ``app``): write a module with ``register(app: typer.Typer)``
that adds the command with ``@app.command()``, and name it in :data:`SUBCOMMANDS`. It is
imported only when its command is run, so ``unetviz diagram`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from .errors import UnetvizError
from .structure import BUNDLED, BUNDLED_DIR, cache_dir, structure, structure_key

__all__ = [
    "BUNDLED",
    "BUNDLED_DIR",
    "CliError",
    "app",
    "cache_dir",
    "main",
    "structure",
    "structure_key",
    "summary_table",
]

#: lazily imported subcommands: name -> (module with ``register(app)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "attention": ("unetviz.attention_cli", "Cross-attention heatmaps of a prompt."),
    "app": ("unetviz.app.cli", "Start the web app."),
    "edit": ("unetviz.edits_cli", "Run a prompt with and without interventions; compare."),
    "sweep": ("unetviz.edits_cli", "One intervention per block or skip: which parts matter."),
    "batch": ("unetviz.batch.cli", "Attention statistics over a prompt set (local or Ray)."),
    "report": ("unetviz.report.cli", "One self-contained HTML report of a run or trace."),
    "features": ("unetviz.features_cli", "What every block sees: a feature-PCA contact sheet."),
}

DIRECTIONS = ("TB", "LR")
MAX_BATCH = 64

app = typer.Typer(
    name="unetviz",
    help="See inside the Stable Diffusion UNet: diagrams, summaries, attention maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CliError(UnetvizError):
    """A user error found by the CLI itself. :func:`main` prints every ``UnetvizError`` as one
    ``error:`` line and exits with status 2; anything else is a bug and keeps its traceback."""


# ---------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class Source:
    """What ``--preset`` / ``--config`` / ``--model`` named: the UNet config, a label for the
    title, pixels per latent pixel (8 through an SD VAE, 1 for the demo model) and the number
    of context tokens its text encoder gives."""

    config: Any
    label: str
    factor: int = 8
    tokens: int = 77


def resolve_source(preset: str | None, config: Path | None, model: str | None) -> Source:
    """The :class:`Source` of exactly one of ``--preset`` / ``--config`` / ``--model``
    (``sd15`` when none is given). ``--model`` takes anything ``unetviz.detect.detect_model``
    knows (``demo``, ``assets/demo``, a diffusers folder, a model root, a unet folder, a
    config.json); only the config is read."""
    from .config import PRESETS, UNetConfig

    given = [x for x in (preset, config, model) if x is not None]
    if len(given) > 1:
        raise CliError("give only one of --preset, --config and --model")
    if config is not None:
        return Source(UNetConfig.from_json(config), str(config))
    if model is not None:
        return _model_source(model)
    name = preset or "sd15"
    if name not in PRESETS:
        raise CliError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return Source(UNetConfig.preset(name), name)


def resolve_config(preset: str | None, config: Path | None, model: str | None) -> tuple[Any, str]:
    """(UNetConfig, label) of :func:`resolve_source` (kept for callers of the first release)."""
    src = resolve_source(preset, config, model)
    return src.config, src.label


def _model_source(model: str) -> Source:
    from .config import UNetConfig
    from .detect import demo_geometry, detect_model

    found = detect_model(model)
    if found.kind == "single":  # the config its family and conv_in imply (header only)
        from .single_file import read_unet_config

        return Source(read_unet_config(found.path), str(model))
    if found.unet_config is None or not found.unet_config.is_file():
        what = "not a local folder"
        raise CliError(
            f"--model {_short(model)!r} is {what}: diagram and summary read only a UNet config; "
            "give a diffusers folder, a unet folder or --config path/to/config.json"
        )
    cfg = UNetConfig.from_json(found.unet_config)
    if found.is_demo:
        factor, tokens = demo_geometry(found.path)
        return Source(cfg, "demo" if model == "demo" else str(model), factor, tokens)
    return Source(cfg, str(model))


def _short(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def check_size(
    cfg: Any, height: int | None, width: int | None, batch: int, factor: int = 8
) -> tuple[int, int]:
    """Pixel (height, width), defaulting to the config's ``sample_size * factor``, checked by
    ``UNetConfig.check_size`` (a positive multiple of factor x 2^downsamplers, bounded);
    CliError unless 1 <= batch <= 64."""
    default = cfg.sample_size * factor
    h = default if height is None else height
    w = default if width is None else width
    size = cfg.check_size(h, w, scale=factor, names=("--height", "--width"))
    if not 1 <= batch <= MAX_BATCH:
        raise CliError(f"--batch {batch}: expected 1..{MAX_BATCH}")
    return size


def structure_of(
    src: Source, height: int | None, width: int | None, batch: int, detail: str, cache: bool
) -> dict[str, Any]:
    """The structure (Trace JSON state) of ``src`` at the given size: ``unetviz.structure``."""
    from .structure import structure

    h, w = check_size(src.config, height, width, batch, src.factor)
    return structure(
        src.config, h, w, batch, detail, src.label, cache, tokens=src.tokens, factor=src.factor
    )


# ---------------------------------------------------------------------------- commands
_PRESET = typer.Option(
    None, "--preset", "-p", help="A model preset: sd15, sd21 or sdxl (default sd15)."
)
_CONFIG = typer.Option(None, "--config", "-c", help="A diffusers UNet config.json.")
_MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="demo, a diffusers model folder, a model root or a unet folder (only its config is read).",
)
_HEIGHT = typer.Option(None, "--height", help="Image height in pixels (default: the config's).")
_WIDTH = typer.Option(None, "--width", help="Image width in pixels (default: the config's).")
_BATCH = typer.Option(2, "--batch", "-b", help="Batch size (2 = one prompt with CFG).")
_NO_CACHE = typer.Option(False, "--no-cache", help="Recompute the structure (no trace cache).")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise CliError(f"{flag} {_short(value)!r}: expected one of {', '.join(allowed)}")
    return value


@app.command()
def diagram(
    preset: str = _PRESET,
    config: Path = _CONFIG,
    model: str = _MODEL,
    height: int = _HEIGHT,
    width: int = _WIDTH,
    batch: int = _BATCH,
    detail: str = typer.Option("blocks", "--detail", "-d", help="blocks, layers or modules."),
    direction: str = typer.Option("TB", "--direction", help="TB (a U) or LR (U on its side)."),
    shape: str = typer.Option("u", "--shape", help="u or flat."),
    output: Path = typer.Option(
        None,
        "--output",
        "-o",
        help="File to write: .svg .png .pdf .dot .gv .json (default: DOT to stdout).",
    ),
    legend: bool = typer.Option(True, "--legend/--no-legend", help="Draw the legend."),
    no_cache: bool = _NO_CACHE,
    lora: list[str] = typer.Option(
        None,
        "--lora",
        help="Fill the blocks by what this LoRA changes, FILE[:SCALE] (repeatable; needs --model).",
    ),
) -> None:
    """Draw the UNet's architecture (no weights needed; --lora loads the model's)."""
    from .capture.options import DETAILS
    from .outputs import write_file
    from .render.export import format_of, render

    _choice("--detail", detail, DETAILS)
    _choice("--direction", direction, DIRECTIONS)
    _choice("--shape", shape, ("u", "flat"))
    fmt = format_of(output) if output is not None else "dot"
    if output is not None:
        _check_output_file(output)
    src = resolve_source(preset, config, model)
    trace = structure_of(src, height, width, batch, detail, not no_cache)
    extra: dict[str, Any] = {}
    if lora:
        rows = lora_module_changes(model, lora)
        from .lora import FILL_LABEL, block_changes, block_fill

        table = block_changes(rows)
        fill = block_fill(rows, (b["name"] for b in trace["blocks"]))  # the U, at any detail
        extra = {"fill": fill, "fill_label": FILL_LABEL}
        typer.echo(lora_table_text(table), err=True)
    data = render(
        trace, fmt, detail=detail, direction=direction, shape=shape, legend=legend, **extra
    )
    if output is None:
        _write_stdout(data.decode("utf-8"))
        return
    write_file(output, data)
    typer.echo(f"wrote {output} ({len(data):,} bytes, {detail} detail)", err=True)


def lora_module_changes(model: str | None, loras: list[str]) -> list[dict[str, Any]]:
    """What the ``--lora`` files change in ``model``, per module (``unetviz.lora``), largest
    first; the files and scales are checked before the model loads."""
    if model is None:
        raise CliError("--lora needs --model: the base model whose weights the LoRA changes")
    from .lora import parse_lora_arg, relative_changes
    from .pipelines import load_pipeline

    specs = [parse_lora_arg(item) for item in loras]
    models = load_pipeline(model).lora_models()
    rows = [r for path, scale in specs for r in relative_changes(path, models, scale)]
    return sorted(rows, key=lambda r: -r["change"])


def lora_table_text(table: list[dict[str, Any]]) -> str:
    """The ranking ``unetviz diagram --lora`` prints: block, summed change, module count."""
    lines = [f"{'block':<16} {'sum ‖ΔW‖/‖W‖':>14} {'modules':>8}"]
    lines += [f"{r['block']:<16} {r['change']:>14.4f} {r['modules']:>8}" for r in table]
    return "\n".join(lines)


def _check_output_file(output: Path) -> None:
    """Refuse, before any work, an output that is a folder or lies in a missing folder
    (``unetviz.outputs.write_file`` checks again and writes atomically)."""
    if output.is_dir():
        raise CliError(f"cannot write {_short(str(output))!r}: it is a folder, expected a file")
    if output.exists() and not output.is_file():  # a FIFO or device: never replaced by a file
        raise CliError(f"cannot write {_short(str(output))!r}: it is not a regular file")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(
            f"cannot write {_short(str(output))!r}: folder {_short(str(parent))!r} does not exist"
        )


def _write_stdout(text: str) -> None:
    """Write to stdout and flush now, so a full disk or closed pipe is reported here."""
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command(name="bundle-structures", hidden=True)
def bundle_structures() -> None:
    """Rewrite the structures shipped in unetviz/presets/structures (maintainers only)."""
    from .structure import bundle_structures as bundle

    for preset, detail, path, size in bundle():
        typer.echo(f"{preset} {detail}: {path.name} ({size:,} bytes)", err=True)


@app.command()
def summary(
    preset: str = _PRESET,
    config: Path = _CONFIG,
    model: str = _MODEL,
    height: int = _HEIGHT,
    width: int = _WIDTH,
    batch: int = _BATCH,
    detail: str = typer.Option("blocks", "--detail", "-d", help="blocks or layers."),
    no_cache: bool = _NO_CACHE,
) -> None:
    """Print a table: block, type, in -> out shape, params, MACs, LDM key, A1111 label."""
    from .render.table import summary_text

    _choice("--detail", detail, ("blocks", "layers"))
    src = resolve_source(preset, config, model)
    trace = structure_of(src, height, width, batch, detail, not no_cache)
    _write_stdout(summary_text(trace, detail=detail) + "\n")


def summary_table(trace: Any, detail: str = "blocks") -> str:
    """The ``unetviz summary`` table of a Trace (or its JSON state) as text
    (``unetviz.render.table.summary_text``)."""
    from .render.table import summary_text

    return summary_text(trace, detail)


# ---------------------------------------------------------------------------- entry point
def _register_subcommands(argv: list[str]) -> None:
    """Import the subcommand being run; show the others as stubs in ``--help``."""
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        # idempotent: main() may run more than once in a process (tests, notebooks)
        app.registered_commands[:] = [
            c
            for c in app.registered_commands
            if (c.name or getattr(c.callback, "__name__", None)) != name
        ]
        if name == wanted:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name and module.startswith(exc.name):
                    _fail(
                        f"`unetviz {name}` is not available in this install ({module} is missing)"
                    )
                raise
            mod.register(app)
        else:
            app.command(name=name, help=help_text, add_help_option=False)(_stub(name))


def _stub(name: str):
    def stub() -> None:  # pragma: no cover - replaced by the real command when run
        _fail(f"`unetviz {name}` could not be loaded")

    return stub


def _fail(message: str, limit: int = 600) -> None:
    """Print one ``error:`` line (a very long one, e.g. quoting a huge prompt, is cut in the
    middle) and exit with status 2."""
    message = " ".join(str(message).split("\n"))
    if len(message) > limit:
        cut = len(message) - limit
        message = f"{message[: limit - 150]} [... {cut:,} characters ...] {message[-150:]}"
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _os_message(exc: OSError) -> str:
    """A user-facing line for an OSError (no traceback): what failed, on which path."""
    where = f" {_short(str(exc.filename))!r}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"cannot write{where or ' the output'}: no space left on the device"
    if exc.errno == errno.EPIPE:
        return "the output was closed before everything was written"
    return f"cannot access{where}: {exc.strerror or exc}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


#: click's usage error and abort classes (typer vendors click in recent versions, so they are
#: found from typer's own names rather than imported from click)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ABORT = (typer.Abort, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``unetviz`` script: a user error (``UnetvizError``, a bad flag, an
    OSError such as a full disk) -> one ``error:`` line and exit status 2; anything else is a
    bug and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _register_subcommands(argv)
    try:
        code = app(args=argv, prog_name="unetviz", standalone_mode=False)
    except _USAGE_ERROR as exc:  # a bad flag or value: click's message, one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `unetviz`: the help
            typer.echo(exc.format_message(), err=True)
            raise SystemExit(2) from None
        _fail(exc.format_message())
    except _ABORT:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except UnetvizError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EPIPE):
            _silence_stdout()
        _fail(_os_message(exc))
    raise SystemExit(code if isinstance(code, int) else 0)  # as click's standalone mode does


if __name__ == "__main__":
    # ``python -m unetviz.cli``: run the imported module's main, so that the CliError raised by
    # subcommand modules (which import unetviz.cli) is the class main() catches
    from unetviz.cli import main as _main

    _main()

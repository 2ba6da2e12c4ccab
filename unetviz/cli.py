"""The ``unetviz`` command.

    unetviz diagram --preset sdxl -o sdxl.svg          # .svg .png .pdf .dot/.gv .json
    unetviz diagram --config unet/config.json --height 768 --width 512 --detail layers -o u.png
    unetviz diagram --model path/to/model -o model.pdf  # reads only the config: no weights
    unetviz summary --preset sd15 [--detail layers]     # a table: shapes, params, MACs, names

Structure comes from a capture of the UNet built on PyTorch's ``meta`` device: shapes only, no
weights, no memory. A structure trace is cached (``~/.cache/unetviz/traces``, keyed by config,
size, batch, detail and the model/capture code; ``--no-cache`` or ``UNETVIZ_CACHE_DIR``) because
importing torch and running meta kernels the first time costs seconds; a cached diagram needs
no torch at all.

Bad input (unknown preset, unreadable config, unknown extension, a size the UNet cannot take)
prints one ``error:`` line and exits with status 2, leaving no file behind.

Adding a subcommand (``attention``, ``app``): write a module with ``register(app: typer.Typer)``
that adds the command with ``@app.command()``, and name it in :data:`SUBCOMMANDS`. It is
imported only when its command is run, so ``unetviz diagram`` stays fast.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

#: lazily imported subcommands: name -> (module with ``register(app)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "attention": ("unetviz.attention_cli", "Cross-attention heatmaps of a prompt."),
    "app": ("unetviz.app.cli", "Start the web app."),
    "edit": ("unetviz.edits.cli", "Run a prompt with and without interventions; compare."),
    "sweep": ("unetviz.edits.cli", "One intervention per block or skip: which parts matter."),
    "batch": ("unetviz.batch.cli", "Attention statistics over a prompt set (local or Ray)."),
    "report": ("unetviz.report.cli", "One self-contained HTML report of a run or trace."),
}

PRESETS = ("sd15", "sd21", "sdxl")
DETAILS = ("blocks", "layers", "modules")
DIRECTIONS = ("TB", "LR")
TOKENS = 77

app = typer.Typer(
    name="unetviz",
    help="See inside the Stable Diffusion UNet: diagrams, summaries, attention maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CliError(Exception):
    """A user error: :func:`main` prints it as one ``error:`` line and exits with status 2."""


# ---------------------------------------------------------------------------- structure
def resolve_config(preset: str | None, config: Path | None, model: Path | None) -> tuple[Any, str]:
    """(UNetConfig, label) from exactly one of ``--preset`` / ``--config`` / ``--model``
    (``sd15`` when none is given)."""
    from .config import ConfigError, UNetConfig

    given = [x for x in (preset, config, model) if x is not None]
    if len(given) > 1:
        raise CliError("give only one of --preset, --config and --model")
    try:
        if config is not None:
            return UNetConfig.from_json(config), str(config)
        if model is not None:
            return UNetConfig.from_json(_model_config(model)), str(model)
        name = preset or "sd15"
        if name not in PRESETS:
            raise CliError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
        return UNetConfig.preset(name), name
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _model_config(model: Path) -> Path:
    """config.json of a diffusers unet folder or model root (no weights are read)."""
    for candidate in (model / "config.json", model / "unet" / "config.json"):
        if candidate.is_file():
            return candidate
    if model.is_file() and model.suffix == ".json":
        return model
    if not model.exists():
        raise CliError(f"model path not found: {model}")
    if model.is_file():
        raise CliError(
            f"{model} is a file: --model expects a diffusers unet folder (with config.json) or "
            "a model root with a unet/ subfolder; for a config file use --config"
        )
    raise CliError(
        f"{model} has no config.json and no unet/config.json: expected a diffusers unet folder "
        "or a model root with a unet/ subfolder"
    )


def check_size(cfg: Any, height: int | None, width: int | None, batch: int) -> tuple[int, int]:
    """Pixel (height, width), defaulting to the config's ``sample_size * 8``; CliError unless
    each is a positive multiple of 8 x 2^downsamplers and batch >= 1."""
    factor = 8 * 2 ** (len(cfg.block_out_channels) - 1)
    default = cfg.sample_size * 8
    sizes = []
    for flag, value in (("--height", height), ("--width", width)):
        value = default if value is None else value
        if value <= 0 or value % factor:
            raise CliError(
                f"{flag} {value} is not a positive multiple of {factor} (8 x 2^"
                f"{len(cfg.block_out_channels) - 1} downsamplers): try "
                f"{max(factor, round(value / factor) * factor)}"
            )
        sizes.append(value)
    if batch < 1:
        raise CliError(f"--batch {batch}: expected at least 1")
    return sizes[0], sizes[1]


def cache_dir() -> Path:
    """Where structure traces are cached: ``$UNETVIZ_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/unetviz/traces``, else ``~/.cache/unetviz/traces``."""
    if os.environ.get("UNETVIZ_CACHE_DIR"):
        return Path(os.environ["UNETVIZ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unetviz" / "traces"


#: Structures of the presets at their default sizes, shipped with the package so that the
#: first ``unetviz diagram --preset ...`` needs no torch. Named by the same key as the cache, so
#: a change to the model or capture code simply misses them (tests/test_cli.py checks they are
#: current; ``python -m unetviz.cli bundle`` rewrites them).
BUNDLED_DIR = Path(__file__).parent / "presets" / "structures"
BUNDLED = [(p, d) for p in ("sd15", "sd21", "sdxl") for d in ("blocks", "layers")]


def _code_fingerprint() -> str:
    """Hash of the files whose change changes a structure trace (config, model, capture)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for f in [
        root / "config.py",
        root / "structure.py",
        *sorted((root / "model").glob("*.py")),
    ] + sorted((root / "capture").glob("*.py")):
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def structure_key(cfg: Any, height: int, width: int, batch: int, detail: str) -> str:
    """The cache (and bundle) key of a structure: config, size, batch, detail and code."""
    from . import __version__

    key_data = {
        "config": cfg.to_dict(),
        "height": height,
        "width": width,
        "batch": batch,
        "detail": detail,
        "tokens": TOKENS,
        "version": __version__,
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]


def _read_state(path: Path, label: str | None) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
        state = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    except (OSError, ValueError, EOFError):
        return None  # a broken entry is rebuilt
    state.setdefault("meta", {})["model"] = label or state["meta"].get("model")
    return state


def structure(
    cfg: Any,
    height: int,
    width: int,
    batch: int = 2,
    detail: str = "layers",
    label: str | None = None,
    cache: bool = True,
) -> dict[str, Any]:
    """The structure of the UNet ``cfg`` at ``height`` x ``width`` pixels: a meta-device
    capture (no weights), returned as the Trace's JSON state (``Trace.to_state()[0]``), which
    every ``unetviz.render`` function reads like a Trace. Cached on disk unless ``cache`` is
    False."""
    key = structure_key(cfg, height, width, batch, detail)
    path = cache_dir() / f"{key}.json"
    if cache:
        for candidate in (BUNDLED_DIR / f"{key}.json.gz", path):
            state = _read_state(candidate, label) if candidate.is_file() else None
            if state is not None:
                return state
    state = _meta_capture(cfg, height, width, batch, detail, label)
    if cache:
        try:
            from .render.export import write_atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(state).encode())
        except (OSError, ValueError):
            pass  # caching is best effort (read-only home, full disk)
    return state


def _meta_capture(
    cfg: Any, height: int, width: int, batch: int, detail: str, label: str | None
) -> dict[str, Any]:
    from .structure import meta_trace

    info = {"model": label, "height": height, "width": width, "batch": batch, "tokens": TOKENS}
    trace = meta_trace(cfg, height // 8, width // 8, batch, TOKENS, detail, meta=info)
    state, _ = trace.to_state()
    return state


# ---------------------------------------------------------------------------- commands
_PRESET = typer.Option(None, "--preset", "-p", help="sd15, sd21 or sdxl (default sd15).")
_CONFIG = typer.Option(None, "--config", "-c", help="A diffusers UNet config.json.")
_MODEL = typer.Option(
    None, "--model", "-m", help="A diffusers model root or unet folder (only its config is read)."
)
_HEIGHT = typer.Option(None, "--height", help="Image height in pixels (default: the config's).")
_WIDTH = typer.Option(None, "--width", help="Image width in pixels (default: the config's).")
_BATCH = typer.Option(2, "--batch", "-b", help="Batch size (2 = one prompt with CFG).")
_NO_CACHE = typer.Option(False, "--no-cache", help="Recompute the structure (no trace cache).")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise CliError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
    return value


@app.command()
def diagram(
    preset: str = _PRESET,
    config: Path = _CONFIG,
    model: Path = _MODEL,
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
) -> None:
    """Draw the UNet's architecture (no weights needed)."""
    from .render.export import ExportError, format_of, render, write_atomic

    _choice("--detail", detail, DETAILS)
    _choice("--direction", direction, DIRECTIONS)
    _choice("--shape", shape, ("u", "flat"))
    try:
        fmt = format_of(output) if output is not None else "dot"
    except ExportError as exc:
        raise CliError(str(exc)) from None
    if output is not None and not output.parent.is_dir():
        raise CliError(
            f"cannot write {str(output)!r}: folder {str(output.parent)!r} does not exist"
        )
    cfg, label = resolve_config(preset, config, model)
    h, w = check_size(cfg, height, width, batch)
    trace = structure(cfg, h, w, batch, detail=detail, label=label, cache=not no_cache)
    try:
        data = render(trace, fmt, detail=detail, direction=direction, shape=shape, legend=legend)
        if output is None:
            sys.stdout.write(data.decode("utf-8"))
        else:
            write_atomic(output, data)
    except (ExportError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if output is not None:
        typer.echo(f"wrote {output} ({len(data):,} bytes, {detail} detail)", err=True)


@app.command(name="bundle-structures", hidden=True)
def bundle_structures() -> None:
    """Rewrite the structures shipped in unetviz/presets/structures (maintainers only)."""
    from .config import UNetConfig

    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    for old in BUNDLED_DIR.glob("*.json.gz"):
        old.unlink()
    for preset, detail in BUNDLED:
        cfg = UNetConfig.preset(preset)
        h, w = check_size(cfg, None, None, 2)
        state = _meta_capture(cfg, h, w, 2, detail, None)
        key = structure_key(cfg, h, w, 2, detail)
        data = gzip.compress(json.dumps(state, separators=(",", ":")).encode(), mtime=0)
        (BUNDLED_DIR / f"{key}.json.gz").write_bytes(data)
        typer.echo(f"{preset} {detail}: {key}.json.gz ({len(data):,} bytes)", err=True)


@app.command()
def summary(
    preset: str = _PRESET,
    config: Path = _CONFIG,
    model: Path = _MODEL,
    height: int = _HEIGHT,
    width: int = _WIDTH,
    batch: int = _BATCH,
    detail: str = typer.Option("blocks", "--detail", "-d", help="blocks or layers."),
    no_cache: bool = _NO_CACHE,
) -> None:
    """Print a table: block, type, in -> out shape, params, MACs, LDM key, A1111 label."""
    _choice("--detail", detail, ("blocks", "layers"))
    cfg, label = resolve_config(preset, config, model)
    h, w = check_size(cfg, height, width, batch)
    trace = structure(cfg, h, w, batch, detail=detail, label=label, cache=not no_cache)
    typer.echo(summary_table(trace, detail=detail))


def summary_table(trace: Any, detail: str = "blocks") -> str:
    """The ``unetviz summary`` table of a Trace (or its JSON state) as text."""
    from .render.diagram import human, human_params
    from .render.graph import build_graph, fmt_shape

    graph = build_graph(trace, detail=detail)
    rows = [("block", "type", "in \u2192 out", "params", "MACs", "LDM key", "A1111")]
    for n in graph.nodes:
        if n.kind != "module":
            continue
        name = ("  " if n.level == "layer" else "") + n.name
        ins, outs = n.inputs.get("sample", n.inputs.get("timestep")), n.outputs.get("sample")
        shapes = (
            f"{fmt_shape(ins)} \u2192 {fmt_shape(outs)}" if ins is not None else fmt_shape(outs)
        )
        rows.append(
            (
                name,
                n.type,
                shapes,
                human_params(n.params),
                human(n.macs) if n.macs else "-",
                n.ldm or "-",
                n.a1111 or "-",
            )
        )
    top = [n for n in graph.nodes if n.kind == "module" and n.level == "block"]
    rows.append(
        (
            "total",
            "",
            "",
            human_params(sum(n.params or 0 for n in top)),
            human(sum(n.macs or 0 for n in top)),
            "",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 4}
    lines = []
    meta = graph.meta
    lines.append(
        f"{meta.get('model') or 'UNet'}: {meta.get('width')}x{meta.get('height')} px, "
        f"batch {meta.get('batch')}, MACs per forward"
    )
    for i, r in enumerate(rows):
        cells = [c.rjust(widths[j]) if j in right else c.ljust(widths[j]) for j, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


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


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``unetviz`` script: user errors -> one line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _register_subcommands(argv)
    try:
        app(args=argv, prog_name="unetviz")
    except CliError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    # ``python -m unetviz.cli``: run the imported module's main, so that the CliError raised by
    # subcommand modules (which import unetviz.cli) is the class main() catches
    from unetviz.cli import main as _main

    _main()

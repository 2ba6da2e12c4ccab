"""The ``unetviz`` command: diagrams and summaries of presets, config files and model folders
on the meta device; one-line errors with exit status 2 and no partial file on bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from unetviz import UNetConfig, cli, structure


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """One structure cache for this module, never the user's."""
    path = tmp_path_factory.getbasetemp() / "unetviz-cache"
    monkeypatch.setenv("UNETVIZ_CACHE_DIR", str(path))
    return path


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    return exc.value.code or 0


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unetviz.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "sd9"], "unknown preset 'sd9'"),
        (["--config", "{tmp}/broken.json"], "is not valid JSON"),
        (["--config", "{tmp}/missing.json"], "config file not found"),
        (["--model", "{tmp}"], "holds no model"),
        (["--height", "500"], "--height 500 is not a positive multiple of 64"),
        (["--preset", "sdxl", "--width", "1000"], "--width 1000 is not a positive multiple of 32"),
        (["--detail", "atoms"], "--detail 'atoms'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, args, message):
    (tmp_path / "broken.json").write_text("{not json")
    out = tmp_path / "out.svg"
    args = [a.format(tmp=tmp_path) for a in args]
    proc = _run("diagram", *args, "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope"], "model path not found"),
        (["--height", "1000000"], "--height 1000000 is larger than the 16384 allowed"),
        (["--batch", "0"], "--batch 0: expected 1..64"),
        (["--seed", "3"], "No such option: --seed"),
        (["--height", "abc"], "Invalid value for '--height'"),
        (["--detail", "x" * 5000], "--detail 'xxxx"),
    ],
)
def test_more_bad_input_in_process(tmp_path, capsys, args, message):
    out = tmp_path / "out.svg"
    assert run_main(["diagram", *[a.format(tmp=tmp_path) for a in args], "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert len(lines[0]) < 300 and not out.exists()


def test_unknown_extension_names_the_formats(tmp_path):
    proc = _run("diagram", "-o", str(tmp_path / "u.bmp"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: cannot tell the format of '{tmp_path / 'u.bmp'}' ('.bmp'): use one of "
        ".svg, .png, .pdf, .dot, .gv, .json"
    )
    assert list(tmp_path.iterdir()) == []


def test_sd15_json_from_the_command(tmp_path, capsys):
    out = tmp_path / "sd15.json"
    assert run_main(["diagram", "--preset", "sd15", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    data = json.loads(out.read_text())
    skips = sorted((e for e in data["edges"] if e["kind"] == "skip"), key=lambda e: e["index"])
    assert len(skips) == 12
    assert skips[0]["shape"] == [2, 320, 64, 64] and skips[11]["shape"] == [2, 1280, 8, 8]
    node = {n["id"]: n for n in data["nodes"]}
    assert node["up_blocks.1"]["a1111"] == "OUT03-OUT05"
    assert node["up_blocks.1"]["ldm"] == "output_blocks.3-5"
    assert data["meta"]["model"] == "sd15"


def test_svg_png_and_stdout_dot(tmp_path, capsys):
    svg = tmp_path / "sd15.svg"
    assert run_main(["diagram", "--preset", "sd15", "--detail", "layers", "-o", str(svg)]) == 0
    text = svg.read_text()
    assert text.rstrip().endswith("</svg>") and "up_blocks.3.resnets.2" in text
    png = tmp_path / "sd15.png"
    assert run_main(["diagram", "--preset", "sd15", "--direction", "LR", "-o", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert run_main(["diagram", "--preset", "sd15"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph unet {") and "res[11]" in dot


def test_config_file_size_and_batch(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(UNetConfig.preset("sd21").to_dict()))
    out = tmp_path / "sd21.json"
    args = ["diagram", "-c", str(cfg), "--height", "512", "--width", "768", "-b", "1"]
    assert run_main([*args, "-o", str(out)]) == 0
    node = {n["id"]: n for n in json.loads(out.read_text())["nodes"]}
    assert node["conv_in"]["inputs"]["sample"] == [1, 4, 64, 96]
    assert node["encoder_hidden_states"]["outputs"]["sample"] == [1, 77, 1024]


def test_model_folder_reads_only_the_config(tmp_path, capsys):
    root = tmp_path / "model"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps(UNetConfig.preset("sdxl").to_dict()))
    out = tmp_path / "sdxl.json"
    assert run_main(["diagram", "--model", str(root), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len([e for e in data["edges"] if e["kind"] == "skip"]) == 9
    capsys.readouterr()
    assert run_main(["summary", "-m", str(root)]) == 0
    table = capsys.readouterr().out
    assert "IN07-IN08" in table and "2.57B" in table


def test_summary_table(capsys):
    assert run_main(["summary", "--preset", "sd15"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sd15: 512x512 px, batch 2")
    assert lines[1].split() == [
        "block",
        "type",
        "in",
        "→",
        "out",
        "params",
        "MACs",
        "LDM",
        "key",
        "A1111",
    ]
    row = next(line for line in lines if line.startswith("down_blocks.1 "))
    assert "CrossAttnDownBlock2D" in row and "(2,320,32,32) → (2,640,16,16)" in row
    assert "input_blocks.4-6" in row and row.rstrip().endswith("IN04-IN06")
    assert lines[-1].split()[:2] == ["total", "860M"]
    capsys.readouterr()
    assert run_main(["summary", "--preset", "sd15", "--detail", "layers"]) == 0
    assert "  up_blocks.1.resnets.2" in capsys.readouterr().out


def test_cached_structure_needs_no_capture(tmp_path, monkeypatch, cache_dir):
    out = tmp_path / "a.json"
    assert run_main(["diagram", "--preset", "sd15", "-o", str(out)]) == 0
    assert any(cache_dir.glob("*.json"))

    def boom(*a, **k):
        raise AssertionError("a cached structure must not be captured again")

    monkeypatch.setattr(structure, "capture_state", boom)
    again = tmp_path / "b.json"
    assert run_main(["diagram", "--preset", "sd15", "-o", str(again)]) == 0
    assert json.loads(out.read_text()) == json.loads(again.read_text())
    with pytest.raises(AssertionError):
        cli.main(["diagram", "--preset", "sd15", "--no-cache", "-o", str(again)])


def test_lazy_subcommands(tmp_path, monkeypatch, capsys):
    (tmp_path / "uvz_hello.py").write_text(
        "import typer\n\n"
        "def register(app: typer.Typer) -> None:\n"
        "    @app.command()\n"
        "    def hello(name: str = 'unet') -> None:\n"
        "        '''Say hello.'''\n"
        "        typer.echo(f'hello {name}')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", ("uvz_hello", "Say hello."))
    assert run_main(["--help"]) == 0
    helptext = capsys.readouterr().out
    for name in ("diagram", "summary", "attention", "app", "hello"):
        assert name in helptext
    assert run_main(["hello", "--name", "sdxl"]) == 0
    assert capsys.readouterr().out == "hello sdxl\n"
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", ("uvz_not_there", "Nothing."))
    assert run_main(["ghost"]) == 2
    assert "`unetviz ghost` is not available" in capsys.readouterr().err


def test_bundled_preset_structures_are_current_and_equal_a_fresh_capture():
    """The shipped structures make the first preset diagram torch-free; they must match the
    current model/capture code (else run ``python -m unetviz.cli bundle-structures``)."""
    import gzip
    import json

    from unetviz import UNetConfig
    from unetviz.cli import check_size
    from unetviz.structure import BUNDLED, BUNDLED_DIR, capture_state, structure_key

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("time_ms", "model")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    for preset, detail in BUNDLED:
        cfg = UNetConfig.preset(preset)
        h, w = check_size(cfg, None, None, 2)
        path = BUNDLED_DIR / f"{structure_key(cfg, h, w, 2, detail)}.json.gz"
        assert path.is_file(), (
            f"bundled structure for {preset}/{detail} is stale or missing: run "
            "`python -m unetviz.cli bundle-structures`"
        )
        if (preset, detail) in (("sd15", "layers"), ("sdxl", "blocks")):
            shipped = json.loads(gzip.decompress(path.read_bytes()))
            assert strip(shipped) == strip(capture_state(cfg, h, w, 2, detail, None))


@pytest.mark.parametrize("model", ["demo", "assets/demo"])
def test_demo_works_in_diagram_and_summary(model, tmp_path, capsys):
    """``demo`` and the shipped folder name the same model (its shapes read from its configs)."""
    from pathlib import Path

    from tests.demo_support import shipped_demo

    demo = shipped_demo()
    arg = model if model == "demo" else str(Path(__file__).parents[1] / model)
    out = tmp_path / "demo.json"
    assert run_main(["diagram", "--model", arg, "-o", str(out)]) == 0
    node = {n["id"]: n for n in json.loads(out.read_text())["nodes"]}
    latent = demo["latent"]
    assert node["conv_in"]["inputs"]["sample"] == [2, demo["in_channels"], latent, latent]
    assert node["encoder_hidden_states"]["outputs"]["sample"][1] == demo["tokens"]
    capsys.readouterr()
    assert run_main(["summary", "-m", arg]) == 0
    name = "demo" if model == "demo" else arg
    assert capsys.readouterr().out.startswith(f"{name}: {demo['px']}x{demo['px']} px")


def test_stdout_to_a_full_device_is_one_error_line(monkeypatch, capsys):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert run_main(["summary"]) == 2
    assert capsys.readouterr().err == (
        "error: cannot write the output: no space left on the device\n"
    )


def test_programming_errors_keep_their_traceback(monkeypatch):
    """Only user errors become one line: a bug must still show where it is."""

    def bug(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "structure_of", bug)
    with pytest.raises(KeyError):
        cli.main(["summary"])


def test_diagram_output_never_replaces_a_folder_and_keeps_a_files_mode(tmp_path):
    folder = tmp_path / "x.svg"
    folder.mkdir()
    assert run_main(["diagram", "-o", str(folder)]) == 2
    assert folder.is_dir() and not any(folder.iterdir())
    target = tmp_path / "u.svg"
    target.write_text("old")
    target.chmod(0o600)
    assert run_main(["diagram", "-o", str(target)]) == 0
    assert (
        target.read_text().rstrip().endswith("</svg>") and (target.stat().st_mode & 0o777) == 0o600
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.svg", "x.svg"]
    fifo = tmp_path / "pipe.svg"
    os.mkfifo(fifo)
    assert run_main(["diagram", "-o", str(fifo)]) == 2
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # not replaced by a regular file


def test_bundle_structures_touches_only_its_own_files(tmp_path, monkeypatch):
    """The maintainers' command replaces stale ``*.json.gz`` in its folder and nothing else."""
    monkeypatch.setattr(structure, "BUNDLED", [("sd15", "blocks")])
    monkeypatch.setattr(structure, "BUNDLED_DIR", tmp_path)
    (tmp_path / "stale.json.gz").write_bytes(b"old")
    (tmp_path / "README").write_text("keep")
    assert run_main(["bundle-structures"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "README" in names and "stale.json.gz" not in names and len(names) == 3
    assert "code.json" in names  # what code the structures were made from


# ---------------------------------------------------------------------------- attention (demo)
def _attention(tmp_path, name, *extra):
    out = tmp_path / name
    args = ["attention", "a red circle and a blue square", "--steps", "2", "-o", str(out)]
    return run_main([*args, *extra]), out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A real demo run with the defaults (shared scale, raw probabilities) and --grid."""
    return _attention(tmp_path_factory.mktemp("attention"), "shared", "--grid")


def test_attention_heatmaps_are_large_captioned_and_on_a_shared_scale(demo_run):
    from PIL import Image

    code, out = demo_run
    assert code == 0
    info = json.loads((out / "tokens.json").read_text())
    assert [h["word"] for h in info["heatmaps"]] == ["a", "red", "circle", "and", "blue", "square"]
    assert info["scale"] == "shared" and info["normalize"] == "none"
    assert info["colormap"] == "magma" and len({tuple(s) for s in info["scales"]}) == 1
    for h in info["heatmaps"]:
        img = Image.open(out / h["file"])
        assert min(img.size) >= 256 and img.height > img.width  # the caption and bar below
    grid = Image.open(out / info["grid"])
    assert grid.width >= 4 * 256 and grid.height > 2 * 256


@pytest.mark.parametrize(
    "scale, normalize", [("per-token", "none"), ("shared", "max"), ("shared", "sum")]
)
def test_attention_normalisation_and_scale_change_the_pictures(demo_run, scale, normalize):
    """Every option draws different pixels from the default (shared scale, raw maps)."""
    import numpy as np
    from PIL import Image

    from unetviz import Trace
    from unetviz.attention_cli import HeatmapStyle, heatmap_pictures

    code, out = demo_run
    trace, image = Trace.load(out / "run.trace"), Image.open(out / "image.png")
    style = HeatmapStyle(scale=scale, normalize=normalize)
    words = heatmap_pictures(trace, image, style)["words"]
    if scale == "per-token":
        assert len({sc for *_, sc in words}) == len(words)  # each word its own range
    default = np.asarray(Image.open(out / "heatmaps/00_a.png"), dtype=float)
    other = np.asarray(words[0][2], dtype=float)  # "a": dim on the shared raw scale
    assert other.shape == default.shape and np.abs(other - default).mean() > 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", "-1"], "--seed=-1: expected a whole number 0..18446744073709551615"),
        (["--seed", str(2**64)], f"--seed={2**64}: expected a whole number 0.."),
        (["--recipe", "dam"], "--recipe 'dam': expected one of daam"),
        (["--scale", "log"], "--scale 'log': expected one of shared, per-token"),
        (["--guidance", "nan"], "--guidance nan: expected a finite number"),
    ],
)
def test_attention_bad_flags_fail_before_loading(tmp_path, capsys, extra, message):
    code, out = _attention(tmp_path, "out", *extra)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_attention_preset_is_a_deprecated_alias_of_recipe(tmp_path, capsys):
    code, out = _attention(tmp_path, "out", "--preset", "daam", "--recipe", "p2p")
    assert code == 2 and "give only --recipe" in capsys.readouterr().err
    code, out = _attention(tmp_path, "out", "--preset", "dam")  # checked as a recipe
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err == [
        "warning: --preset is deprecated for attention; use --recipe",
        "error: --recipe 'dam': expected one of daam, daam-approx, p2p",
    ]


def test_attention_error_quoting_a_huge_prompt_is_cut(tmp_path, capsys):
    prompt = "zebra " * 2000
    assert run_main(["attention", prompt, "-o", str(tmp_path / "huge"), "--steps", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 1000, lines
    assert not (tmp_path / "huge").exists()


def test_fail_cuts_a_long_message_in_the_middle(capsys):
    with pytest.raises(SystemExit) as exc:
        cli._fail("head " + "x" * 5000 + " tail")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: head ") and err.endswith(" tail\n")
    assert "[... 4,410 characters ...]" in err and len(err) < 700


def test_structure_trace_is_the_one_cache_the_app_uses(monkeypatch):
    """``unetviz.structure.structure_trace``: a Trace from the shipped/cached structure of a
    preset name, a config or a dict; a second call is served without a capture."""
    from unetviz.capture import Trace

    trace = structure.structure_trace("sd15", 512, 512, detail="blocks")
    assert isinstance(trace, Trace) and trace.meta["model"] == "sd15"
    assert trace["down_blocks.1"].outputs["sample"] == [2, 640, 16, 16]

    def boom(*a, **k):
        raise AssertionError("a cached structure must not be captured again")

    monkeypatch.setattr(structure, "capture_state", boom)
    again = structure.structure_trace(
        UNetConfig.preset("sd15").to_dict(), 512, 512, detail="blocks"
    )
    assert again["down_blocks.1"].outputs == trace["down_blocks.1"].outputs


def test_one_seed_range_everywhere(tmp_path, capsys):
    """CLI, app and pipelines accept the same seeds: 0..2**64-1, exactly (torch's range)."""
    from unetviz.app.handlers import parse_int
    from unetviz.pipelines.base import MAX_SEED, check_seed

    assert MAX_SEED == 2**64 - 1 and check_seed(MAX_SEED) == MAX_SEED
    assert parse_int(str(MAX_SEED), "seed", 0, MAX_SEED) == MAX_SEED
    code = run_main(
        [
            "attention",
            "a red circle",
            "--steps",
            "1",
            "--seed",
            str(MAX_SEED),
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "tokens.json").read_text())["seed"] == MAX_SEED

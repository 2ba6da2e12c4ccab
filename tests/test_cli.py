"""The ``unetviz`` command: diagrams and summaries of presets, config files and model folders
on the meta device; one-line errors with exit status 2 and no partial file on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unetviz import UNetConfig, cli


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
        (["--model", "{tmp}"], "has no config.json"),
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

    monkeypatch.setattr(cli, "_meta_capture", boom)
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
    from unetviz.cli import BUNDLED, BUNDLED_DIR, _meta_capture, check_size, structure_key

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
            assert strip(shipped) == strip(_meta_capture(cfg, h, w, 2, detail, None))

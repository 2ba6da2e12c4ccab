"""``unetviz attention`` on a real (tiny) Stable Diffusion folder: image, one heatmap PNG per
word, trace bundle, tokens.json; errors leave nothing behind."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tests.sd_tiny import one_thread, tiny_sd_dir  # noqa: E402
from unetviz.cli import main  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_attention_writes_image_heatmaps_and_trace(tmp_path, capsys):
    from unetviz import Trace

    out = tmp_path / "out"
    code = _run(
        ["attention", "a photo of a zebra cat", "--model", str(tiny_sd_dir("sd1")), "-o", str(out)]
        + ["--steps", "2", "--seed", "3", "--negative", "blurry"]
    )
    assert code == 0, capsys.readouterr().err
    assert Image.open(out / "image.png").size == (32, 32)
    info = json.loads((out / "tokens.json").read_text())
    assert [h["word"] for h in info["heatmaps"]] == ["a", "photo", "of", "zebra", "cat"]
    assert info["heatmaps"][3]["tokens"] == [5, 6, 7, 8, 9]  # z e b r a</w>
    for h in info["heatmaps"]:  # captioned, enlarged from the 32 px image
        assert min(Image.open(out / h["file"]).size) >= 256
    trace = Trace.load(out / "run.trace")
    assert trace.meta["prompt"] == "a photo of a zebra cat" and trace.meta["steps"] == 2
    assert trace.tokens[0] == "<|startoftext|>"
    assert "wrote" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_attention_negative_maps_and_long_prompt_warning(tmp_path, capsys):
    out = tmp_path / "neg"
    long_prompt = " ".join(["red cat"] * 200)  # 400 tokens: past 4 chunks of 75
    code = _run(
        ["attention", long_prompt, "-m", str(tiny_sd_dir("sd1")), "-o", str(out), "--steps", "1"]
        + ["-n", "blue house", "--negative-maps"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning:" in err and "truncated" in err
    info = json.loads((out / "tokens.json").read_text())
    assert info["maps_of"] == "negative_prompt"
    assert [h["word"] for h in info["heatmaps"]] == ["blue", "house"]


def test_attention_errors_leave_nothing(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    out = tmp_path / "out"
    assert _run(["attention", "a cat", "-m", str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "never unpickles" in err
    assert not out.exists()
    code = _run(
        ["attention", "a cat", "-m", str(tiny_sd_dir("sd1")), "-o", str(out)] + ["--height", "30"]
    )
    assert code == 2 and "height=30" in capsys.readouterr().err
    assert not out.exists()
    assert _run(["attention", "a cat", "-m", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_attention_on_a_demo_model_folder(tmp_path, capsys):
    """The same command drives the demo pipeline (random weights here: shapes only)."""
    import torch

    from unetviz.pipelines.demo import DDIMSchedule, save_demo
    from unetviz.training.train import build

    torch.manual_seed(0)
    unet, cfg, te, tok = build()
    demo = tmp_path / "demo"
    save_demo(demo, unet, cfg, te, tok, DDIMSchedule())
    out = tmp_path / "out"
    word = tok.words[0]
    assert _run(["attention", word, "-m", str(demo), "-o", str(out), "--steps", "2"]) == 0
    info = json.loads((out / "tokens.json").read_text())
    assert [h["word"] for h in info["heatmaps"]] == [word]
    bad = ["attention", word, "-m", str(demo), "-o", str(out), "--scheduler", "ddim"]
    assert _run(bad) == 2  # --dtype / --device apply to every model, the rest to SD only
    assert "only for Stable Diffusion models" in capsys.readouterr().err


def test_attention_reports_emphasis_per_word_without_brackets(tmp_path, capsys):
    out = tmp_path / "emph"
    code = _run(
        ["attention", "a photo of a (cat:1.3) [house]", "-m", str(tiny_sd_dir("sd1"))]
        + ["-o", str(out), "--steps", "1"]
    )
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "tokens.json").read_text())
    words = {h["word"]: h.get("weight") for h in info["heatmaps"]}
    assert words == {"a": None, "photo": None, "of": None, "cat": 1.3, "house": 1 / 1.1}


def test_a_hostile_prompt_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "bad"
    nested = "(" * 10_000 + "red" + ")" * 10_000 + " circle"
    for prompt, message in (
        ("a (red:1.2.3) circle", "'1.2.3' is not a number"),
        (nested, "emphasis weight inf on 'red'"),
    ):
        assert _run(["attention", prompt, "-o", str(out), "--steps", "1"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
        assert not out.exists()

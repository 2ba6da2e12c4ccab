"""The demo model's shipped LoRA (examples/yellow.safetensors, trained by
examples/train_demo_lora.py): where it acts, what it does, and the LoRA flags of the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetviz import load_unet
from unetviz.cli import main
from unetviz.lora import lora_change_table, parse_lora_arg
from unetviz.pipelines import load_pipeline
from unetviz.pipelines.demo import DEMO_DIR
from unetviz.weights import WeightsError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "yellow.safetensors"
#: examples/train_demo_lora.py: attn2 to_k/to_v of every block with attention, add_embedding
TRAINED = {
    "add_embedding": 2,
    "down_blocks.0": 2,
    "down_blocks.1": 2,
    "mid_block": 2,
    "up_blocks.1": 4,
    "up_blocks.2": 4,
}


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_change_diagram_puts_the_change_where_it_was_trained():
    pipe = load_pipeline("demo")
    table = lora_change_table(EXAMPLE, pipe.lora_models())
    assert {r["block"]: r["modules"] for r in table} == TRAINED
    assert all(r["change"] > 0 for r in table)  # and the resnet-only blocks are untouched


def test_the_lora_paints_objects_yellow():
    pipe = load_pipeline("demo")
    cmp = pipe.compare("a red circle", loras=[(EXAMPLE, 1.0)], seed=0, steps=10)
    base, lora = (np.asarray(r.image, dtype=float) / 255 for r in (cmp.base, cmp.edited))
    lit = lora.max(axis=2) > 0.4  # the painted object, not the black background
    red, green = lora[..., 0][lit].mean(), lora[..., 1][lit].mean()
    assert red > 0.5 and green > 0.5, (red, green)  # yellow = red + green
    assert green - base[..., 1][base.max(axis=2) > 0.4].mean() > 0.3  # it was red before
    assert cmp.edited.trace.meta["loras"] == [{"file": str(EXAMPLE), "scale": 1.0}]
    assert cmp.base.trace.meta["loras"] == []


def test_load_unet_fuses_and_unfuses():
    plain = load_unet(DEMO_DIR / "unet")
    fused = load_unet(DEMO_DIR / "unet", loras=[(EXAMPLE, 0.5)])
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    assert not torch.equal(plain.state_dict()[name], fused.state_dict()[name])
    fused.loras.unfuse()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, fused.state_dict()[k])


def test_parse_lora_arg(tmp_path):
    assert parse_lora_arg(f"{EXAMPLE}:0.5") == (EXAMPLE, 0.5)
    assert parse_lora_arg(str(EXAMPLE)) == (EXAMPLE, 1.0)
    with pytest.raises(WeightsError, match="is not a file"):
        parse_lora_arg(str(tmp_path / "none.safetensors") + ":1")
    with pytest.raises(WeightsError, match="scale"):
        parse_lora_arg(f"{EXAMPLE}:inf")


def test_cli_diagram_and_attention_take_lora(tmp_path, capsys):
    out = tmp_path / "lora.svg"
    assert _run(["diagram", "--model", "demo", "--lora", f"{EXAMPLE}:1", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    ranking = [line.split()[0] for line in err.splitlines()[1:7]]
    assert set(ranking) == set(TRAINED) and "LoRA" in out.read_text()
    assert _run(["diagram", "--preset", "sd15", "--lora", str(EXAMPLE), "-o", str(out)]) == 2
    assert "--lora needs --model" in capsys.readouterr().err
    folder = tmp_path / "att"
    code = _run(
        ["attention", "a red circle", "-o", str(folder), "--steps", "2", "--lora", str(EXAMPLE)]
    )
    assert code == 0, capsys.readouterr().err
    from unetviz import Trace

    assert Trace.load(folder / "run.trace").meta["loras"][0]["file"] == str(EXAMPLE)
    bad = ["attention", "a red circle", "-o", str(tmp_path / "b"), "--lora", "missing.st:2"]
    assert _run(bad) == 2 and "missing.st" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_edit_takes_lora(tmp_path, capsys):
    from unetviz import Trace

    folder = tmp_path / "edit"
    args = ["edit", "a red circle", "--reweight", "red=0", "--steps", "2", "-o", str(folder)]
    assert _run([*args, "--lora", f"{EXAMPLE}:0.5"]) == 0, capsys.readouterr().err
    meta = Trace.load(folder / "base.trace").meta
    assert meta["loras"] == [{"file": str(EXAMPLE), "scale": 0.5}]

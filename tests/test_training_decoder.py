"""The decoder fine-tune (``python -m unetviz.training.decoder``): the latent space the UNet
learned must not move, only the decoder trains, the new folder is complete and it resumes."""

from __future__ import annotations

import json

import pytest
import torch

from tests.demo_support import latent_demo_folder
from unetviz.pipelines.demo import load_demo_vae
from unetviz.training.decoder import main, same_encoder

FLAGS = ["--eval-n", "4", "--batch", "2", "--crop", "16", "--save-min", "0", "--eval-min", "1000"]


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_decoder_finetune_keeps_the_latent_space_and_writes_a_complete_folder(tmp_path, capsys):
    src = tmp_path / "run" / "step_7"
    latent_demo_folder(src)
    out = tmp_path / "run" / "step_7_dec"
    main([str(src), "--out", str(out), "--steps", "3", *FLAGS])
    before, after = load_demo_vae(src), load_demo_vae(out)
    assert same_encoder(before, after)
    changed = [
        k for k, v in _tensors(src / "vae").items() if not torch.equal(v, _tensors(out / "vae")[k])
    ]
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        for f in (src / part).iterdir():
            assert (out / part / f.name).read_bytes() == f.read_bytes()
    assert (out / "vae" / "config.json").read_bytes() == (src / "vae" / "config.json").read_bytes()
    logged = [json.loads(x) for x in (src.parent / "evals.jsonl").read_text().splitlines()]
    assert logged[-1]["phase"] == "decoder" and logged[-1]["step"] == 3
    # a second run continues from the checkpoint instead of starting over
    main([str(src), "--out", str(tmp_path / "run" / "step_7_dec"), "--steps", "5", *FLAGS])
    assert "resumed at step 3" in capsys.readouterr().out
    # something changed in the encoder is caught
    after.encoder.conv_in.weight.data += 1
    assert not same_encoder(before, after)


def test_decoder_finetune_needs_a_latent_model(tmp_path, capsys):
    from unetviz.pipelines.demo import save_demo
    from unetviz.training.train import build

    unet, config, text_encoder, tokenizer = build(latent_size=8)
    from unetviz.pipelines.demo import DDIMSchedule

    save_demo(tmp_path / "pixel", unet, config, text_encoder, tokenizer, DDIMSchedule())
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "pixel"), "--out", str(tmp_path / "out"), *FLAGS])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'pixel'} has no vae/")
    assert not (tmp_path / "out").exists()

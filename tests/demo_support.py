"""Facts of the shipped demo model for tests that must hold for whichever model ships."""

from __future__ import annotations

import torch


def shipped_demo() -> dict:
    """Facts of the shipped demo model read from its own configs (so tests hold for the pixel
    v1 and the latent v2 model): UNet ``in_channels``, ``latent`` and image side ``px``, and
    the tokenizer's ``tokens``."""
    import json

    from unetviz.pipelines.demo import DEMO_DIR, demo_unet_config

    cfg = demo_unet_config()
    vae = DEMO_DIR / "vae" / "config.json"
    factor = (
        2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1) if vae.is_file() else 1
    )
    vocab = json.loads((DEMO_DIR / "tokenizer" / "vocab.json").read_text())
    return {
        "in_channels": cfg["in_channels"],
        "latent": cfg["sample_size"],
        "px": cfg["sample_size"] * factor,
        "tokens": vocab["max_length"],
    }


def latent_demo_folder(folder):
    """A random-weight demo folder (8x8 latents, 32 px) in the latent (v2) format: vae/ present, text_time UNet."""
    from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL
    from unetviz.pipelines.demo import DDIMSchedule, save_demo
    from unetviz.training.unet import build

    torch.manual_seed(0)
    model, config, tokenizer = build(latent_size=8)
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 8, 16), sample_size=32))
    vae.config.scaling_factor, vae.config.shift_factor = 2.0, 0.1
    schedule = DDIMSchedule(clip_sample=False)
    save_demo(folder, model.unet, config, model.text_encoder, tokenizer, schedule, vae)
    return vae

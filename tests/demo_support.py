"""Facts of the shipped demo model for tests that must hold for whichever model ships."""

from __future__ import annotations


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

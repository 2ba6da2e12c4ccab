"""Phase 2: a pool of training scenes encoded once to the diffusion model's latents.

Encoding a 96x96 scene costs more than a UNet training step spends on it, so the UNet draws
its batches from a pool of pre-encoded scenes (``<out>/latents.pt``, written chunk by chunk:
an interrupted encoding resumes), and a few pool entries are replaced by fresh scenes at every
step (``Pool.refresh``), so the UNet keeps seeing new scenes without paying for a full batch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from unetviz.model.autoencoder import AutoencoderKL

from .common import load_state, save_state
from .data import make_batch

CHUNK = 250


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, rng: random.Random, n: int, size: int) -> tuple:
    """``n`` fresh scenes -> (scaled latents (n, 4, size/4, size/4), captions)."""
    images, captions, _ = make_batch(rng, n, size)
    latents = torch.cat([vae.scale(vae.encode(chunk)[0]) for chunk in images.split(32)])
    return latents, captions


class Pool:
    """Scaled latents and their captions; ``batch`` draws, ``refresh`` replaces entries."""

    def __init__(self, latents: torch.Tensor, captions: list[str]):
        self.latents = latents.float()
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, rng: random.Random, n: int) -> tuple[torch.Tensor, list[str]]:
        idx = [rng.randrange(len(self)) for _ in range(n)]
        return self.latents[idx], [self.captions[i] for i in idx]

    def refresh(self, vae: AutoencoderKL, rng: random.Random, n: int, size: int) -> None:
        if n <= 0:
            return
        latents, captions = encode_scenes(vae, rng, n, size)
        for latent, caption in zip(latents, captions, strict=True):
            i = rng.randrange(len(self))
            self.latents[i] = latent
            self.captions[i] = caption


def latent_pool(args: Any, out: Path, vae: AutoencoderKL) -> Pool:
    """Encode (or finish encoding) ``args.pool`` scenes; chunk ``k`` always holds the same
    scenes (its own seed), so a resumed encoding continues where it stopped."""
    path: Path = out / "latents.pt"
    state: dict[str, Any] = {"latents": [], "captions": []}
    if path.is_file():
        state = load_state(path)
    chunks = -(-args.pool // CHUNK)
    while len(state["latents"]) < chunks:
        k = len(state["latents"])
        rng = random.Random(args.seed * 100_003 + k)
        latents, captions = encode_scenes(vae, rng, CHUNK, args.size)
        state["latents"].append(latents.half())
        state["captions"].append(captions)
        save_state(path, state)
        print(f"latents: {(k + 1) * CHUNK}/{chunks * CHUNK} scenes encoded", flush=True)
    latents = torch.cat(state["latents"])
    captions = [c for chunk in state["captions"] for c in chunk]
    print(f"latent pool: {tuple(latents.shape)}, std {latents.float().std():.3f}", flush=True)
    return Pool(latents, captions)

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
from .data import MAX_TOKENS, POSITIONS, WORDS, make_batch, without_positions
from .ground import scene_masks

CHUNK = 250


@torch.no_grad()
def encode_scenes(
    vae: AutoencoderKL, rng: random.Random, n: int, size: int, words: Any = None
) -> tuple:
    """``n`` fresh scenes (captions restricted to ``words``) -> (scaled latents
    (n, 4, size/4, size/4), captions, scenes)."""
    images, captions, scenes = make_batch(rng, n, size, words=words)
    latents = torch.cat([vae.scale(vae.encode(chunk)[0]) for chunk in images.split(32)])
    return latents, captions, scenes


class Pool:
    """Scaled latents, their captions and (for the grounding loss) object masks and each
    token's object; ``batch`` draws, ``refresh`` replaces entries."""

    def __init__(
        self,
        latents: torch.Tensor,
        captions: list[str],
        scenes: list | None = None,
        words: Any = None,
    ):
        self.latents = latents.float()
        self.words = words  # the model's vocabulary: fresh scenes are drawn within it
        self.captions = list(captions)
        self.masks, self.index = scene_masks(scenes or [], MAX_TOKENS)
        self.grounded = scenes is not None

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, rng: random.Random, n: int) -> tuple:
        """(latents, captions, object masks, token objects) of ``n`` random entries."""
        idx = [rng.randrange(len(self)) for _ in range(n)]
        if not self.grounded:
            return self.latents[idx], [self.captions[i] for i in idx], None, None
        return (
            self.latents[idx],
            [self.captions[i] for i in idx],
            self.masks[idx],
            self.index[idx],
        )

    def refresh(self, vae: AutoencoderKL, rng: random.Random, n: int, size: int) -> None:
        if n <= 0:
            return
        latents, captions, scenes = encode_scenes(vae, rng, n, size, self.words)
        masks, index = scene_masks(scenes, MAX_TOKENS)
        for k, (latent, caption) in enumerate(zip(latents, captions, strict=True)):
            i = rng.randrange(len(self))
            self.latents[i] = latent
            self.captions[i] = caption
            if self.grounded:
                self.masks[i], self.index[i] = masks[k], index[k]


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
        latents, captions, _ = encode_scenes(vae, rng, CHUNK, args.size)
        state["latents"].append(latents.half())
        state["captions"].append(captions)
        save_state(path, state)
        print(f"latents: {(k + 1) * CHUNK}/{chunks * CHUNK} scenes encoded", flush=True)
    latents = torch.cat(state["latents"])
    captions = [c for chunk in state["captions"] for c in chunk]
    print(f"latent pool: {tuple(latents.shape)}, std {latents.float().std():.3f}", flush=True)
    scenes = pool_scenes(args, state["captions"]) if getattr(args, "ground", 0) > 0 else None
    words = vocabulary(args)
    if not set(POSITIONS) <= set(words):  # the stored captions lose their position phrases
        captions = [without_positions(c) for c in captions]
        for scene in scenes or []:
            scene.caption = without_positions(scene.caption)
    return Pool(latents, captions, scenes, words)


def vocabulary(args: Any) -> list[str]:
    """The model's words: ``data.WORDS`` less ``--drop-words`` (a dropped position word
    takes "on" and "the" with it: they occur only in position phrases)."""
    drop = {w for w in (getattr(args, "drop_words", None) or "").split(",") if w}
    if drop & set(POSITIONS):
        drop |= {*POSITIONS, "on", "the"}
    return [w for w in WORDS if w not in drop]


def pool_scenes(args: Any, chunk_captions: list[list[str]]) -> list:
    """Re-draw the pool's scenes (chunk ``k``'s seed gives the same scenes; no encoding) for
    their exact masks; refuses a pool whose captions do not match."""
    scenes = []
    for k, captions in enumerate(chunk_captions):
        _, drawn, chunk = make_batch(random.Random(args.seed * 100_003 + k), CHUNK, args.size)
        if drawn != list(captions):
            raise SystemExit(f"latent pool chunk {k} does not match its seed: re-encode it")
        scenes.extend(chunk)
    return scenes

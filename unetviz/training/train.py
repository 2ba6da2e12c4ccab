"""Train the demo model: ``python -m unetviz.training.train [--out runs/demo]``.

A latent diffusion model in miniature, trained in three resumable phases on one CPU thread:

1. the autoencoder (``vae.py``): 96x96x3 images <-> 24x24x4 latents;
2. a pool of training scenes encoded once to scaled latents (``latents.py``), refreshed a few
   scenes per step while the UNet trains;
3. the UNet and text encoder (``unet.py``): v-prediction DDPM on the latents, with a pooled
   caption embedding added to the time embedding (SDXL's ``text_time`` conditioning), EMA,
   quick evals appended to ``<out>/evals.jsonl``, EMA weights exported to ``<out>/latest/`` and
   kept as ``<out>/step_<N>/`` at each eval.

Each phase continues from its checkpoint in ``--out`` after any interruption; running the same
command again resumes. One torch thread by default: on a busy 2-core machine two threads ran
~5x slower (measured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import write_json


def build(latent_size: int = 24) -> tuple:
    """A fresh, untrained demo model: (unet, unet_config, text_encoder, tokenizer), e.g. for
    ``save_demo`` in tests that need a demo-format folder without the shipped weights."""
    from .unet import build as build_both

    model, config, tokenizer = build_both(latent_size)
    return model.unet, config, model.text_encoder, tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line. The defaults are the shipped model's final recipe (grounding loss,
    bidirectional text encoder, no position words); its weights came from a chain of resumed
    runs whose commands the model card lists (``--resume-from``, ``--reinit-words``, ...)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--out", default="runs/demo")
    add("--size", type=int, default=96)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    add("--save-min", type=float, default=3.0, help="checkpoint every N minutes")
    add("--eval-min", type=float, default=10.0, help="quick eval every N minutes")
    add("--eval-n", type=int, default=32)
    add("--phase", choices=("all", "vae", "latents", "unet"), default="all")
    # autoencoder
    add("--vae-steps", type=int, default=4000)
    add("--vae-minutes", type=float, default=30.0)
    add("--vae-stop-mae", type=float, default=2.5, help="stop once held-out MAE/255 is below")
    add("--vae-batch", type=int, default=16)
    add("--vae-crop", type=int, default=48)
    add("--vae-lr", type=float, default=1e-3)
    add("--vae-kl", type=float, default=1e-6)
    add("--vae-ema", type=float, default=0.995)
    # latent pool
    add("--pool", type=int, default=8000, help="scenes encoded before the UNet starts")
    add("--refresh", type=int, default=1, help="scenes re-drawn and encoded per UNet step")
    # UNet
    add("--init-from", default=None, help="a pixel (v1) demo folder to start the UNet from")
    add("--steps", type=int, default=30000)
    add("--minutes", type=float, default=180.0, help="UNet phase time limit")
    add("--batch", type=int, default=16)
    add("--lr", type=float, default=1e-3)
    add("--lr-final", type=float, default=2e-4, help="lr over the last 15% of the time")
    add("--warmup", type=int, default=200)
    add("--ema", type=float, default=0.999)
    add("--p-uncond", type=float, default=0.1)
    add("--p-high", type=float, default=0.3, help="share of t ~ U[T/2, T)")
    add("--p-top", type=float, default=0.0, help="share of t ~ U[0.9 T, T)")
    add("--log-every", type=int, default=50)
    add("--ground", type=float, default=0.02, help="weight of the token grounding loss (0: off)")
    add("--causal", dest="bidirectional", action="store_false", help="a causal text encoder")
    add("--resume-from", default=None, help="another run's unet_ckpt.pt to continue from")
    add("--reinit-words", default=None, help="with --resume-from: words given fresh embeddings")
    add("--reinit-std", type=float, default=1.0)
    add("--coords", action="store_true", help="two coordinate input channels (CoordConv)")
    add(
        "--drop-words",
        default="left,right,top,bottom",
        help="words the model does not learn (comma list; '' keeps every word)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the phases in order, each resuming or skipping what is already done."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "args.json", vars(args))
    from .vae import load_trained_vae, train_vae

    vae = load_trained_vae(out)
    if vae is None:
        vae = train_vae(args, out)
        from .vae import save_vae

        save_vae(vae, out / "vae")
    if args.phase == "vae":
        return
    from .latents import latent_pool

    pool = latent_pool(args, out, vae)
    if args.phase == "latents":
        return
    from .unet import train_unet

    train_unet(args, out, vae, pool)


if __name__ == "__main__":
    main()

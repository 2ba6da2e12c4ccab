"""Sharpen a demo model's pictures: ``python -m unetviz.training.decoder SRC --out DEST``.

Fine-tunes the autoencoder's decoder with its encoder frozen, as Stable Diffusion's "ft-MSE"
decoder did: the latent space stays exactly the one the UNet learned (the encoder, and so every
latent, is unchanged), only what the latents decode to gets sharper. The first autoencoder
phase stops as soon as its held-out error is under target (~700 steps); its decoder still
rounds corners and blurs small shapes. Same data and loss as that phase (L1 on 48x48 crops of
fresh scenes, decoding latents sampled from the posterior), EMA, resumable.

SRC is a demo folder (e.g. ``runs/demo6/step_20878``); DEST gets a copy of it with the new
``vae/`` (ship it with ``python -m unetviz.training.ship DEST``).
"""

from __future__ import annotations

import argparse
import copy
import random
import shutil
import sys
from pathlib import Path

import torch

from unetviz.errors import UnetvizError
from unetviz.model.autoencoder import AutoencoderKL
from unetviz.outputs import write_folder

from .common import Clock, append_jsonl, ema_update, load_state, save_state, set_lr
from .data import make_batch
from .vae import crops, reconstruction_error


def same_encoder(a: AutoencoderKL, b: AutoencoderKL) -> bool:
    """Whether two autoencoders map images to the same latents (encoder + quant_conv equal)."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    return keys == [k for k in sb if k.startswith(("encoder.", "quant_conv."))] and all(
        torch.equal(sa[k], sb[k]) for k in keys
    )


def finetune_decoder(vae: AutoencoderKL, args: argparse.Namespace, ckpt: Path) -> AutoencoderKL:
    """Train ``vae``'s decoder (and post_quant_conv) for ``args.minutes`` or ``args.steps``;
    returns the EMA autoencoder. Resumes from ``ckpt`` and logs to ``args.log`` (jsonl)."""
    vae = vae.train().requires_grad_(False)
    trained = [vae.decoder, vae.post_quant_conv]
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    ema = copy.deepcopy(vae).eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    step, before = 0, 0.0
    if ckpt.is_file():
        state = load_state(ckpt)
        vae.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, before = state["step"], state["minutes"]
        print(f"decoder: resumed at step {step} ({before:.1f} min)", flush=True)
    clock = Clock(before)
    rng = random.Random(args.seed * 7919 + step)
    gen = torch.Generator().manual_seed(args.seed + step)
    last_eval = last_save = clock.minutes()

    def mae() -> float:
        return reconstruction_error(ema, args.eval_n, ema.config.sample_size)

    def log(value: float) -> None:
        append_jsonl(args.log, {"phase": "decoder", "step": step, "mae_255": round(value, 3)})

    if step == 0:
        print(f"decoder: held-out MAE {mae():.3f}/255 before", flush=True)
    while step < args.steps and clock.minutes() < args.minutes:
        images, _, scenes = make_batch(rng, args.batch, vae.config.sample_size)
        x = crops(images, scenes, rng, args.crop)
        rec = vae(x, gen)[0]  # the encoder's weights need no grad: no graph through it
        loss = (rec - x).abs().mean()
        set_lr(opt, args.lr * min(1.0, (step + 1) / 50))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema_update(ema, vae, min(args.ema, (1 + step) / (10 + step)))
        minutes = clock.minutes()
        if minutes - last_eval >= args.eval_min:
            value = mae()
            log(value)
            print(f"decoder step {step} ({minutes:.1f} min): MAE {value:.3f}/255", flush=True)
            last_eval = minutes
        if minutes - last_save >= args.save_min:
            state = {"model": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
            save_state(ckpt, {**state, "step": step, "minutes": minutes})
            last_save = minutes
    value = mae()
    log(value)
    print(f"decoder: {step} steps, held-out MAE {value:.3f}/255", flush=True)
    return ema.requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: fine-tune, check the encoder is untouched, write DEST."""
    from unetviz.pipelines.demo import load_demo_vae, safetensors_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a latent demo folder, e.g. runs/demo6/step_20878")
    p.add_argument("--out", required=True, help="the new demo folder (src with the new vae/)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-min", type=float, default=2.0)
    p.add_argument("--eval-n", type=int, default=64, help="held-out scenes per MAE eval")
    p.add_argument("--save-min", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    src, out = Path(args.src), Path(args.out)
    vae = load_demo_vae(src)
    if vae is None:
        print(f"error: {src} has no vae/: only a latent demo model has a decoder", file=sys.stderr)
        raise SystemExit(2)
    args.log = src.parent / "evals.jsonl"
    tuned = finetune_decoder(copy.deepcopy(vae), args, out.parent / f"{out.name}_ckpt.pt")
    if not same_encoder(vae, tuned):  # the UNet's latent space must not move
        raise UnetvizError("the encoder changed while fine-tuning the decoder")

    def fill(tmp: Path) -> None:  # src as it is (configs included), but the new weights
        for part in src.iterdir():
            copy_ = shutil.copytree if part.is_dir() else shutil.copy2
            copy_(part, tmp / part.name)
        (tmp / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(safetensors_bytes(tuned))

    write_folder(out, fill)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()

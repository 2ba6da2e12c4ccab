"""Phase 1: train the autoencoder (``AutoencoderKL`` in miniature) on scenes at 96x96.

L1 reconstruction of random 48x48 crops (aligned to the 4-pixel latent grid, mostly around an
object: a conv autoencoder is translation-equivariant, so crops teach it what full images do at
a quarter of the cost) plus a tiny KL term (SD's VAE uses the same kind of weight), latents
sampled from the posterior so the decoder reads slightly noisy latents. Held-out score: mean
absolute error of full 96x96 reconstructions in 0-255 units (target <= 4).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL

from .common import Clock, append_jsonl, ema_update, load_state, save_state, set_lr
from .data import eval_scenes, make_batch


def crops(images: torch.Tensor, scenes: list, rng: random.Random, side: int) -> torch.Tensor:
    """One ``side`` x ``side`` crop per image, aligned to 4 pixels, around an object (80%)."""
    size = images.shape[-1]
    out = []
    for image, scene in zip(images, scenes, strict=True):
        if rng.random() < 0.8:
            obj = rng.choice(scene.objects)
            x = int(obj.cx + rng.uniform(-0.8, 0.8) * side / 2 - side / 2)
            y = int(obj.cy + rng.uniform(-0.8, 0.8) * side / 2 - side / 2)
        else:
            x, y = rng.randrange(size - side + 1), rng.randrange(size - side + 1)
        x = min(max(0, x // 4 * 4), size - side)
        y = min(max(0, y // 4 * 4), size - side)
        out.append(image[:, y : y + side, x : x + side])
    return torch.stack(out)


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, n: int = 64, size: int = 96) -> float:
    """Mean absolute error (0-255 units, after rounding to 8 bits) of held-out full scenes."""
    scenes = eval_scenes(n // 2, size, 1, seed=99) + eval_scenes(n - n // 2, size, 2, seed=99)
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    errors = []
    for chunk in x.split(16):
        mean, _ = vae.encode(chunk * 2 - 1)
        rec = ((vae.decode(mean).clamp(-1, 1) + 1) * 127.5).round()
        errors.append((rec - chunk * 255).abs().mean(dim=(1, 2, 3)))
    return float(torch.cat(errors).mean())


@torch.no_grad()
def latent_stats(vae: AutoencoderKL, n: int = 256, size: int = 96) -> tuple[float, float]:
    """Shift and scaling factor that give the diffusion model zero-mean unit-variance latents."""
    images, _, _ = make_batch(random.Random(7), n, size)
    means = torch.cat([vae.encode(chunk)[0] for chunk in images.split(32)])
    return float(means.mean()), float(1.0 / means.std())


def train_vae(args: Any, out: Path) -> AutoencoderKL:
    """Train (or resume) the autoencoder; returns the EMA autoencoder with its latent scaling
    set. Stops at ``args.vae_steps``, after ``args.vae_minutes`` or once the held-out error is
    below ``args.vae_stop_mae``."""
    ckpt = out / "vae_ckpt.pt"
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(AutoencoderConfig(sample_size=args.size))
    ema = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step, before, done = 0, 0.0, False
    if ckpt.is_file():
        state = load_state(ckpt)
        vae.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, before, done = state["step"], state["minutes"], state.get("done", False)
        print(f"vae: resumed at step {step} ({before:.1f} min)", flush=True)
    clock = Clock(before)
    rng = random.Random(args.seed * 7919 + step)
    gen = torch.Generator().manual_seed(args.seed + step)
    last_eval = last_save = clock.minutes()
    running = 0.0

    def save(finished: bool) -> None:
        state = {"model": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
        state.update(step=step, minutes=clock.minutes(), done=finished)
        save_state(ckpt, state)

    while not done:
        images, _, scenes = make_batch(rng, args.vae_batch, args.size)
        x = crops(images, scenes, rng, args.vae_crop)
        rec, mean, logvar = vae(x, gen)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = (rec - x).abs().mean() + args.vae_kl * kl
        set_lr(opt, args.vae_lr * min(1.0, (step + 1) / 100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_update(ema, vae, min(args.vae_ema, (1 + step) / (10 + step)))
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 25 == 0:
            print(f"vae step {step} loss {running:.4f} {clock.minutes():.1f} min", flush=True)
        minutes = clock.minutes()
        out_of_time = step >= args.vae_steps or minutes >= args.vae_minutes
        if minutes - last_eval >= args.eval_min / 2 or out_of_time:
            mae = reconstruction_error(ema.eval())
            record = {"phase": "vae", "step": step, "minutes": round(minutes, 2)}
            append_jsonl(out / "evals.jsonl", {**record, "mae_255": round(mae, 3)})
            print(f"EVAL vae step {step} held-out MAE {mae:.2f}/255", flush=True)
            last_eval = minutes
            done = out_of_time or mae <= args.vae_stop_mae
        if done or minutes - last_save >= args.save_min:
            save(done)
            last_save = minutes
    shift, scale = latent_stats(ema)
    ema.config.shift_factor, ema.config.scaling_factor = round(shift, 5), round(scale, 5)
    return ema.eval()


def save_vae(vae: AutoencoderKL, folder: Path) -> None:
    """Write ``vae/config.json`` and ``vae/diffusion_pytorch_model.safetensors``."""
    from unetviz.outputs import write_file
    from unetviz.pipelines.demo import safetensors_bytes

    from .common import write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", vae.config.to_dict())
    write_file(folder / "diffusion_pytorch_model.safetensors", safetensors_bytes(vae))


def load_trained_vae(out: Path) -> AutoencoderKL | None:
    """The finished autoencoder of a run (None while phase 1 is not done)."""
    from safetensors.torch import load_file

    folder = out / "vae"
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        return None
    vae = AutoencoderKL(AutoencoderConfig.from_json(folder / "config.json"))
    vae.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    return vae.eval().requires_grad_(False)

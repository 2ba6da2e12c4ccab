"""Train the demo model: ``python -m unetviz.demo.train [--steps N] [--out runs/demo]``.

Pixel-space v-prediction DDPM on synthetic shapes: cosine schedule; timesteps drawn from a
logit-normal (mid noise levels, where colour and shape form) mixed with 40% uniform draws from
the noisier half (where the layout is decided); a jointly trained word-level text encoder; 10%
caption dropout for classifier-free guidance; AdamW with warm-up; EMA weights. Resumable: it
continues from ``<out>/ckpt.pt`` when that exists; every ``--save-min`` minutes it rewrites the
checkpoint and exports the EMA weights to ``<out>/latest/`` (the diffusers-style demo folder);
every ``--eval-min`` minutes it scores the EMA model (``evaluate.quick_eval``) and appends the
scores to ``<out>/evals.jsonl`` with the EMA weights kept as ``<out>/step_<N>/``.
One torch thread by default: on a busy 2-core machine two threads ran ~5x slower (measured).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from unetviz import UNet2DConditionModel, UNetConfig
from unetviz.demo.data import WORDS, make_batch
from unetviz.pipelines.demo import (
    DDIMSchedule,
    DemoTextEncoder,
    TextEncoderConfig,
    WordTokenizer,
    demo_unet_config,
    save_demo,
    unet_input,
)


def build(size: int = 24) -> tuple[nn.Module, dict, DemoTextEncoder, WordTokenizer]:
    """Fresh (unet, unet_config, text_encoder, tokenizer) for the demo model."""
    unet_config = demo_unet_config(size)
    unet = UNet2DConditionModel(UNetConfig.from_dict(unet_config))
    tokenizer = WordTokenizer(WORDS, max_length=16)
    text_encoder = DemoTextEncoder(TextEncoderConfig(vocab_size=len(tokenizer.vocab)))
    return unet, unet_config, text_encoder, tokenizer


class Both(nn.Module):
    """UNet and text encoder as one module (one optimiser, one EMA)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder


def _pad_in(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Zero-pad dim 1 of a conv weight (or its Adam moment) to ``channels`` input channels:
    function preserving, the new coordinate channels start with zero weight."""
    if t.shape[1] >= channels:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], channels - t.shape[1], *t.shape[2:])], 1)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--p-high", type=float, default=0.4, help="share of t ~ U[T/2, T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-min", type=float, default=3.0)
    p.add_argument("--eval-min", type=float, default=10.0)
    p.add_argument("--eval-n", type=int, default=32)
    p.add_argument("--time-limit-min", type=float, default=1e9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    unet, unet_config, text_encoder, tokenizer = build(args.size)
    model = Both(unet, text_encoder)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    schedule = DDIMSchedule()
    step, minutes_before = 0, 0.0
    ckpt = out / "ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        w = model.unet.conv_in.weight
        key = "unet.conv_in.weight"
        grown = state["model"][key].shape[1] < w.shape[1]
        for part in ("model", "ema"):
            state[part][key] = _pad_in(state[part][key], w.shape[1])
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        if grown:  # conv_in gained the coordinate channels: pad its Adam moments too
            idx = [i for i, p in enumerate(model.parameters()) if p is w][0]
            for mom in ("exp_avg", "exp_avg_sq"):
                moments = state["opt"]["state"][idx]
                moments[mom] = _pad_in(moments[mom], w.shape[1])
            print(f"conv_in grown to {w.shape[1]} input channels (zero-initialised)", flush=True)
        opt.load_state_dict(state["opt"])
        step, minutes_before = state["step"], state.get("minutes", 0.0)
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {ckpt} at step {step} ({minutes_before:.1f} min)", flush=True)
    rng = random.Random(args.seed * 1_000_003 + step)
    n_params = sum(x.numel() for x in unet.parameters())
    n_te = sum(x.numel() for x in text_encoder.parameters())
    print(f"unet {n_params / 1e6:.2f} M params, text encoder {n_te / 1e6:.3f} M", flush=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))

    t0 = time.time()
    last_save = last_eval = t0
    log_t, log_loss, log_n = time.time(), 0.0, 0
    empty = tokenizer([""])[0]

    def elapsed_min() -> float:
        return minutes_before + (time.time() - t0) / 60

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "minutes": elapsed_min(),
            "torch_rng": torch.get_rng_state(),
            "unet_config": unet_config,
        }
        _atomic_save(state, ckpt)
        save_demo(out / "latest", ema.unet, unet_config, ema.text_encoder, tokenizer, schedule)
        (out / "latest" / "train_state.json").write_text(
            json.dumps({"step": step, "minutes": round(elapsed_min(), 2)}) + "\n"
        )

    def evaluate() -> None:
        from unetviz.demo.evaluate import quick_eval

        folder = out / f"step_{step}"
        save_demo(folder, ema.unet, unet_config, ema.text_encoder, tokenizer, schedule)
        te = time.time()
        scores = quick_eval(
            ema.unet.eval(), ema.text_encoder.eval(), tokenizer, schedule, n=args.eval_n
        )
        scores.update(step=step, minutes=round(elapsed_min(), 2), eval_s=round(time.time() - te, 1))
        with open(out / "evals.jsonl", "a") as f:
            f.write(json.dumps(scores) + "\n")
        print("EVAL " + json.dumps(scores), flush=True)

    model.train()
    while step < args.steps:
        images, captions, _ = make_batch(rng, args.batch, args.size)
        ids = tokenizer(captions)
        drop = torch.rand(args.batch) < args.p_uncond
        ids[drop] = empty
        # logit-normal (mass at mid noise levels, where colour and shape form) mixed with
        # uniform draws over the noisier half, where the layout (position words) is decided
        u = torch.sigmoid(torch.randn(args.batch))
        high = torch.rand(args.batch) < args.p_high
        u = torch.where(high, 0.5 + 0.5 * torch.rand(args.batch), u)
        t = (u * schedule.num_train_timesteps).long().clamp(0, schedule.num_train_timesteps - 1)
        noise = torch.randn_like(images)
        x_t, target = schedule.add_noise(images, noise, t)
        pred = model.unet(unet_input(model.unet, x_t), t, model.text_encoder(ids))
        loss = nn.functional.mse_loss(pred, target)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if not math.isfinite(loss.item()):
            sys.exit(f"loss is {loss.item()} at step {step}: stopping")
        log_loss += loss.item()
        log_n += 1
        if step % args.log_every == 0:
            rate = log_n / (time.time() - log_t)
            frac = min(1.0, max(step / args.steps, elapsed_min() / args.time_limit_min))
            bar = "#" * int(frac * 20) + "-" * (20 - int(frac * 20))
            print(
                f"[{bar}] {frac:4.0%} step {step}/{args.steps} loss {log_loss / log_n:.4f} lr {lr:.2e} "
                f"{rate:.2f} steps/s {elapsed_min():.1f} min",
                flush=True,
            )
            log_t, log_loss, log_n = time.time(), 0.0, 0
        now = time.time()
        done = step >= args.steps or elapsed_min() >= args.time_limit_min
        if now - last_save >= args.save_min * 60 or done:
            save()
            last_save = now
        if args.eval_min > 0 and (now - last_eval >= args.eval_min * 60 or done):
            evaluate()
            model.train()
            last_eval = time.time()
            log_t = time.time()
        if done:
            break
    print(f"done at step {step} after {elapsed_min():.1f} min", flush=True)


if __name__ == "__main__":
    main()

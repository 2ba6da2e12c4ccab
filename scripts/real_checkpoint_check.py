"""Check unetviz on a real Stable Diffusion 1.x / 2.x / SDXL checkpoint, in one command.

For the first person with real weights and a GPU: prints, ready to paste into an issue,

1. parity: unetviz's UNet vs diffusers' UNet on the same random inputs (max abs / relative
   difference of the noise prediction), and one image from unetviz's pipeline vs diffusers'
   pipeline (same prompt, seed, steps, scheduler: PSNR);
2. capture overhead: median UNet forward under ``capture()``, ``capture(daam=True)`` and
   ``capture(mode="stream")`` vs a plain forward (CUDA-synchronised timings);
3. DAAM maps (``preset="daam"``, DAAM 0.2.0's word heat map) of a few prompts: per word the peak
   position, the area of the tau=0.4 mask and the share of the map's mass inside it; the maps
   are written as PNGs to ``--out`` when given.

    python scripts/real_checkpoint_check.py /path/to/stable-diffusion-v1-5 --device cuda
    python scripts/real_checkpoint_check.py /path/to/sdxl-base --device cuda --steps 30

Needs torch, diffusers and transformers (``pip install 'unetviz[dev]'``). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = (
    "a photo of a cat sitting on a red sofa",
    "an astronaut riding a horse on the moon",
    "a bowl of oranges next to a blue vase",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="real_checkpoint_check.py",
        description="Parity, capture overhead and DAAM maps of unetviz on a real SD checkpoint.",
    )
    p.add_argument("model", help="a diffusers Stable Diffusion folder (SD 1.x, 2.x or SDXL)")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default: 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=10, help="timed UNet forwards per variant")
    p.add_argument("--prompt", action="append", dest="prompts", help="repeatable")
    p.add_argument("--out", type=Path, help="a new folder for the DAAM map PNGs")
    p.add_argument("--skip-pipeline-parity", action="store_true")
    args = p.parse_args(argv)
    args.prompts = args.prompts or list(DEFAULT_PROMPTS)
    return args


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def unet_inputs(unet: Any, device: Any, dtype: Any, seed: int) -> dict[str, Any]:
    """Random UNet inputs of the model's native size: batch 2 (CFG), 77 tokens, SDXL's added
    conditions when the config asks for them."""
    import torch

    cfg = unet.config
    g = torch.Generator("cpu").manual_seed(seed)
    side = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    kw: dict[str, Any] = {
        "sample": torch.randn(2, cfg.in_channels, side, side, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, generator=g),
            "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2),
        }
    return _to(kw, device, dtype)


def _to(value: Any, device: Any, dtype: Any) -> Any:
    import torch

    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(device, dtype)
    return value.to(device) if hasattr(value, "to") else value


def unet_parity(args: argparse.Namespace, dtype: Any) -> Any:
    """unetviz's UNet vs diffusers' on the same inputs; returns diffusers' UNet (reused)."""
    import diffusers
    import torch

    from unetviz.weights import load_unet

    ours = load_unet(args.model, dtype=dtype, device=args.device).eval()
    theirs = diffusers.UNet2DConditionModel.from_pretrained(
        args.model, subfolder="unet", torch_dtype=dtype
    ).to(args.device).eval()  # fmt: skip
    kw = unet_inputs(theirs, args.device, dtype, args.seed)
    with torch.no_grad():
        want = theirs(**kw).sample.float()
        got = ours(**kw)
        got = (got if isinstance(got, torch.Tensor) else got.sample).float()
    diff = (got - want).abs()
    print(f"[parity] UNet noise prediction, {args.dtype}: max |unetviz - diffusers| "
          f"{diff.max().item():.3e}, relative {(diff.norm() / want.norm()).item():.3e}")  # fmt: skip
    del ours
    return theirs


def pipeline_parity(args: argparse.Namespace, dtype: Any) -> None:
    """One image from each pipeline (same prompt, seed, steps, guidance, scheduler): PSNR."""
    import diffusers
    import numpy as np
    import torch

    from unetviz.pipelines import load_pipeline

    ours = load_pipeline(args.model, dtype=dtype, device=args.device)
    run = ours(args.prompts[0], seed=args.seed, steps=args.steps, attention=False, temb=False)
    cls = diffusers.DiffusionPipeline
    theirs = cls.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    theirs.scheduler = diffusers.DDIMScheduler.from_config(theirs.scheduler.config)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    image = theirs(args.prompts[0], num_inference_steps=args.steps, generator=gen).images[0]
    a = np.asarray(run.image, dtype=np.float64)
    b = np.asarray(image.resize(run.image.size), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    print(f"[parity] image, unetviz pipeline vs diffusers' ({type(theirs).__name__}, DDIM, "
          f"seed {args.seed}, {args.steps} steps): PSNR {psnr:.1f} dB (initial noise and "
          "scheduler defaults may differ: a low PSNR is a lead, not a verdict)")  # fmt: skip


def overhead(args: argparse.Namespace, unet: Any, dtype: Any) -> None:
    """Median UNet forward inside each capture variant (the capture open over the loop, as in
    a sampling loop) vs a plain forward: milliseconds added and ratios; a capture per forward
    (enter and exit included); on CUDA the host syncs of one captured forward."""
    import torch

    from unetviz.capture import capture

    kw = unet_inputs(unet, args.device, dtype, args.seed)
    variants = {"capture(attention=False)": {"attention": False}, "capture()": {},
                "capture(daam=True)": {"daam": True},
                "capture(mode='stream')": {"mode": "stream"}}  # fmt: skip

    def timed(fn: Any) -> float:
        _sync(args.device)
        start = time.perf_counter()
        fn()
        _sync(args.device)
        return (time.perf_counter() - start) * 1000

    def median_of(fn: Any) -> float:
        fn()  # warm-up (a capture's first forward)
        return statistics.median(timed(fn) for _ in range(args.rounds))

    def one() -> None:
        with capture(unet):
            unet(**kw)

    with torch.no_grad():
        unet(**kw)
        plain = [median_of(lambda: unet(**kw))]
        medians = {}
        for name, options in variants.items():
            with capture(unet, **options):
                medians[name] = median_of(lambda: unet(**kw))
        medians["capture(), one per forward"] = median_of(one)
        plain.append(median_of(lambda: unet(**kw)))  # before and after: the drift
    base = statistics.mean(plain)
    print(f"[overhead] plain UNet forward {base:.2f} ms (median of {args.rounds}; before / after "
          f"{plain[0]:.2f} / {plain[1]:.2f} ms)")  # fmt: skip
    for name, ms in medians.items():
        print(f"[overhead] {name:<28} {ms - base:+8.2f} ms per forward  x{ms / base:.3f}")
    if str(args.device).startswith("cuda"):
        print(f"[overhead] host syncs in one forward under capture(): {_syncs(unet, kw)}")


def _syncs(unet: Any, kw: dict[str, Any]) -> int:
    """Synchronising CUDA calls in one forward under ``capture()`` (after its first)."""
    import warnings

    import torch

    from unetviz.capture import capture

    with torch.no_grad(), capture(unet):
        unet(**kw)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                unet(**kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def daam_maps(args: argparse.Namespace, dtype: Any) -> dict[str, bytes]:
    """DAAM maps of each prompt's words: peak, tau=0.4 mask area, mass inside the mask;
    returns the maps as PNG bytes by file name."""
    import torch

    from unetviz.pipelines import load_pipeline

    pipe = load_pipeline(args.model, dtype=dtype, device=args.device)
    pngs: dict[str, bytes] = {}
    for i, prompt in enumerate(args.prompts):
        run = pipe(prompt, seed=args.seed, steps=args.steps, daam=True, mode="stream")
        words = [w for w in dict.fromkeys(run.trace.words) if w]
        print(f"[daam] {prompt!r} ({run.trace.steps} UNet calls)")
        for word in words:
            raw = _daam(run.trace, word)
            heat = torch.as_tensor(raw).float()
            norm = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
            mask = norm > 0.4
            peak = divmod(int(norm.argmax()), norm.shape[1])
            share = float(heat[mask].sum() / heat.sum()) if heat.sum() > 0 else 0.0
            print(f"  {word:<14} peak (row, col) {peak}, mask {mask.float().mean().item():.1%} "
                  f"of the image, {share:.1%} of the mass")  # fmt: skip
            pngs[f"{i:02d}_{word}.png"] = _png(norm)
    return pngs


def _daam(trace: Any, word: str) -> Any:
    """DAAM's map; off the model's native size DAAM has none: then say so and use the
    DAAM-like recipe (labelled), so the run still reports numbers."""
    from unetviz.errors import UnetvizError

    try:
        return trace.heatmap(word, preset="daam", normalize=None)
    except UnetvizError as exc:
        if "no map left" not in str(exc):
            raise
        print(f"  ({word}: {exc}; showing preset='daam-approx')")
        return trace.heatmap(word, preset="daam-approx", normalize=None)


def _png(heat: Any) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((heat.numpy() * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    dtype = getattr(torch, args.dtype)
    print(f"unetviz real-checkpoint check: {args.model} on {args.device}, {args.dtype}, "
          f"torch {torch.__version__}")  # fmt: skip
    if args.out is not None:
        from unetviz.outputs import check_output_folder

        check_output_folder(args.out)  # refuse before hours of work, not after
    unet = unet_parity(args, dtype)
    overhead(args, unet, dtype)
    del unet
    if not args.skip_pipeline_parity:
        pipeline_parity(args, dtype)
    pngs = daam_maps(args, dtype)
    if args.out is not None:
        from unetviz.outputs import write_folder

        def fill(tmp: Path) -> None:
            for name, data in pngs.items():
                (tmp / name).write_bytes(data)

        write_folder(args.out, fill)
        print(f"[daam] {len(pngs)} maps written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

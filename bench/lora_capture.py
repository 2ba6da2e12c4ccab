"""What a fused LoRA costs: median forward time under capture of the demo UNet with the shipped
LoRA (examples/yellow.safetensors) fused / without it, measured interleaved in one run,
plus the time to fuse and to unfuse. Fused weights are ordinary weights, so the ratio should be
1.00 within noise.

    .venv/bin/python bench/lora_capture.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from unetviz import capture
from unetviz.lora import fuse_loras
from unetviz.pipelines import load_pipeline

LORA = Path(__file__).resolve().parent.parent / "examples" / "yellow.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = load_pipeline("demo")
    fused_pipe = load_pipeline("demo")
    start = time.perf_counter()
    fused = fuse_loras(fused_pipe.lora_models(), [(LORA, 1.0)])
    fuse_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 24, 24, generator=g)
    ctx = torch.randn(2, 20, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 64, generator=g), "time_ids": torch.ones(2, 6) * 96}
    times: dict[str, list[float]] = {"plain": [], "fused": []}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, pipe in (("plain", plain), ("fused", fused_pipe)):
                with capture(pipe.unet, cfg=True, daam=True):
                    t0 = time.perf_counter()
                    pipe.unet(x, torch.tensor(500), ctx, added_cond_kwargs=added)
                    times[name].append(time.perf_counter() - t0)
    start = time.perf_counter()
    fused.unfuse()
    unfuse_s = time.perf_counter() - start
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(
        f"forward under capture, median of {args.rounds} (ms): plain {med['plain']:.2f}, "
        f"with LoRA fused {med['fused']:.2f}, ratio {med['fused'] / med['plain']:.3f}"
    )
    print(
        f"fuse {fuse_s * 1000:.1f} ms, unfuse {unfuse_s * 1000:.1f} ms "
        f"({len(fused.matches)} modules)"
    )


if __name__ == "__main__":
    main()

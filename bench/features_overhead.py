"""What ``capture(features=...)`` costs, measured in one interleaved run on the CPU.

The SD1.5-shaped mid-size UNet of ``bench/capture_overhead.py`` (block_out_channels
128/256/384/384, batch 2 = CFG, 77 tokens), a 10-step "sampling" (10 forwards) per capture,
variants run round by round in a shuffled order so machine noise hits each alike:

- plain forward (no capture)
- plain capture at blocks detail (``capture(unet, detail="blocks")``: shapes, temb, attention)
- the same + ``features="blocks"``                       target <= 1.10 x plain capture
- the same + ``features="layers"``

Prints median wall and CPU seconds per 10-step capture and the ratios, the feature bytes the
trace keeps per step, and SD 1.5 at 512 px's bytes per step (from its meta structure).

    .venv/bin/python bench/features_overhead.py [--rounds 9] [--size 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_overhead import mid_size_sd15  # noqa: E402  (the one mid-size model)

from unetviz import UNet2DConditionModel, UNetConfig, capture  # noqa: E402
from unetviz.capture.features import bytes_per_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--size", type=int, default=32, help="latent side")
    ap.add_argument("--steps", type=int, default=10, help="forwards per capture")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = UNetConfig.from_dict(mid_size_sd15())
    unet = UNet2DConditionModel(cfg).eval()
    x = torch.randn(2, 4, args.size, args.size)
    ctx = torch.randn(2, 77, cfg.cross_attention_dim)
    ts = [torch.tensor(999.0 - i * 999.0 / args.steps) for i in range(args.steps)]

    def sample() -> None:
        for t in ts:
            unet(x, t, ctx)

    def under(**options):
        def run() -> None:
            with capture(unet, detail="blocks", **options):
                sample()

        return run

    variants = {
        "forward": sample,
        "capture": under(),
        "capture+features": under(features="blocks"),
        "capture+features(layers)": under(features="layers"),
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            order = list(variants)
            random.shuffle(order)
            for name in order:
                w, c = time.perf_counter(), time.process_time()
                variants[name]()
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
        with capture(unet, detail="blocks", features="blocks") as trace:
            sample()
    med = {k: statistics.median(v) for k, v in wall.items()}
    medc = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{args.rounds} rounds, {args.steps} forwards per capture, latent {args.size}², CPU,")
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':28s} {'wall s':>8s} {'cpu s':>8s} {'/capture':>9s} {'/forward':>9s}")
    for k in variants:
        print(
            f"{k:28s} {med[k]:8.3f} {medc[k]:8.3f} {med[k] / med['capture']:9.3f} "
            f"{med[k] / med['forward']:9.3f}"
        )
    ratio = med["capture+features"] / med["capture"]
    ratio_cpu = medc["capture+features"] / medc["capture"]
    print(f"features at blocks detail / plain capture: wall {ratio:.3f}, cpu {ratio_cpu:.3f}")
    print("(target <= 1.10)")
    kept = sum(f.nbytes() for f in trace.features.values()) / max(trace.steps, 1)
    print(f"feature bytes kept per step (this model, blocks): {kept:,.0f}")
    from unetviz.structure import structure_trace

    sd = structure_trace("sd15", 512, 512, detail="layers")
    for level, levels in (("blocks", ("block",)), ("layers", ("block", "layer"))):
        shapes = [
            b.outputs["sample"]
            for b in sd.blocks
            if b.level in levels and len(b.outputs.get("sample", [])) == 4
        ]
        print(f"SD 1.5 at 512 px, {level}: {bytes_per_step(shapes):,} bytes per step")


if __name__ == "__main__":
    main()

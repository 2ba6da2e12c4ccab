"""Cost of interventions: edited forward / plain forward on the mid-size SD1.5-shaped UNet of
bench/forward.py (latent 32, batch 2, 77 tokens, CPU fp32, one thread; runs interleaved so
machine noise hits both alike), and wall times on the demo model (one edited run as the app
makes it, sweeps over all blocks / layers / skips).

Targets (issue 14): Reweight on every cross-attention <= 1.3, skip / temb edits <= 1.05;
demo: one edited run <= 1.5 s, a sweep over all blocks <= 20 s.

    .venv/bin/python bench/edits.py [--repeats 9] [--no-demo]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import mid_size_sd15  # noqa: E402

import unetviz  # noqa: E402
from unetviz import edits  # noqa: E402

CASES = {
    "Reweight(token 5, 0) on all 16 cross-attentions": [edits.Reweight(5, 0.0)],
    "Reweight x2 (two tokens), steps window": [
        edits.Reweight(5, 0.0),
        edits.Reweight(6, 2.0, steps=(0, 100)),
    ],
    "AblateSkip(3, zero)": [edits.AblateSkip(3)],
    "AblateSkip(3, mean)": [edits.AblateSkip(3, "mean")],
    "ScaleTemb(all resnets, 0.5)": [edits.ScaleTemb("all", 0.5)],
    "AblateBlock(mid_block, mean)": [edits.AblateBlock("mid_block", "mean")],
}


def forward_ratios(repeats: int, size: int) -> None:
    torch.manual_seed(0)
    unet = unetviz.UNet2DConditionModel(unetviz.UNetConfig.from_dict(mid_size_sd15())).eval()
    sample = torch.randn(2, 4, size, size)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])
    print(f"mid-size SD1.5-shaped UNet, latent {size}, batch 2, 77 tokens, 1 thread")
    print(f"{'edit':50} {'wall ratio':>10} {'cpu ratio':>10}")
    with torch.inference_mode():
        for _ in range(2):
            unet(sample, t, context)
        for name, chosen in CASES.items():
            wall = {"plain": [], "edit": []}
            cpu = {"plain": [], "edit": []}
            for _ in range(repeats):
                for kind in ("plain", "edit"):
                    iv = edits.intervene(unet, chosen if kind == "edit" else [])
                    with iv:
                        s, c = time.perf_counter(), time.process_time()
                        unet(sample, t, context)
                        wall[kind].append(time.perf_counter() - s)
                        cpu[kind].append(time.process_time() - c)
            w = statistics.median(wall["edit"]) / statistics.median(wall["plain"])
            c = statistics.median(cpu["edit"]) / statistics.median(cpu["plain"])
            print(f"{name:50} {w:10.3f} {c:10.3f}")


def demo_times(repeats: int) -> None:
    from unetviz.training.edit_scores import scorer_for

    pipe = unetviz.load_pipeline("demo")
    prompt = "a red circle"
    pipe(prompt, seed=0)  # warm-up
    runs, cmps = [], []
    for _ in range(repeats):
        runs.append(_timed(lambda: pipe(prompt, seed=0, edits=[edits.Reweight("red", 0.0)])))
        cmps.append(_timed(lambda: pipe.compare(prompt, edits=[edits.Reweight("red", 0)], seed=0)))
    print("\ndemo model, 25 steps, full capture (as the app runs it); wall s (CPU s)")
    median = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    print(f"one edited run:          {median(runs, 0):6.2f} ({median(runs, 1):.2f})")
    print(f"compare (base + edited): {median(cmps, 0):6.2f} ({median(cmps, 1):.2f})")
    for over in ("blocks", "layers", "skips"):
        s, c = time.perf_counter(), time.process_time()
        result = edits.sweep(pipe, prompt, over=over, score=scorer_for(pipe))
        wall, cpu = time.perf_counter() - s, time.process_time() - c
        n = len(result.rows)
        print(f"sweep over all {over:7} ({n:2} runs + base): {wall:6.2f} ({cpu:.2f})")


def _timed(fn) -> tuple[float, float]:
    s, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - s, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--no-forward", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.no_forward:
        forward_ratios(args.repeats, args.size)
    if not args.no_demo:
        demo_times(max(3, args.repeats // 3))


if __name__ == "__main__":
    main()

"""Demo model: 25-step generation with capture, wall time on this machine (target <= 5 s).

    .venv/bin/python bench/demo.py [--model assets/demo] [--repeat 3] [--threads 1]

Prints the time of one ``pipe(prompt, steps=25, guidance=4.0)`` call (capture on: attention
maps per step, temb, layer records), the same sampling loop without capture, and their ratio,
all measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", default="a red circle on the left and a blue square")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from unetviz.pipelines import load_pipeline
    from unetviz.pipelines.demo import sample

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model)
    load_s = time.perf_counter() - t0
    pipe(args.prompt, steps=2)  # warm-up

    with_capture, without = [], []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        run = pipe(args.prompt, seed=i, steps=25, guidance=4.0)
        with_capture.append(time.perf_counter() - t0)
        cond, _, _ = pipe.encode(args.prompt)
        uncond = pipe.encode("")[0]
        t0 = time.perf_counter()
        with torch.no_grad():
            sample(
                pipe.unet,
                pipe.schedule,
                cond,
                uncond,
                torch.Generator().manual_seed(i),
                25,
                4.0,
                pipe.size,
            )
        without.append(time.perf_counter() - t0)
    cap, raw = statistics.median(with_capture), statistics.median(without)
    print(f"model load: {load_s:.2f} s; torch threads: {args.threads}")
    print(f"25-step generation with capture: {cap:.2f} s (median of {args.repeat}; target <= 5 s)")
    print(f"25-step generation without capture: {raw:.2f} s; capture overhead x{cap / raw:.2f}")
    print(f"attention layers captured: {len(run.trace.attention)}, tokens: {len(run.tokens)}")


if __name__ == "__main__":
    main()

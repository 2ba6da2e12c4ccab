"""Demo model: 25-step generation with capture and VAE decode (target <= 1.0 s on this
machine) and the first generation after start-up (target <= 2 s).

    .venv/bin/python bench/demo.py [--model demo] [--repeat 3] [--threads 1]

Prints, all measured in this run: a fresh process's import + model load and its first
``pipe(prompt, steps=25)`` call; then in this process the median ``pipe(prompt, steps=25,
guidance=4.0)`` call (capture on: attention maps per step, temb, layer records; the VAE decodes
the final latents of a latent model), the same sampling loop and decode without capture, and
their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

FIRST = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
from unetviz.pipelines import load_pipeline
pipe = load_pipeline({model!r})
t1 = time.perf_counter()
pipe({prompt!r}, seed=0, steps=25, guidance=4.0)
t2 = time.perf_counter()
print(json.dumps({{"load": t1 - t0, "first": t2 - t1}}))
"""


def first_generation(model: str, prompt: str, threads: int) -> dict[str, float]:
    """Start-up in a fresh interpreter: import + load, then the first 25-step call."""
    code = FIRST.format(model=model, prompt=prompt, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", default="a red circle and a blue square")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = first_generation(args.model, args.prompt, args.threads)

    from unetviz.pipelines import load_pipeline

    pipe = load_pipeline(args.model)
    pipe(args.prompt, steps=2)  # warm-up
    with_capture, without = [], []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        run = pipe(args.prompt, seed=i, steps=25, guidance=4.0)
        with_capture.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x = pipe.denoise(args.prompt, "", torch.Generator().manual_seed(i), 25, 4.0)
        pipe.decode(x)
        without.append(time.perf_counter() - t0)
    cap, raw = statistics.median(with_capture), statistics.median(without)
    kind = "latent + VAE decode" if pipe.vae is not None else "pixel"
    print(f"model {args.model} ({kind}, {pipe.size}x{pipe.size}); torch threads: {args.threads}")
    print(
        f"fresh process: import + load {start['load']:.2f} s, first 25-step generation "
        f"{start['first']:.2f} s (target <= 2 s)"
    )
    print(
        f"25-step generation with capture: {cap:.2f} s (median of {args.repeat}; target <= 1.0 s)"
    )
    print(f"25-step generation without capture: {raw:.2f} s; capture overhead x{cap / raw:.2f}")
    print(f"attention layers captured: {len(run.trace.attention)}, tokens: {len(run.tokens)}")


if __name__ == "__main__":
    main()

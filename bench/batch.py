"""unetviz batch throughput: engines on the demo model, and the per-prompt cost of SD 1.5.

    .venv/bin/python bench/batch.py [--prompts 16] [--steps 10] [--no-ray]
    .venv/bin/python bench/batch.py --sd15 [--sd-steps 2]

Demo part (all in one run, same prompt set, same options): the in-process engine, ``--workers 2``
(local processes) and Ray actors (2, on a local Ray cluster started here with 2 CPUs, no
dashboard). For each engine it prints
- prompts/s in steady state (first to last finished prompt; model loading excluded) and the
  whole run's wall time (start-up included);
- prompts/s relative to in-process (2 workers on this 2-core machine, shared with other jobs, can
  at best double it);
- worker seconds per prompt (median time inside ``Worker.process``, as the workers report it);
- engine overhead per prompt: median of (round trip from handing a prompt to a worker to
  having its result in the driver) - (worker seconds), in ms and as a share of the worker
  seconds: pickling, transfer and scheduling, what the Ray (or local) path adds to a prompt;
- peak resident memory per worker (the largest ``ru_maxrss`` a worker reported).

SD 1.5 part (``--sd15``): an SD 1.5-shaped UNet (random weights, fp32, CPU) under capture with
``daam=True`` at 512x512 (latent 64, CFG batch 2, 77 tokens): wall and CPU seconds per
denoising step; the statistics of one prompt (12 words, 5 buckets, masks at 512x512 and at
64x64) on that trace (CPU seconds);
a diffusers AutoencoderKL decode and a CLIP-L text encoder forward (random weights, SD 1.5
configs) if diffusers/transformers are installed. Prints the per-prompt CPU estimate for 50
steps. Weights are random: the cost of the arithmetic does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _demo_set(folder: Path, n: int) -> Path:
    from unetviz.batch.demo_set import make_demo_set

    (folder / "masks").mkdir(parents=True)
    return make_demo_set(n, folder)


def _run(prompts: Path, out: Path, engine, steps: int) -> dict:
    import pyarrow.parquet as pq

    from unetviz.batch import JobSpec, run_batch
    from unetviz.batch.demo_set import known_classes

    spec = JobSpec(steps=steps, buckets=4, mask_source="generated", known_classes=known_classes())
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = run_batch(
        prompts, out, spec, engine=engine, progress=lambda p: stamps.append(time.perf_counter())
    )
    wall = time.perf_counter() - t0
    p = pq.read_table(out / "prompts.parquet").to_pandas()
    n = len(stamps)
    steady = (stamps[-1] - stamps[0]) / (n - 1) if n > 1 else wall / max(n, 1)
    worker_s = float(p["seconds"].median())
    extra = float((p["roundtrip"] - p["seconds"]).median())
    return {
        "engine": f"{engine.name} x{engine.workers}",
        "prompts": n,
        "failed": res.failed,
        "wall_s": wall,
        "rows_per_s": 1.0 / steady,
        "worker_s": worker_s,
        "overhead_ms": extra * 1000,
        "overhead_pct": 100 * extra / worker_s,
        "peak_rss_mb": float(p["peak_rss_mb"].max()),
        "table": pq.read_table(out / "table.parquet"),
    }


def bench_engines(n: int, steps: int, ray_too: bool) -> None:
    from unetviz.batch.engines import InProcessEngine, LocalEngine, RayEngine

    tmp = Path(tempfile.mkdtemp(prefix="unetviz-bench-batch-"))
    try:
        prompts = _demo_set(tmp / "set", n)
        runs = [_run(prompts, tmp / "inproc", InProcessEngine(), steps)]
        runs.append(_run(prompts, tmp / "local", LocalEngine(2), steps))
        if ray_too:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            try:
                runs.append(_run(prompts, tmp / "ray", RayEngine("auto", workers=2), steps))
            finally:
                ray.shutdown()
        base = runs[0]
        print(f"demo model, {n} demo-set prompts, {steps} steps, CFG 4.0, 4 buckets")
        print(
            f"{'engine':<16}{'wall s':>8}{'prompts/s':>8}{'x in-proc':>10}{'worker s':>10}"
            f"{'engine overhead':>20}{'peak MiB':>10}  equal"
        )
        for r in runs:
            print(
                f"{r['engine']:<16}{r['wall_s']:>8.1f}{r['rows_per_s']:>8.2f}"
                f"{r['rows_per_s'] / base['rows_per_s']:>10.2f}{r['worker_s']:>10.3f}"
                f"{r['overhead_ms']:>11.1f} ms {r['overhead_pct']:>5.1f}%{r['peak_rss_mb']:>10.0f}"
                f"  {r['table'].equals(base['table'])}"
            )
        print(f"load average after the run: {os.getloadavg()[0]:.1f} (2 cores)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_sd15(steps: int) -> None:
    import numpy as np
    import torch

    from unetviz.batch.stats import MAX_SCORE_SIDE, run_records
    from unetviz.capture import capture
    from unetviz.config import UNetConfig
    from unetviz.weights import build_unet

    torch.manual_seed(0)
    unet = build_unet(UNetConfig.preset("sd15"), device="cpu").eval()
    x = torch.randn(2, 4, 64, 64)
    ctx = torch.randn(2, 77, 768)
    times, cpu = [], []
    with torch.no_grad(), capture(unet, attention=True, daam=True) as trace:
        for i in range(steps):
            t, c = time.perf_counter(), time.process_time()
            unet(x, torch.tensor(999 - 20 * i), ctx)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    step, step_cpu = statistics.median(times), statistics.median(cpu)
    words = "a photo of a cat sitting on a red sofa near the window".split()
    trace.tokens = ["<sot>", *words, "<eot>"] + ["<eot>"] * (75 - len(words))
    trace.words = [None, *words] + [None] * (76 - len(words))
    masks512 = {w: np.zeros((512, 512), bool) for w in ("cat", "sofa", "window", "red")}
    for m in masks512.values():
        m[100:300, 150:400] = True
    masks64 = {w: m[::8, ::8].copy() for w, m in masks512.items()}
    c = time.process_time()
    recs = run_records(trace, masks512, 5)
    stats512 = time.process_time() - c
    c = time.process_time()
    run_records(trace, masks64, 5)
    stats64 = time.process_time() - c
    print(f"SD 1.5 UNet (random weights) fp32 CPU, {torch.get_num_threads()} threads, 512x512:")
    print(
        f"  denoising step with capture (daam=True), CFG batch 2: {step:.2f} s wall, "
        f"{step_cpu:.2f} s CPU (median of {steps})"
    )
    print(
        f"  statistics of one prompt ({len(recs)} rows), CPU: masks 512px {stats512:.2f} s "
        f"(scored at {MAX_SCORE_SIDE}px), 64px {stats64:.2f} s"
    )
    extra = 0.0
    try:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        ).eval()
        with torch.no_grad():
            c = time.process_time()
            vae.decode(torch.randn(1, 4, 64, 64))
            extra += (dec := time.process_time() - c)
        print(f"  VAE decode (AutoencoderKL, SD 1.5 config): {dec:.2f} s CPU")
        from transformers import CLIPTextConfig, CLIPTextModel

        te = CLIPTextModel(CLIPTextConfig()).eval()  # CLIP ViT-L/14 text tower sizes
        with torch.no_grad():
            c = time.process_time()
            te(torch.zeros(2, 77, dtype=torch.long))
            extra += (enc := time.process_time() - c)
        print(f"  CLIP-L text encoder, prompt + negative: {enc:.2f} s CPU")
    except ImportError:
        print("  (diffusers/transformers not installed: VAE and text encoder not measured)")
    total = 50 * step_cpu + stats512 + extra
    print(f"  per prompt, 50 steps: {total:.0f} s CPU ({total / 60:.1f} min on one core)")
    print(
        json.dumps(
            {
                "step_s": step,
                "step_cpu_s": step_cpu,
                "stats512_s": stats512,
                "stats64_s": stats64,
                "extra_s": extra,
                "load": os.getloadavg()[0],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--sd15", action="store_true", help="SD 1.5 per-prompt CPU cost instead")
    ap.add_argument("--sd-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for --sd15")
    args = ap.parse_args()
    if args.sd15:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        bench_sd15(args.sd_steps)
    else:
        bench_engines(args.prompts, args.steps, not args.no_ray)


if __name__ == "__main__":
    main()

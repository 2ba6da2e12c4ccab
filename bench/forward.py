"""Forward speed of unetviz's UNet vs diffusers' on the same weights and input, and meta builds.

Prints the median-time ratio unetviz/diffusers (target <= 1.00) measured in one run with the two
models interleaved, so machine noise hits both alike.

    .venv/bin/python bench/forward.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import unetviz
from unetviz import UNetConfig


def mid_size_sd15() -> dict:
    data = UNetConfig.preset("sd15").to_dict()
    data.update(
        block_out_channels=[128, 256, 384, 384], attention_head_dim=4, cross_attention_dim=384
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel as DiffusersUNet

    data = mid_size_sd15()
    ref = DiffusersUNet(**{k: v for k, v in data.items() if k[0] != "_"}).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = unetviz.load_unet(tmp)
    sample = torch.randn(2, 4, args.size, args.size)
    context = torch.randn(2, 77, data["cross_attention_dim"])
    t = torch.tensor([500, 500])
    times: dict[str, list[float]] = {"unetviz": [], "diffusers": []}
    cpu: dict[str, list[float]] = {"unetviz": [], "diffusers": []}
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            ref(sample, t, context)
            ours(sample, t, context)
        for _ in range(args.repeats):
            for name, model in (("unetviz", ours), ("diffusers", ref)):
                start, start_cpu = time.perf_counter(), time.process_time()
                model(sample, t, context)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"config: SD1.5-shaped, block_out_channels {data['block_out_channels']}, {params / 1e6:.1f} M params"
    )
    print(
        f"input: sample (2,4,{args.size},{args.size}), context (2,77,{data['cross_attention_dim']}), fp32 CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"median forward: unetviz {med['unetviz'] * 1000:.1f} ms, diffusers {med['diffusers'] * 1000:.1f} ms"
    )
    print(f"ratio unetviz/diffusers: {med['unetviz'] / med['diffusers']:.3f}  (target <= 1.00)")
    # CPU time is less sensitive than wall time to other processes on a shared machine
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"CPU-time ratio unetviz/diffusers: {cpu_med['unetviz'] / cpu_med['diffusers']:.3f}")
    for preset in ("sd15", "sdxl"):
        builds = []
        for _ in range(5):
            start = time.perf_counter()
            unetviz.build_unet(preset, device="meta")
            builds.append(time.perf_counter() - start)
        print(f"meta build {preset}: median {statistics.median(builds) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

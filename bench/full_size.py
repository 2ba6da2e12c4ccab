"""Full-size checkpoints (random weights, scripts/make_full_size.py) through unetviz: for each
model, in a fresh child process,

- load: ``load_pipeline`` wall time and peak memory (VmHWM above the post-import baseline),
  also divided by the checkpoint's size on disk;
- UNet step: seconds per UNet forward (batch 2 = one prompt with CFG, 77 tokens) without and
  with ``capture()`` (interleaved rounds, the fastest of each), and their ratio;
- trace: the bytes of the trace bundle of a 1-step pipeline run (what ``unetviz attention``
  writes as run.trace), and the process's peak memory after it.

    python scripts/make_full_size.py /work/fullsize
    nice -n 10 python bench/full_size.py /work/fullsize                    # 256 px
    nice -n 10 python bench/full_size.py /work/fullsize --size native --only sdxl

Prints one table; not part of the test suite (minutes of CPU per model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
from unetviz import capture
from unetviz.pipelines import load_pipeline

def vm(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 2**20  # GiB

args = json.loads(sys.argv[1])
torch.manual_seed(0)
base = vm("VmRSS")
t0 = time.perf_counter()
opts = {"dtype": args["dtype"]}
if args["config"]:
    opts["config"] = args["config"]
pipe = load_pipeline(args["model"], **opts)
load_s = time.perf_counter() - t0
load_peak = vm("VmHWM") - base
unet = pipe.unet
cfg = unet.config
side = args["size"] or cfg.sample_size * 8
h = w = side // 8
dtype = next(unet.parameters()).dtype
g = torch.Generator().manual_seed(0)
kw = {"encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim, generator=g).to(dtype)}
if cfg.addition_embed_type == "text_time":
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    kw["added_cond_kwargs"] = {
        "text_embeds": torch.randn(2, pooled, generator=g).to(dtype),
        "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2, dtype=dtype),
    }
sample = torch.randn(2, cfg.in_channels, h, w, generator=g).to(dtype)
plain, captured = [], []
with torch.no_grad():
    for _ in range(args["rounds"]):
        t = time.perf_counter(); unet(sample, 500, **kw); plain.append(time.perf_counter() - t)
        with capture(unet):
            t = time.perf_counter(); unet(sample, 500, **kw); captured.append(time.perf_counter() - t)
step_peak = vm("VmHWM") - base
run = pipe("a photo of a cat on the red sofa", seed=0, steps=1, height=side, width=side)
with tempfile.TemporaryDirectory() as tmp:
    run.trace.save(Path(tmp) / "run.trace")
    trace_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
print(json.dumps({
    "load_s": load_s, "load_peak": load_peak, "step_peak": step_peak,
    "run_peak": vm("VmHWM") - base, "plain": min(plain), "captured": min(captured),
    "trace_bytes": trace_bytes, "side": side, "dtype": str(dtype).removeprefix("torch."),
}))
"""

MODELS = {
    "sd15": ("sd15", None),
    "sd15-single": ("sd15.safetensors", "sd15"),
    "sdxl": ("sdxl", None),
    "sdxl-single": ("sdxl.safetensors", "sdxl"),
}


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="full-size checkpoints through unetviz")
    p.add_argument("root", type=Path, help="the folder scripts/make_full_size.py wrote")
    p.add_argument("--only", action="append", choices=sorted(MODELS))
    p.add_argument("--size", default="256", help="pixels, or 'native' (512 / 1024)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--sdxl-dtype", default="bfloat16", help="SDXL's dtype (fits 24 GiB)")
    args = p.parse_args(argv)
    size = None if args.size == "native" else int(args.size)
    print(
        f"{'model':12s} {'dtype':8s} {'px':>5s} {'disk GiB':>8s} {'load s':>7s} "
        f"{'load peak GiB':>13s} {'/disk':>6s} {'s/step':>7s} {'captured':>8s} {'ratio':>6s} "
        f"{'trace MB':>8s} {'peak GiB':>8s}",
        flush=True,
    )
    for name in args.only or list(MODELS):
        rel, config = MODELS[name]
        model = args.root / rel
        if not model.exists():
            print(f"{name:12s} missing: {model}")
            continue
        child = {
            "model": str(model),
            "config": str(args.root / config) if config else None,
            "size": size,
            "rounds": args.rounds,
            "dtype": args.sdxl_dtype if name.startswith("sdxl") else args.dtype,
        }
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True
        )
        if out.returncode:
            print(f"{name:12s} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        disk = _disk(model) / 2**30
        print(
            f"{name:12s} {r['dtype']:8s} {r['side']:5d} {disk:8.2f} {r['load_s']:7.1f} "
            f"{r['load_peak']:13.2f} {r['load_peak'] / disk:6.2f} {r['plain']:7.2f} "
            f"{r['captured']:8.2f} {r['captured'] / r['plain']:6.2f} "
            f"{r['trace_bytes'] / 2**20:8.1f} {r['run_peak']:8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

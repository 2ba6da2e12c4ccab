"""What capture costs: median forward time under capture / plain forward, measured in one run.

SD1.5-shaped mid-size UNet (block_out_channels 128/256/384/384, 4 heads, 77 tokens, batch 2 =
classifier-free guidance), CPU. Models with identical weights run interleaved round by round so
machine noise hits every variant alike. Prints:

- shapes+temb (``capture(attention=False)``)                target <= 1.05
- + cross-attention maps (``capture()``, per-step float16)  target <= 1.15
- the same capture on diffusers' UNet, and a DAAM-style attention-processor swap (explicit
  softmax, maps kept like ours) on diffusers, both against plain diffusers
- a one-forward capture (pays the first-forward MAC/skip hooks and finalisation)
- re-aggregation time of a heatmap on a 25-step demo-shaped trace (app slider; target 150 ms)
- peak extra memory (RSS, in a fresh process each) of a 50-step vs a 10-step streaming capture
  (target: equal within 10%)

    .venv/bin/python bench/capture_overhead.py [--rounds 12] [--size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import torch

from unetviz import UNet2DConditionModel, UNetConfig, capture


def mid_size_sd15() -> dict:
    data = UNetConfig.preset("sd15").to_dict()
    data.update(
        block_out_channels=[128, 256, 384, 384], attention_head_dim=4, cross_attention_dim=384
    )
    return data


class DaamStyleProcessor:
    """What DAAM-like tools do: replace the attention processor with an explicit-softmax one
    that keeps the cross-attention probabilities (cond half, mean over heads, float16 CPU)."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):  # fmt: skip
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        if encoder_hidden_states is not None:
            b = hidden_states.shape[0]
            p = probs.reshape(b, attn.heads, *probs.shape[1:])[b // 2 :].mean((0, 1))
            self.store.append(p.to("cpu", torch.float16))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _both(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier measure (waiting for a core does not count)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def overhead(rounds: int, size: int) -> None:
    from diffusers import UNet2DConditionModel as DiffusersUNet

    torch.manual_seed(0)
    data = mid_size_sd15()
    cfg = UNetConfig.from_dict(data)
    plain = UNet2DConditionModel(cfg).eval()
    state = plain.state_dict()
    temb_only = UNet2DConditionModel(cfg).eval()
    temb_only.load_state_dict(state)
    full = UNet2DConditionModel(cfg).eval()
    full.load_state_dict(state)
    single = UNet2DConditionModel(cfg).eval()
    single.load_state_dict(state)
    dkw = {k: v for k, v in data.items() if not k.startswith("_")}
    d_plain = DiffusersUNet(**dkw).eval()
    d_plain.load_state_dict(state)
    d_cap = DiffusersUNet(**dkw).eval()
    d_cap.load_state_dict(state)
    d_daam = DiffusersUNet(**dkw).eval()
    d_daam.load_state_dict(state)
    store: list = []
    d_daam.set_attn_processor(DaamStyleProcessor(store))

    x = torch.randn(2, 4, size, size)
    ehs = torch.randn(2, 77, 384)
    cpu_times: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {
        k: [] for k in ("plain", "temb", "attn", "single", "d_plain", "d_cap", "d_daam")
    }
    with (
        torch.no_grad(),
        capture(temb_only, attention=False, mode="stream") as t1,
        capture(full) as t2,
        capture(d_cap) as t3,
    ):
        for m in (plain, temb_only, full, single, d_plain, d_cap, d_daam):  # warm-up
            m(x, 999, ehs)

        def one(t):
            with capture(single):
                single(x, t, ehs)

        variants = {
            "plain": lambda t: plain(x, t, ehs),
            "temb": lambda t: temb_only(x, t, ehs),
            "attn": lambda t: full(x, t, ehs),
            "single": one,
            "d_plain": lambda t: d_plain(x, t, ehs),
            "d_cap": lambda t: d_cap(x, t, ehs),
            "d_daam": lambda t: d_daam(x, t, ehs),
        }
        order = list(variants)
        rng = random.Random(0)
        for r in range(rounds):
            rng.shuffle(order)  # no variant always runs first (or right after a slow one)
            for k in order:
                wall, cpu = _both(lambda k=k, r=r: variants[k](999 - r))
                times[k].append(wall)
                cpu_times.setdefault(k, []).append(cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu_times.items()}
    assert t1.steps == t2.steps == t3.steps == rounds + 1 and len(store) == 16 * (rounds + 1)
    print(f"mid-size SD1.5-shaped UNet, latent {size}x{size}, batch 2, 77 tokens, CPU, "
          f"{rounds} interleaved rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"  plain forward (unetviz UNet)     {med['plain'] * 1000:8.1f} ms")

    def line(label: str, key: str, base: str, target: str = "") -> None:
        print(f"  {label:<44} median ratio {med[key] / med[base]:.3f}   "
              f"(CPU time {cmed[key] / cmed[base]:.3f}){target}")  # fmt: skip

    line("shapes + temb", "temb", "plain", "   target <= 1.05")
    line("+ cross-attention maps (per-step, fp16)", "attn", "plain", "   target <= 1.15")
    line("one-forward capture (enter, 1st pass, exit)", "single", "plain")
    print(f"  plain forward (diffusers UNet)   {med['d_plain'] * 1000:8.1f} ms")
    line("capture on diffusers (+ maps)", "d_cap", "d_plain")
    line("DAAM-style processor swap on diffusers", "d_daam", "d_plain")


def reaggregation() -> None:
    """Heatmap re-aggregation on a demo-shaped 25-step trace (what the app does per slider)."""
    from unetviz.pipelines.demo import demo_unet_config

    demo = demo_unet_config(added_conditions=False)  # the shipped demo UNet (one home)
    side = demo["sample_size"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(demo)).eval()
    x = torch.randn(2, demo["in_channels"], side, side)
    ehs = torch.randn(2, 16, demo["cross_attention_dim"])
    with torch.no_grad(), capture(unet, daam=True) as trace:
        for t in range(25):
            unet(x, 999 - 40 * t, ehs)
    first = _time(lambda: trace.heatmap(3))
    queries = [
        lambda: trace.heatmap(5),
        lambda: trace.heatmap(4, steps=range(0, 12)),
        lambda: trace.heatmap(6, preset="daam"),
        lambda: trace.heatmap(6, preset="daam-approx"),
        lambda: trace.heatmap(2, preset="p2p"),
        lambda: trace.heatmap(3, layers="up", resolutions=side, steps=[24]),
    ]
    times = [_time(q) for _ in range(10) for q in queries]
    print(f"heatmap on a 25-step demo-shaped trace: first {first * 1000:.1f} ms (builds the cache), "
          f"then median {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms "
          "(target <= 150 ms)")  # fmt: skip


def _memory_child(steps: int, captured: bool, size: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(mid_size_sd15())).eval()
    x, ehs = torch.randn(2, 4, size, size), torch.randn(2, 77, 384)
    out = {"attention_bytes": 0, "tensor_bytes": 0, "record_bytes": 0}
    with torch.no_grad():
        unet(x, 999, ehs)  # allocator warm-up, same in every run
        _reset_peak()
        if captured:
            with capture(unet, mode="stream") as trace:
                for t in range(steps):
                    unet(x, 999 - t, ehs)
            tensors = trace.to_state()[1]
            out["tensor_bytes"] = sum(v.numel() * v.element_size() for v in tensors.values())
            out["attention_bytes"] = sum(
                v.numel() * v.element_size() for k, v in tensors.items() if k.endswith("/sum")
            )
            out["record_bytes"] = sum(  # per-step temb records: slots object + 4 floats
                sys.getsizeof(r) + 4 * 24 for r in trace.temb
            ) + sum(sys.getsizeof(d) for d in trace.temb_sources)
        else:
            for t in range(steps):
                unet(x, 999 - t, ehs)
    out["peak_kib"] = _peak_kib()
    return out


def _reset_peak() -> None:
    """Reset the process' peak RSS (Linux: VmHWM) so model construction does not hide the
    sampling loop's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_kib() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(size: int) -> None:
    def child(steps: int, captured: bool) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(steps), str(int(captured)), str(size)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain, c10, c50 = child(10, False), child(10, True), child(50, True)
    mib = 1024.0
    e10, e50 = c10["peak_kib"] - plain["peak_kib"], c50["peak_kib"] - plain["peak_kib"]
    print(f"streaming capture, latent {size}x{size}, fresh process each, peak RSS after "
          "model construction and one warm-up forward:")  # fmt: skip
    print(f"  peak RSS: plain 10 steps {plain['peak_kib'] / mib:.1f} MiB; capture 10 steps "
          f"{c10['peak_kib'] / mib:.1f} MiB (+{e10 / mib:.1f}); capture 50 steps "
          f"{c50['peak_kib'] / mib:.1f} MiB (+{e50 / mib:.1f}); 50/10 peak ratio "
          f"{c50['peak_kib'] / c10['peak_kib']:.3f} (target within 10%)")  # fmt: skip
    held10 = c10["tensor_bytes"] + c10["record_bytes"]
    held50 = c50["tensor_bytes"] + c50["record_bytes"]
    print(f"  held by the trace: attention sums {c10['attention_bytes'] / 1024:.0f} KiB vs "
          f"{c50['attention_bytes'] / 1024:.0f} KiB; everything (tensors + per-step temb records) "
          f"{held10 / 1024:.0f} KiB vs {held50 / 1024:.0f} KiB (ratio {held50 / held10:.2f})")  # fmt: skip


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_memory_child(int(sys.argv[2]), bool(int(sys.argv[3])), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--memory-size", type=int, default=32, help="latent for the memory test")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overhead(args.rounds, args.size)
    reaggregation()
    if not args.skip_memory:
        memory(args.memory_size)


if __name__ == "__main__":
    main()

"""What capture costs per UNet forward: milliseconds added and ratios, measured in one run.

Two SD1.5-shaped workloads (diffusers' UNet2DConditionModel when installed, else unetviz's):
``tiny`` (block_out_channels 32/64/64/64, latent 8x8) where the forward is cheap enough that
the capture's own Python work shows, and ``sd15-mid`` (64/128/256/256, latent 32x32); both with
77 tokens of width 768 and batch 2 (classifier-free guidance). On CPU: CPU time of this process,
one thread, variants interleaved in shuffled order round by round (each variant on its own
model object sharing the same weights), medians. With a GPU, the same table on CUDA
(synchronised wall time) and the full SD 1.5 shape in float16.

Variants: ``capture(attention=False)`` and ``capture()`` over a loop of forwards (steady state),
the same as one capture per forward (``with capture(m): m(...)``), entering and leaving the
``with`` alone, ``unetviz.intervene`` with one edit, capture + that edit, and the peers: plain
forward hooks on the 16 cross-attentions keeping their outputs, and no-op forward hooks on
every module (torch's hook dispatch alone). Also printed: garbage collections run during each
variant's forwards, the host syncs of a captured CUDA forward, bit-identical outputs, and the
tensor ops each variant adds to a forward.

    python bench/capture_overhead.py [--rounds 30] [--workloads tiny sd15-mid] [--extras]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from unetviz import UNet2DConditionModel, UNetConfig, capture, edits, intervene

WORKLOADS = {
    "tiny": {"channels": [32, 64, 64, 64], "latent": 8},
    "sd15-mid": {"channels": [64, 128, 256, 256], "latent": 32},
    "sd15": {"channels": [320, 640, 1280, 1280], "latent": 64},  # CUDA only
}
#: targets of ms added per forward (tiny) and of ratios (sd15-mid)
TARGETS = {
    ("tiny", "capture(attention=False)"): "<= +3 ms",
    ("tiny", "capture()"): "<= +6 ms",
    ("tiny", "enter + leave (no forward)"): "<= 2 ms",
    ("sd15-mid", "capture(attention=False)"): "<= 1.04x",
    ("sd15-mid", "capture()"): "<= 1.08x",
}


def mid_size_sd15() -> dict:
    """The mid-size SD1.5-shaped config of the memory and re-aggregation checks below."""
    data = UNetConfig.preset("sd15").to_dict()
    data.update(
        block_out_channels=[128, 256, 384, 384], attention_head_dim=4, cross_attention_dim=384
    )
    return data


def _config(workload: str) -> dict:
    data = UNetConfig.preset("sd15").to_dict()
    data.update(block_out_channels=WORKLOADS[workload]["channels"])
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _models(workload: str, n: int, device: str, dtype: torch.dtype) -> list[torch.nn.Module]:
    """``n`` model objects sharing one set of weights (a capture locks its model)."""
    data = _config(workload)
    try:
        from diffusers import UNet2DConditionModel as Diffusers

        def build() -> torch.nn.Module:
            return Diffusers(**data)
    except ImportError:

        def build() -> torch.nn.Module:
            return UNet2DConditionModel(UNetConfig.from_dict(data))

    torch.manual_seed(0)
    first = build().to(device, dtype).eval()
    state = first.state_dict()
    models = [first]
    for _ in range(n - 1):
        with torch.device("meta"):
            m = build()
        m.load_state_dict(state, assign=True)
        models.append(m.to(device).eval())
    return models


def _cross(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith("attn2")]


class _Clock:
    """CPU time of this process (CPU) or synchronised wall time (CUDA), in ms."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - t) * 1000
        t = time.process_time()
        fn()
        return (time.process_time() - t) * 1000


def table(workload: str, rounds: int, device: str, dtype: torch.dtype) -> dict[str, float]:
    """Median ms of every variant (interleaved), printed as ms added and ratios."""
    side = WORKLOADS[workload]["latent"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, side, side, generator=g).to(device, dtype)
    ehs = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    edit = [edits.Reweight(5, 0.0)]
    names = ["plain", "hooks", "noop", "attn_off", "attn", "one_off", "one", "enter", "edit"]
    names.append("cap_edit")
    models = dict(zip(names, _models(workload, len(names), device, dtype), strict=True))
    kept: list[torch.Tensor] = []

    def keep(module: Any, args: Any, output: torch.Tensor) -> None:
        kept.append(output.detach())

    handles = [m.register_forward_hook(keep) for m in _cross(models["hooks"])]
    handles += [m.register_forward_hook(_noop) for m in models["noop"].modules()]
    clock = _Clock(device)
    steady = {
        "attn_off": capture(models["attn_off"], attention=False),
        "attn": capture(models["attn"]),
        "edit": intervene(models["edit"], edit),
        "cap_edit_iv": intervene(models["cap_edit"], edit),
        "cap_edit": capture(models["cap_edit"]),
    }
    traces = {k: c.__enter__() for k, c in steady.items()}

    def once(key: str, **options: Any) -> Callable[[int], Any]:
        def run(t: int) -> None:
            with capture(models[key], **options):
                models[key](x, t, ehs)

        return run

    def enter(t: int) -> None:
        with capture(models["enter"]):
            pass

    def forward(key: str) -> Callable[[int], Any]:
        return lambda t: models[key](x, t, ehs)

    steady_keys = ("plain", "hooks", "noop", "attn_off", "attn", "edit", "cap_edit")
    variants = {k: forward(k) for k in steady_keys}
    variants |= {"one_off": once("one_off", attention=False), "one": once("one"), "enter": enter}
    times: dict[str, list[float]] = {k: [] for k in variants}
    collections: dict[str, int] = dict.fromkeys(variants, 0)
    current = ["plain"]

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections[current[0]] += 1

    outputs: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for k, fn in variants.items():  # warm-up (and the first forward of the captures)
                fn(999)
                if k in steady_keys:
                    outputs[k] = _sample(models[k](x, 999, ehs))
            gc.collect()
            gc.callbacks.append(count)
            order = list(variants)
            rng = random.Random(0)
            for r in range(rounds):
                rng.shuffle(order)
                for k in order:
                    current[0] = k
                    times[k].append(clock(lambda k=k, r=r: variants[k](998 - r)))
    finally:
        if count in gc.callbacks:
            gc.callbacks.remove(count)
        for c in reversed(list(steady.values())):
            c.__exit__(None, None, None)
        for h in handles:
            h.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: _quantile(v, 0.1) for k, v in times.items()}  # least disturbed by other load
    same = ("plain", "hooks", "noop", "attn_off", "attn")
    identical = all(torch.equal(outputs["plain"], outputs[k]) for k in same)
    identical &= torch.equal(outputs["edit"], outputs["cap_edit"])
    hooks_left = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks)
        for k, model in models.items()
        if k not in ("hooks", "noop")
        for m in model.modules()
    )
    base = med["plain"]
    what = "synchronised wall time" if clock.cuda else "CPU time, 1 thread"
    print(f"\n{workload}: {_config(workload)['block_out_channels']}, latent {side}x{side}, "
          f"batch 2, 77 tokens, {device} {str(dtype).removeprefix('torch.')}, {what}, "
          f"{rounds} interleaved rounds, torch {torch.__version__}")  # fmt: skip
    print(f"  {'plain forward':<44} {base:8.2f} ms (10th percentile {low['plain']:.2f} ms)")
    rows = [
        ("forward hooks on the 16 cross-attentions", "hooks", True),
        ("no-op forward hooks on every module", "noop", True),
        ("capture(attention=False)", "attn_off", True),
        ("capture()", "attn", True),
        ("capture(attention=False), one per forward", "one_off", True),
        ("capture(), one per forward", "one", True),
        ("enter + leave (no forward)", "enter", False),
        ("intervene, one edit (Reweight)", "edit", True),
        ("capture() + the same edit", "cap_edit", True),
    ]
    print(f"  {'variant (medians; p10: 10th percentiles)':<44} {'ms added':>9} {'ratio':>7} "
          f"{'p10 ms':>8} {'p10 x':>7} {'gc runs':>8}  target")  # fmt: skip
    for label, key, relative in rows:
        added = med[key] - base if relative else med[key]
        low_added = low[key] - low["plain"] if relative else low[key]
        ratio = f"{med[key] / base:7.3f}" if relative else f"{'':>7}"
        low_ratio = f"{low[key] / low['plain']:7.3f}" if relative else f"{'':>7}"
        target = TARGETS.get((workload, label), "")
        print(f"  {label:<44} {added:+9.2f} {ratio} {low_added:+8.2f} {low_ratio} "
              f"{collections[key]:8d}  {target}")  # fmt: skip
    print(f"  outputs bit-identical with and without capture: {identical}; hooks left: {hooks_left}; "
          f"gc runs during {rounds} plain forwards: {collections['plain']}")  # fmt: skip
    ops = _ops(models, x, ehs, edit)
    print("  tensor ops per forward (load-independent): plain "
          + ", ".join(f"{k} {v:+d}" if k != "plain" else str(v) for k, v in ops.items()))  # fmt: skip
    if clock.cuda:
        print(f"  host syncs in one captured forward: {_syncs(models['attn'], x, ehs)}")
    assert traces["attn"].steps == rounds + 2 and kept
    return med


def _noop(module: Any, args: Any, output: Any) -> None:
    """A forward hook that does nothing: what torch's hook dispatch alone costs."""


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _sample(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out[0]


def _ops(models: dict, x: torch.Tensor, ehs: torch.Tensor, edit: list) -> dict[str, int]:
    """Tensor ops (aten calls) of one steady forward, plain and what each variant adds: on a
    GPU each is a kernel launch or at least a dispatch, whatever the machine's load."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    def count(model: torch.nn.Module) -> int:
        model(x, 998, ehs)  # the first forward of a capture also reads shapes
        Count.n = 0
        with Count():
            model(x, 997, ehs)
        return Count.n

    model = models["plain"]
    out: dict[str, int] = {}
    with torch.no_grad():
        out["plain"] = base = count(model)
        for label, ctx in (
            ("capture(attention=False)", lambda: capture(model, attention=False)),
            ("capture()", lambda: capture(model)),
            ("intervene", lambda: intervene(model, edit)),
        ):
            with ctx():
                out[label] = count(model) - base
    return out


def _syncs(model: torch.nn.Module, x: torch.Tensor, ehs: torch.Tensor) -> int:
    """Synchronising CUDA calls in one forward under ``capture()`` (after its first)."""
    with torch.no_grad(), capture(model):
        model(x, 999, ehs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model(x, 998, ehs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--workloads", nargs="+", default=["tiny", "sd15-mid"],
                        choices=["tiny", "sd15-mid"])  # fmt: skip
    parser.add_argument("--extras", action="store_true",
                        help="also heatmap re-aggregation and streaming-capture memory")  # fmt: skip
    parser.add_argument("--memory-size", type=int, default=32, help="latent for the memory test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for workload in args.workloads:
        table(workload, args.rounds, "cpu", torch.float32)
    if torch.cuda.is_available():
        print(f"\nCUDA: {torch.cuda.get_device_name()}")
        for workload in (*args.workloads, "sd15"):
            dtype = torch.float16 if workload == "sd15" else torch.float32
            table(workload, args.rounds, "cuda", dtype)
    else:
        print("\n(no CUDA device: the CUDA table is skipped)")
    if args.extras:
        reaggregation()
        memory(args.memory_size)


if __name__ == "__main__":
    main()

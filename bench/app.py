"""App timings on this machine: ``python bench/app.py [--steps 25] [--repeat 5]``.

0. Start-up: ``python app.py`` in a fresh process until the first page answers 200.
   Target <= 10 s.
1. Demo generation + capture: ``pipe(prompt, steps=25)`` under ``unetviz.capture`` exactly as
   the app's Run does it (per-head maps), wall time (median of ``--repeat``). Target <= 5 s.
2. Re-aggregation for a control change: the app's heatmap handler on the cached trace (step
   window moved, preset switched, ...) including the overlay images, median per change.
   Target <= 150 ms.

Uses the shipped demo model (assets/demo), as the app does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "a red circle on the left and a blue square"


def startup_seconds(timeout: float = 60.0) -> float:
    """Wall time from spawning ``python app.py`` to the first HTTP 200 of its page."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"app.py did not serve a page within {timeout:.0f} s")
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and print them with their targets."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    args = p.parse_args(argv)

    if not args.no_startup:
        up = startup_seconds()
        print(
            f"start-up to first page (python app.py): {up:.2f} s | target <= 10 s: "
            f"{'OK' if up <= 10 else 'MISSED'}"
        )

    import torch

    from unetviz.app import views
    from unetviz.app.registry import ModelRegistry
    from unetviz.app.ui import AppHandlers

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry()
        registry.apply_thread_policy()  # as the app does
        handlers = AppHandlers(registry, Path(tmp) / "work")
        pipe = registry.pipeline("demo")
        print(f"model: shipped demo ({pipe.folder}); torch threads: {torch.get_num_threads()}")

        pipe(PROMPT, steps=2, per_head=True)  # warm-up (first-call allocations)
        times = []
        run = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run = registry.generate(
                "demo", prompt=PROMPT, steps=args.steps, guidance=4.0, seed=0, per_head=True
            )
            times.append(time.perf_counter() - t0)
        gen = statistics.median(times)
        print(
            f"generation + capture, {args.steps} steps: median {gen:.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)}) | target <= 5 s: "
            f"{'OK' if gen <= 5 else 'MISSED'}"
        )

        session = views.Session(trace=run.trace, image=run.image, label=PROMPT)
        words = views.word_tokens(run.trace)
        n = run.trace.steps
        base = dict(
            tokens=words,
            step_from=0,
            step_to=n - 1,
            locations=list(views.LOCATIONS),
            resolutions=[],
            heads=[],
            preset="custom",
            normalize="minmax",
            threshold=0.0,
            opacity=0.6,
        )
        changes = [
            ("step window 0..5", {"step_to": min(5, n - 1)}),
            ("step window 10..20", {"step_from": min(10, n - 1), "step_to": min(20, n - 1)}),
            ("preset DAAM", {"preset": "daam"}),
            ("preset P2P", {"preset": "p2p"}),
            ("layers: up only", {"locations": ["up"]}),
            ("head 0 only", {"heads": [0]}),
            ("threshold outline 0.5", {"threshold": 0.5}),
            ("normalisation max", {"normalize": "max"}),
        ]

        def call(over: dict) -> float:
            c = base | over
            t0 = time.perf_counter()
            handlers.heatmaps(session, *(c[k] for k in base))
            return time.perf_counter() - t0

        call({})  # first aggregation stacks the per-step maps (cached on the trace)
        per = []
        for label, over in changes:
            ts = [call(over) for _ in range(5)]
            per.append(statistics.median(ts))
            print(f"  re-aggregate ({len(words)} tokens) {label:<24} {per[-1] * 1000:7.1f} ms")
        agg = statistics.median(per)
        print(
            f"re-aggregation per control change: median {agg * 1000:.1f} ms, worst "
            f"{max(per) * 1000:.1f} ms | target <= 150 ms: {'OK' if agg <= 0.150 else 'MISSED'}"
        )
        print(f"ratio generation / re-aggregation: {gen / agg:.0f}x")

        # why the app runs torch on one thread: the same changes on torch's default pool
        default = registry._default_threads or torch.get_num_threads()
        if default > 1:
            torch.set_num_threads(default)
            multi = statistics.median(
                statistics.median(call(over) for _ in range(3)) for _, over in changes
            )
            torch.set_num_threads(1)
            print(
                f"re-aggregation on {default} torch threads: median {multi * 1000:.1f} ms "
                f"({multi / agg:.1f}x the 1-thread time on this machine right now)"
            )


if __name__ == "__main__":
    main()

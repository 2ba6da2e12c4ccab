"""App timings on this machine: ``python bench/app.py [--steps 25] [--repeat 5]``.

0. Start-up: ``python app.py`` in a fresh process until the first page answers 200.
   Target <= 10 s.
1. Demo generation + capture: ``pipe(prompt, steps=25)`` under ``unetviz.capture`` exactly as
   the app's Run does it (per-head maps), wall time (median of ``--repeat``). Target <= 5 s.
2. Re-aggregation for a control change: the app's heatmap handler on the cached trace (step
   window moved, preset switched, ...) including the overlay images, median per change.
   Target <= 150 ms.

3. In Chromium (system /usr/bin/chromium, 1440x1000), on a served app: Run click -> heatmaps
   visible (target <= 1.5 s), a control change -> redrawn tiles (<= 300 ms), model choice
   SD 1.5 at blocks detail -> diagram drawn (<= 600 ms), and a warm restart of ``python app.py``
   -> first page (<= 5 s; same as 0.). ``--no-browser`` skips it.

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


def _median_ms(page, action, wait_js: str, arg, repeat: int, settle_ms: int = 0) -> float:  # noqa: ANN001
    """Median wall time (ms) from ``action()`` to ``wait_js(arg)`` turning true in the page
    (``settle_ms``: idle time before each action, as a person between two changes)."""
    times = []
    for i in range(repeat):
        page.wait_for_timeout(settle_ms)
        t0 = time.perf_counter()
        action(i)
        page.wait_for_function(wait_js, arg=arg(i) if callable(arg) else arg, timeout=120_000)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def browser_timings(repeat: int = 3) -> None:
    """Run -> heatmaps, control -> tiles, model -> diagram, measured in Chromium."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO / "scripts"))
    from screenshots import ARGS, CHROMIUM, serve

    blocks, url = serve()
    srcs = "[...document.querySelectorAll('#heatmaps img')].map(e => e.src)"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#diagram-svg svg g.node", timeout=120_000)
            page.get_by_role("tab", name="Attention").click()
            page.locator("#steps input").fill("25")
            seeds = [str(100 + i) for i in range(repeat + 1)]

            def run(i: int) -> None:
                page.locator("#seed textarea, #seed input").first.fill(seeds[i])
                page.click("#run")

            run_wait = (
                "s => document.querySelector('#status').innerText.includes('seed ' + s) && "
                "[...document.querySelectorAll('#heatmaps img')].length > 0 && "
                "[...document.querySelectorAll('#heatmaps img')].every(i => i.complete)"
            )
            run_ms = _median_ms(page, run, run_wait, lambda i: seeds[i], repeat, 2000)
            norms = ["max", "sum", "none", "minmax"] * repeat
            state: dict[str, list[str]] = {}

            def change(i: int) -> None:
                state["old"] = page.evaluate(f"() => {srcs}")
                page.locator("#normalize").get_by_role("radio", name=norms[i], exact=True).check()

            tile_wait = (
                f"old => {{ const s = {srcs}; return s.some(x => !old.includes(x)) && "
                "[...document.querySelectorAll('#heatmaps img')].every(i => i.complete); }"
            )
            ctl_ms = _median_ms(page, change, tile_wait, lambda i: state["old"], 4, 2000)
            page.get_by_role("tab", name="Architecture").click()
            models = [("SD 1.5 preset (meta: shapes only)", "sd15"), ("demo model", "demo")]

            def choose(i: int) -> None:
                page.locator("#arch_model input").click()
                page.get_by_role("option", name=models[i % 2][0]).click()

            diag_wait = (
                "k => (document.querySelector('#diagram .uv-title') || {}).textContent"
                "?.startsWith(k) && document.querySelector('#diagram-svg svg').dataset.uvReady"
            )
            choose(0)  # first SD 1.5 drawing fills the structure cache
            page.wait_for_function(diag_wait, arg="sd15", timeout=120_000)
            times = []
            for i in range(1, 2 * repeat + 1):
                t0 = time.perf_counter()
                choose(i)
                page.wait_for_function(diag_wait, arg=models[i % 2][1], timeout=120_000)
                if models[i % 2][1] == "sd15":
                    times.append((time.perf_counter() - t0) * 1000)
            model_ms = statistics.median(times)
            browser.close()
    finally:
        blocks.close()  # type: ignore[attr-defined]
    for what, ms, target in (
        ("Run click -> heatmaps visible (25 steps)", run_ms, 1500),
        ("control change -> redrawn tiles", ctl_ms, 300),
        ("model choice SD 1.5 (blocks) -> diagram drawn", model_ms, 600),
    ):
        ok = "OK" if ms <= target else "MISSED"
        print(f"browser: {what}: median {ms:.0f} ms | target <= {target} ms: {ok}")


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and print them with their targets."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium measurements")
    args = p.parse_args(argv)
    if not args.no_browser:
        browser_timings(args.repeat)

    if not args.no_startup:
        up = startup_seconds()
        print(
            f"warm restart to first page (python app.py): {up:.2f} s | target <= 5 s: "
            f"{'OK' if up <= 5 else 'MISSED'}"
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

        pipe(PROMPT, steps=2, per_head=True, daam=True)  # warm-up (first-call allocations)
        times = []
        run = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run = registry.generate(
                "demo",
                prompt=PROMPT,
                steps=args.steps,
                guidance=4.0,
                seed=0,
                per_head=True,
                daam=True,
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
            scale="shared",
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

        class _Request:  # what the handlers read of gr.Request
            session_hash = "bench"

        handlers.sessions.put("bench", session)

        def call(over: dict) -> float:
            c = base | over
            window = {"lo": c["step_from"], "hi": c["step_to"], "max": n - 1}
            values = [c["tokens"], window, *(c[k] for k in list(base)[3:])]
            t0 = time.perf_counter()
            out = handlers.heatmaps(_Request(), *values)
            dt = time.perf_counter() - t0
            if out[2]:
                raise SystemExit(f"heatmaps failed for {over}: {out[2]}")
            return dt

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

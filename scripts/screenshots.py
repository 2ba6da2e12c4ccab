"""README screenshots of the app's three tabs, taken from the real app in Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--steps 25]

Starts the app on a free port (shipped demo model), opens it in the system Chromium at
1440x1000, draws the SD 1.5 blocks diagram, runs the default prompt, runs the Experiments
tab's default word swap, and writes ``app-architecture.png``, ``app-attention.png``,
``app-time-embedding.png`` and ``app-experiments.png``.
Every request to a host other than 127.0.0.1 is refused and reported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
WAIT = 120_000


def serve() -> tuple[object, str]:
    """The app in this process on a free port: (blocks, url)."""
    from unetviz.app import create_app, serve

    blocks, _ = create_app()
    return blocks, serve(blocks)


def shoot(url: str, out: Path, steps: int) -> list[str]:
    """Drive the page and write the three PNGs; returns refused foreign URLs."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    foreign: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})

        def route(r):  # noqa: ANN001
            host = urlparse(r.request.url).hostname
            if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
                r.continue_()
            else:
                foreign.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(url)
        page.wait_for_selector("#diagram-svg svg g.node", timeout=WAIT)
        page.locator("#arch_model input").click()
        page.get_by_role("option", name="SD 1.5 preset (meta: shapes only)").click()
        page.wait_for_function(
            "() => (document.querySelector('#diagram .uv-title') || {}).textContent"
            "?.startsWith('sd15') && document.querySelector('#diagram-svg').dataset.uvDrawn > 1",
            timeout=WAIT,
        )
        page.locator("#diagram-svg g.node", has_text="down_blocks.1").first.click()
        page.wait_for_function(
            "() => document.querySelector('#block_parts').innerText.includes('attentions.0')",
            timeout=WAIT,
        )
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "app-architecture.png"), full_page=True)

        page.get_by_role("tab", name="Attention").click()
        page.locator("#steps input").fill(str(steps))
        page.click("#run")
        page.wait_for_function(
            "() => (document.querySelector('#status') || {}).innerText?.startsWith('Showing')",
            timeout=WAIT,
        )
        page.wait_for_selector("#layer_grid .js-plotly-plot .main-svg", timeout=WAIT)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "app-attention.png"), full_page=True)

        page.get_by_role("tab", name="Time embedding").click()
        page.wait_for_selector("#temb_diagram svg g.node", timeout=WAIT)
        page.wait_for_selector("#temb_heat .js-plotly-plot .main-svg", timeout=WAIT)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "app-time-embedding.png"), full_page=True)

        page.get_by_role("tab", name="Experiments").click()
        page.locator("#exp_steps input").fill(str(steps))
        page.click("#exp_run")
        page.wait_for_function(
            "() => (document.querySelector('#exp_msg') || {}).innerText?.includes('edit(s)')",
            timeout=WAIT,
        )
        page.wait_for_selector("#exp_strip img", timeout=WAIT)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "app-experiments.png"), full_page=True)
        browser.close()
    return foreign


def main(argv: list[str] | None = None) -> int:
    """Serve, shoot, report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args(argv)
    blocks, url = serve()
    try:
        foreign = shoot(url, args.out, args.steps)
    finally:
        blocks.close()  # type: ignore[attr-defined]
    for name in ("app-architecture", "app-attention", "app-time-embedding", "app-experiments"):
        print(args.out / f"{name}.png")
    if foreign:
        print(f"refused {len(foreign)} requests to other hosts: {foreign[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

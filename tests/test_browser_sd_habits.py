"""What Stable Diffusion users bring, in a real Chromium on the real app: a LoRA chosen in the
page (its run, its refusal, the U filled by it, the with / without comparison), emphasis weights
on the token chips, 77- and 150+-token prompts that stay legible (chips wrap, tiles wrap in a grid
at a readable size), the Experiments note folded, the Experiments tab in Chinese. One server and
one page for the module; a tiny random SD 1.x folder in its model root for the long prompts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.app_support import Request, Served, local_page

pytest.importorskip("playwright")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

WAIT = 120_000  # ms: a run on 2 busy cores
DEMO_LORA = "examples/yellow.safetensors (demo model)"
#: a tiny CLIP vocabulary's words (tests/sd_tiny.py): 11 tokens per phrase
PHRASE = "a photo of a cat sitting on a mat by the house"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tests.lora_support import make_lora
    from tests.sd_tiny import tiny_sd_dir
    from unetviz.pipelines import load_pipeline

    s = Served(tmp_path_factory.mktemp("sd-habits"))
    folder = s.root / "tiny-sd"  # the session's tiny SD 1.x (built once), copied into the root
    shutil.copytree(tiny_sd_dir("sd1"), folder)
    cfg = folder / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "sample_size": 12}))
    # a LoRA for the tiny SD model: offered in the page, refused on the demo model
    make_lora(s.root / "tiny-sd-style.safetensors", {"unet": load_pipeline(folder).unet}, "peft")
    yield s
    s.close()


@pytest.fixture(scope="module")
def page(served, browser):
    context, p = local_page(browser, served.url)
    p.wait_for_selector("#diagram-svg svg g.node", timeout=WAIT)
    yield p
    context.close()


def _choose(page, elem: str, option: str) -> None:
    page.locator(f"#{elem} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
        arg=[selector, text],
        timeout=WAIT,
    )


def _boxes(page, selector: str) -> list[dict]:
    return page.locator(selector).evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, w: r.width, h: r.height}; })"
    )


def _run(page, prompt: str, model: str, steps: int) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#run_model textarea").fill(model)
    page.locator("#steps input").fill(str(steps))
    before = page.locator("#status").inner_text()
    page.click("#run")
    page.wait_for_function(
        "old => { const s = document.querySelector('#status').innerText;"
        " return s !== old && s.includes('generated and captured'); }",
        arg=before,
        timeout=WAIT,
    )


def test_a_lora_chosen_in_the_page_runs_once_and_a_misfit_is_refused(page, served):
    page.get_by_role("tab", name="Attention").click()
    _choose(page, "lora_pick", DEMO_LORA)
    _run(page, "a (red:1.3) circle", "demo", 4)
    assert "LoRA yellow.safetensors ×1" in page.locator("#status").inner_text()
    chips = page.locator("#tokens .textfield").inner_text()
    assert "red ×1.3" in chips and "(" not in chips  # the weight as a badge, no brackets
    image = np.asarray(served.handlers.sessions.get(_key(served)).image, dtype=float) / 255
    lit = image.max(axis=2) > 0.4
    assert image[..., 1][lit].mean() > 0.5  # yellow (green lit), though the prompt says red
    # a LoRA for another base model: the library's refusal beside Run, the page keeps its work
    tiles = page.locator("#heatmaps img").evaluate_all("els => els.map(e => e.src)")
    _choose(page, "lora_pick", "tiny-sd-style.safetensors")
    page.click("#run")
    _wait_text(page, "#run_msg", "LoRA does not fit this model")
    assert page.locator("#heatmaps img").evaluate_all("els => els.map(e => e.src)") == tiles
    assert "LoRA yellow.safetensors" in page.locator("#status").inner_text()
    _choose(page, "lora_pick", "none")


def _key(served) -> str:
    """The one browser session's key on the server (this module's page)."""
    keys = [k for k in served.handlers.sessions.keys() if k != Request().session_hash]
    assert len(keys) == 1, keys
    return keys[0]


def _prompt(n: int) -> str:
    """A prompt of ``n`` tokens of the tiny CLIP vocabulary (a comma is a token)."""
    words = (PHRASE.split() + [","]) * (n // 12 + 1)
    return " ".join(words[:n])


@pytest.mark.parametrize("n", [75, 170])  # 77 tokens with start and end: one chunk; 3 chunks
def test_long_prompts_stay_legible(page, n):
    page.get_by_role("tab", name="Attention").click()
    prompt = _prompt(n)
    _run(page, prompt, "tiny-sd", 2)  # another model and step count than the run before
    page.wait_for_function(  # the new run's chips and tiles are on the page
        "n => document.querySelectorAll('#tokens .textfield > *').length >= n &&"
        " document.querySelectorAll('#heatmaps .uv-tile img').length === 16",
        arg=n + 2,
        timeout=WAIT,
    )
    page.wait_for_timeout(500)  # the re-aggregation a stale control would have set off
    assert page.locator(".toast-body").count() == 0  # gradio refused no stale control value
    assert "⚠" not in page.locator("#ctrl_msg").inner_text()
    tiles = _boxes(page, "#heatmaps .uv-tile img")
    assert len(tiles) == 16 and "of the first 16 of" in page.locator("#status").inner_text()
    assert min(t["w"] for t in tiles) >= 64  # readable, never 77 thumbnails in one row
    rows = sorted({round(t["y"]) for t in tiles})
    assert len(rows) >= 2 and max(sum(round(t["y"]) == y for t in tiles) for y in rows) <= 8
    chips = _boxes(page, "#tokens .textfield > *")
    assert len(chips) >= n + 2 and min(c["w"] for c in chips) >= 8
    assert len({round(c["y"]) for c in chips}) >= 5  # the chips wrap onto several rows
    box = _boxes(page, "#tokens .textfield")[0]
    assert box["h"] <= 400  # a long prompt's chips scroll inside their box
    picks = page.locator("#token_pick label").count()
    assert picks >= n + 2  # every chunk's words can be chosen
    # the step range (a user's drag) re-aggregates the tiles
    before = page.locator("#heatmaps img").evaluate_all("els => els.map(e => e.src)")
    page.locator("#step_range input.hi").evaluate(
        "e => { e.value = 0; e.dispatchEvent(new Event('input', {bubbles: true}));"
        " e.dispatchEvent(new Event('change', {bubbles: true})); }"
    )
    page.wait_for_function(
        "old => { const s = [...document.querySelectorAll('#heatmaps img')].map(e => e.src);"
        " return s.length === 16 && s.some(x => !old.includes(x)); }",
        arg=before,
        timeout=WAIT,
    )


def test_the_u_filled_by_a_lora_and_the_comparison(page):
    page.get_by_role("tab", name="Architecture").click()
    _choose(page, "arch_lora", DEMO_LORA)
    _wait_text(page, "#arch_status", "filled by what LoRA yellow.safetensors")
    assert "fill: LoRA" in page.locator("#diagram").inner_text()
    page.wait_for_function(  # the 6 blocks the LoRA was trained in, largest first
        "() => document.querySelectorAll('#lora_table [role=gridcell]').length === 18",
        timeout=WAIT,
    )
    first = page.locator("#lora_table [role=gridcell]").first.text_content()
    assert first.strip() == "up_blocks.1"
    _choose(page, "arch_lora", "none")
    page.wait_for_function(
        "() => !document.querySelector('#arch_status').innerText.includes('LoRA')", timeout=WAIT
    )
    page.get_by_role("tab", name="Experiments").click()
    page.locator("#exp_steps input").fill("2")
    _choose(page, "exp_lora", DEMO_LORA)
    page.click("#exp_lora_run")
    _wait_text(page, "#exp_lora_msg", "without | with LoRA yellow.safetensors")
    pairs = _boxes(page, "#exp_lora_maps .uv-tile img")
    assert len(pairs) == 3 and min(p["w"] for p in pairs) >= 200  # a, red, circle
    # the default word swap: a one-line note, every parameter folded under it
    page.click("#exp_run")
    _wait_text(page, "#exp_msg", "edit(s)")
    assert "self_layers" not in page.locator("#exp_msg").inner_text()
    assert _boxes(page, "#exp_msg")[0]["h"] < 60  # one line
    page.locator("#exp_details_box").get_by_text("All parameters of the edits").click()
    _wait_text(page, "#exp_details", "self_layers")  # the whole description, on demand


def test_the_experiments_tab_in_chinese(page):
    page.get_by_role("tab", name="Experiments").click()
    page.evaluate("() => window.__uvSetLang('zh-CN')")
    try:
        _wait_text(page, "#exp_run", "运行干预")
        assert "对比有 / 无 LoRA" in page.locator("#exp_lora_run").inner_text()
        assert "LoRA 强度" in page.locator("#exp_lora_scale").inner_text()
        assert "消融" in page.locator("#tab-3").inner_text()
        note = page.locator("#exp_msg").inner_text()  # the shown language's text only
        assert "项编辑" in note and "edit(s)" not in note
    finally:
        page.evaluate("() => window.__uvSetLang('en')")
    _wait_text(page, "#exp_run", "Run edited")


def test_no_request_left_the_machine(page):
    assert page.outside == []  # type: ignore[attr-defined]

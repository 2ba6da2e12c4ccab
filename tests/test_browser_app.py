"""The app in a real Chromium (pytest-playwright, system browser): the page loads offline, the
diagram renders, Run gives the image and one heatmap per word, the step window re-aggregates
without a model run, downloads work, and a screenshot of each tab lands in test-artifacts/."""

from __future__ import annotations

import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.test_app_support import REPO, TEST_STEPS, Served

pytest.importorskip("playwright")
pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "test-artifacts"
WAIT = 90_000  # ms: a run on 2 busy cores


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("browser"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def offline_page(served, browser):
    """One page for the whole module; every request is routed and any host other than
    127.0.0.1 is recorded and aborted."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside: list[str] = []

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.outside = outside  # type: ignore[attr-defined]
    page.goto(served.url)
    yield page
    context.close()


def _gallery_srcs(page) -> list[str]:
    return page.locator("#heatmaps img").evaluate_all("els => els.map(e => e.src)")


def test_page_loads_and_diagram_renders(offline_page):
    page = offline_page
    page.wait_for_selector("#diagram-svg svg g.node", timeout=WAIT)
    assert page.locator("#diagram-svg svg g.node").count() > 10
    page.wait_for_selector("#block_table table", timeout=WAIT)
    assert "down_blocks.0" in page.locator("#block_table").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-architecture.png"), full_page=True)


def test_clicking_a_table_row_shows_its_parts(offline_page):
    page = offline_page
    cell = page.locator("#block_table [role=gridcell]", has_text="down_blocks.0.attentions.0").first
    cell.click()
    page.wait_for_function(
        "() => document.querySelector('#block_parts').innerText.includes('transformer_blocks.0')",
        timeout=WAIT,
    )
    assert "proj_in" in page.locator("#block_parts").inner_text()


def test_architecture_download(offline_page):
    page = offline_page
    page.wait_for_selector("#diagram-svg svg", timeout=WAIT)
    with page.expect_download(timeout=WAIT) as info:
        page.click("#dl_svg")
    path = info.value.path()
    assert "<svg" in Path(path).read_text()
    assert info.value.suggested_filename.endswith(".svg")


def test_run_default_prompt_then_step_window_without_model_run(offline_page, served):
    page = offline_page
    page.get_by_role("tab", name="Attention").click()
    page.locator("#steps input").fill(str(TEST_STEPS))
    prompt = page.locator("#prompt textarea").input_value()
    calls = served.registry.pipeline_calls
    page.click("#run")
    page.wait_for_function(
        "n => document.querySelectorAll('#heatmaps img').length === n",
        arg=len(prompt.split()),
        timeout=WAIT,
    )
    page.wait_for_selector("#image img", timeout=WAIT)
    page.wait_for_selector("#layer_grid .js-plotly-plot .main-svg", timeout=WAIT)
    assert served.registry.pipeline_calls == calls + 1
    tokens = page.locator("#tokens").inner_text()
    for word in prompt.split():
        assert word in tokens
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "app-attention.png"), full_page=True)

    before = _gallery_srcs(page)
    box = page.locator("#step_to input[type=number]")
    box.fill("0")
    box.press("Enter")
    page.wait_for_function(
        "old => { const s = [...document.querySelectorAll('#heatmaps img')].map(e => e.src);"
        " return s.length === old.length && s.every((x, i) => x !== old[i]); }",
        arg=before,
        timeout=WAIT,
    )
    assert served.registry.pipeline_calls == calls + 1  # re-aggregated, not re-run

    # the heatmaps zip follows the controls
    page.wait_for_timeout(1500)
    with page.expect_download(timeout=WAIT) as info:
        page.click("#dl_heatmaps")
    names = zipfile.ZipFile(info.value.path()).namelist()
    assert sum(n.endswith("_overlay.png") for n in names) == len(prompt.split())


def test_trace_bundle_download_and_upload_without_model(offline_page, served, tmp_path):
    page = offline_page
    with page.expect_download(timeout=WAIT) as info:
        page.click("#dl_trace")
    assert info.value.suggested_filename.endswith(".trace.zip")
    bundle = tmp_path / info.value.suggested_filename
    info.value.save_as(bundle)
    assert {"trace.json", "tensors.safetensors"} <= set(zipfile.ZipFile(bundle).namelist())
    calls = served.registry.pipeline_calls
    before = _gallery_srcs(page)
    page.get_by_text("Explore a saved trace bundle").click()
    page.locator("#upload input[type=file]").set_input_files(str(bundle))
    page.wait_for_function(
        "() => document.querySelector('#status').innerText.includes('loaded trace')",
        timeout=WAIT,
    )
    page.wait_for_function(
        "old => { const s = [...document.querySelectorAll('#heatmaps img')].map(e => e.src);"
        " return s.length === old.length && s.some((x, i) => x !== old[i]); }",
        arg=before,
        timeout=WAIT,
    )
    assert served.registry.pipeline_calls == calls


def test_time_embedding_tab(offline_page):
    page = offline_page
    page.get_by_role("tab", name="Time embedding").click()
    page.wait_for_selector("#temb_diagram svg g.node", timeout=WAIT)
    page.wait_for_selector("#temb_heat .js-plotly-plot .main-svg", timeout=WAIT)
    page.wait_for_selector("#sinusoid .js-plotly-plot .main-svg", timeout=WAIT)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "app-time-embedding.png"), full_page=True)


def test_no_request_left_the_machine(offline_page):
    assert offline_page.outside == []  # type: ignore[attr-defined]

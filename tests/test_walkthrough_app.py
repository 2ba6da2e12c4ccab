"""The Walkthrough tab: SD 1.5's forward pass in order with the seed's shapes (from the meta
structure), pictures for every stage after a demo run, and in a real Chromium: the stage list,
Previous / Next over the whole pass, a stage's link selecting its diagram node and back, and the
page in Chinese for a zh-CN browser with the switch back to English."""

from __future__ import annotations

import re

import pytest

from tests.app_support import TEST_STEPS, Served
from unetviz.app import walkthrough

B = 2  # UNet batch (CFG)


def _sd15_expected() -> list[tuple[str, list[int], list[int]]]:
    """(name, input shape, output shape) of every stage, in the seed's order."""
    out = [("time_embedding", [B], [B, 1280]), ("conv_in", [B, 4, 64, 64], [B, 320, 64, 64])]
    widths, sides = [320, 640, 1280, 1280], [64, 32, 16, 8]
    c_in = 320
    for i in range(4):
        c, s = widths[i], sides[i]
        last = i == 3
        side = s if last else s // 2
        out.append((f"down_blocks.{i}", [B, c_in, s, s], [B, c, side, side]))
        for j in range(2):
            out.append(
                (f"down_blocks.{i}.resnets.{j}", [B, c_in if j == 0 else c, s, s], [B, c, s, s])
            )
            if not last:
                out.append((f"down_blocks.{i}.attentions.{j}", [B, c, s, s], [B, c, s, s]))
        if not last:
            out.append((f"down_blocks.{i}.downsamplers.0", [B, c, s, s], [B, c, s // 2, s // 2]))
        c_in = c
    mid = [B, 1280, 8, 8]
    out += [("mid_block", mid, mid), ("mid_block.resnets.0", mid, mid)]
    out += [("mid_block.attentions.0", mid, mid), ("mid_block.resnets.1", mid, mid)]
    # up: each resnet's input is the previous output concatenated with its skip
    skips = [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]
    prev = 1280
    for i in range(4):
        c, s = widths[3 - i], sides[3 - i]
        last = i == 3
        block_out_side = s if last else s * 2
        out.append((f"up_blocks.{i}", [B, prev, s, s], [B, c, block_out_side, block_out_side]))
        for j in range(3):
            skip = skips.pop()
            out.append((f"up_blocks.{i}.resnets.{j}", [B, prev + skip, s, s], [B, c, s, s]))
            prev = c
            if i > 0:
                out.append((f"up_blocks.{i}.attentions.{j}", [B, c, s, s], [B, c, s, s]))
        if not last:
            out.append((f"up_blocks.{i}.upsamplers.0", [B, c, s, s], [B, c, s * 2, s * 2]))
    out.append(("conv_out", [B, 320, 64, 64], [B, 4, 64, 64]))
    return out


def test_sd15_stages_in_the_seeds_order_with_its_shapes():
    from unetviz.structure import structure_trace

    stages = walkthrough.stages(structure_trace("sd15", 512, 512, detail="modules"))
    got = [(s.name, s.first_input, s.output) for s in stages]
    expected = _sd15_expected()
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert got == expected
    by_name = {s.name: s for s in stages}
    assert by_name["down_blocks.1.attentions.0"].ldm == "input_blocks.4.1"
    assert by_name["up_blocks.1.resnets.2"].ldm == "output_blocks.5.0"
    # sub-steps with shapes: the temb projection and the cross-attention's text input
    res = dict((k, shape) for k, _, shape in by_name["down_blocks.1.resnets.0"].substeps)
    assert res["sub.resnet.temb"] == [B, 640] and res["sub.resnet.conv1"] == [B, 640, 32, 32]
    tf = by_name["down_blocks.0.attentions.0"]
    assert tf.facts["tokens"] == 4096 and tf.facts["context"] == "(2, 77, 768)"


def test_every_demo_stage_has_a_picture_after_a_run():
    from unetviz.pipelines.demo import DemoPipeline

    run = DemoPipeline()("a red circle", steps=TEST_STEPS, features="layers")
    stages = walkthrough.stages(walkthrough._shapes_of_run(run.trace))
    assert stages[0].name == "time_embedding" and stages[-1].name == "conv_out"
    for st in stages:
        figs = walkthrough.pictures(st, run.trace, TEST_STEPS - 1)
        assert figs and all("data:image/png;base64," in f or "<svg" in f for f in figs), st.name
    html = walkthrough.page(stages, 4, run.trace, 0)
    assert html.count("<figure") >= 3


# ------------------------------------------------------------------------------ in a browser
WAIT = 90_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("playwright")
    s = Served(tmp_path_factory.mktemp("walkthrough"))
    yield s
    s.close()


def _open(browser, served, locale: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale=locale)
    page = context.new_page()
    page.goto(served.url)
    page.wait_for_selector("#diagram svg", timeout=WAIT)
    return context, page


def _walk_tab(page) -> None:
    page.locator("#tabs [role=tab]").last.click()
    page.wait_for_selector("#wt_body .uv-wt-stage", timeout=WAIT)


def _index(page) -> int:
    return int(page.get_attribute("#wt_body .uv-wt-stage", "data-stage"))


def _wait_index(page, i: int) -> None:
    page.wait_for_function(
        "i => { const s = document.querySelector('#wt_body .uv-wt-stage');"
        " return s && +s.dataset.stage === i; }",
        arg=i,
        timeout=WAIT,
    )


@pytest.mark.browser
@pytest.mark.slow
def test_walkthrough_in_a_browser(served, browser):
    context, page = _open(browser, served, "en-US")
    try:
        # SD 1.5: every stage listed in order, with its shapes
        _walk_tab(page)
        page.locator("#wt_model input").click()
        page.get_by_role("option", name="SD 1.5 preset (meta: shapes only)").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#wt_list li').length === 56", timeout=WAIT
        )
        items = page.locator("#wt_list li").evaluate_all(
            "els => els.map(e => [e.dataset.name, e.querySelector('.uv-wt-shape').textContent])"
        )
        expected = _sd15_expected()
        assert [n for n, _ in items] == [e[0] for e in expected]
        for (name, shapes), (_, a, b) in zip(items, expected, strict=True):
            text = walkthrough.shape_text(a) + " → " + walkthrough.shape_text(b)
            assert shapes == text, name

        # a demo run; then every stage has a picture, Next walks the whole pass, Previous back
        page.locator("#tabs [role=tab]").nth(1).click()
        page.fill("#steps input", str(TEST_STEPS))
        page.click("#run")
        page.wait_for_selector("#heatmaps img", timeout=WAIT)
        _walk_tab(page)
        page.locator("#wt_model input").click()
        page.get_by_role("option", name="the current run (else the demo model)").click()
        page.wait_for_selector("#wt_body .uv-wt-pic", timeout=WAIT)
        n = page.locator("#wt_list li").count()
        assert n == 32
        page.locator("#wt_list li").first.click()
        _wait_index(page, 0)
        for i in range(n):
            assert page.locator("#wt_body .uv-wt-stage .uv-wt-pic").count() >= 1, i
            if i < n - 1:
                page.click("#wt_next")
                _wait_index(page, i + 1)
        page.click("#wt_next")  # at the end: stays
        _wait_index(page, n - 1)
        page.click("#wt_prev")
        _wait_index(page, n - 2)

        # a stage's link selects its node in the Architecture diagram, and back
        page.locator("#wt_list li[data-name='down_blocks.1']").click()
        _wait_index(page, 6)
        page.click("#wt_body a.uv-wt-node")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#diagram .uv-selected > title')]"
            ".some(t => t.textContent.replace(/^cluster_/, '') === 'down_blocks.1')",
            timeout=WAIT,
        )
        page.click("#diagram .uv-wt-back")
        _wait_index(page, 6)
        assert page.locator("#wt_body").is_visible()
    finally:
        context.close()


MAIN_CONTROLS = ["#prompt", "#negative", "#seed", "#steps", "#guidance", "#run", "#run_model"]


def _labels(page) -> str:
    return (
        " | ".join(page.locator(sel).first.inner_text() for sel in MAIN_CONTROLS)
        + " | "
        + " | ".join(page.locator("#tabs [role=tab]").all_inner_texts())
    )


@pytest.mark.browser
@pytest.mark.slow
def test_chinese_for_a_zh_cn_browser_and_back(served, browser):
    context, page = _open(browser, served, "zh-CN")
    try:
        page.locator("#tabs [role=tab]").nth(1).click()
        page.wait_for_selector("#prompt")
        page.wait_for_function(
            "() => document.querySelector('#run').textContent.includes('运行')", timeout=WAIT
        )
        zh = _labels(page)
        for word in (
            "提示词",
            "反向提示词",
            "随机种子",
            "采样步数",
            "引导系数",
            "运行",
            "逐层解读",
        ):
            assert word in zh, (word, zh)
        english = re.findall(r"\b(Prompt|Negative|Seed|Steps|Guidance|Run|Model|Walkthrough)\b", zh)
        assert not english, zh
        page.locator("#tabs [role=tab]").nth(0).click()  # the detail radio's choices too
        detail = page.locator("#arch_detail").inner_text()
        assert "模块" in detail and "子模块" in detail and "层" in detail, detail
        assert not re.search(r"(?i)\b(blocks|layers|modules)\b", detail), detail
        _walk_tab(page)
        assert page.locator("#wt_body .uv-l-zh-CN").first.is_visible()
        assert not page.locator("#wt_body .uv-l-en").first.is_visible()
        page.click("#uv_lang_switch button[data-lang='en']")
        page.wait_for_function(
            "() => document.querySelector('#run').textContent.includes('Run')", timeout=WAIT
        )
        assert page.locator("#wt_body .uv-l-en").first.is_visible()
        en = _labels(page)
        assert "Prompt" in en and "Walkthrough" in en and "提示词" not in en
        page.locator("#tabs [role=tab]").nth(0).click()
        assert "Modules" in page.locator("#arch_detail").inner_text()
    finally:
        context.close()

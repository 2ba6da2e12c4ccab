"""The page's messages in two languages, in a real Chromium: with the browser in zh-CN an error
(a bad seed) and a status line (a demo Run) read in Chinese, the page's switch shows the
English ones at once (no round trip), and the Dataset tab's controls hold no English label.
The assertions read the DOM's visible text (``innerText`` leaves out the hidden language):
Chromium here has no CJK font, so a screenshot would show boxes."""

from __future__ import annotations

import json
import re

import pytest

from tests.app_support import TEST_STEPS, Served

WAIT = 90_000
CJK = re.compile(r"[\u4e00-\u9fff]")
#: words that stay as they are in the Chinese page: names of programs, files and formats
KEPT = {"unetviz", "batch", "models", "run1", "IoU", "mIoU", "DAAM", "prompts", "jsonl"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("playwright")
    s = Served(tmp_path_factory.mktemp("i18n"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def page(served, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page = context.new_page()
    page.goto(served.url)
    page.wait_for_selector("#diagram svg", timeout=WAIT)
    yield page
    context.close()


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def _wait_text(page, selector: str, pattern: str) -> None:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText); }",
        arg=[selector, pattern],
        timeout=WAIT,
    )


def _switch(page, lang: str) -> None:
    page.click(f"#uv_lang_switch button[data-lang='{lang}']")
    page.wait_for_function("l => document.body.dataset.uvLang === l", arg=lang, timeout=WAIT)


def _wait_seen(seen: list, n: int) -> None:
    import time

    end = time.monotonic() + WAIT / 1000
    while len(seen) < n and time.monotonic() < end:
        time.sleep(0.05)
    assert len(seen) >= n, seen


def _english_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z][A-Za-z_]{2,}", text) if w not in KEPT]


def test_an_error_and_a_status_line_in_chinese_then_in_english(page, served, monkeypatch):
    from unetviz.app import common

    seen = []  # the language each event's progress text is written in (the switch's cookie)
    real = common.request_language
    monkeypatch.setattr(common, "request_language", lambda r: seen.append(real(r)) or seen[-1])
    page.locator("#tabs [role=tab]").nth(1).click()
    page.wait_for_selector("#seed")
    page.locator("#seed textarea, #seed input").first.fill("-1")
    page.locator("#steps input").first.fill(str(TEST_STEPS))
    page.click("#run")
    _wait_text(page, "#run_msg", "⚠")
    zh = _text(page, "#run_msg")
    assert "seed=-1" in zh and "整数" in zh and "expected" not in zh, zh
    _switch(page, "en")  # the other language is already in the page: no request
    en = _text(page, "#run_msg")
    assert "seed=-1: expected a whole number" in en and not CJK.search(en), en
    assert seen == ["zh-CN"], seen
    page.click("#run")  # in English now: the switch's cookie outranks the browser's language
    _wait_seen(seen, 2)
    assert seen[-1] == "en", seen
    _switch(page, "zh-CN")

    # a status line: a demo Run's
    page.locator("#seed textarea, #seed input").first.fill("0")
    prompt = page.locator("#prompt textarea").first.input_value()
    page.click("#run")
    _wait_text(page, "#status", "种子 0")
    assert seen[-1] == "zh-CN", seen
    zh = _text(page, "#status")
    assert "当前显示" in zh and prompt in zh and "Showing" not in zh, zh
    assert page.locator("#status strong").first.inner_text() == prompt  # the Markdown is kept
    _switch(page, "en")
    en = _text(page, "#status")
    assert en.startswith(f"Showing {prompt} · seed 0") and not CJK.search(en), en
    _switch(page, "zh-CN")


def test_the_dataset_tab_has_no_english_label_in_chinese(page, served, tmp_path):
    from unetviz.cli import main

    pytest.importorskip("pyarrow")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("a red circle", "a dog")))
    with pytest.raises(SystemExit) as done:
        main(["batch", str(prompts), "-o", str(served.root / "run1"), "--steps", "1"])
    assert done.value.code in (0, None)
    page.locator("#tabs [role=tab]").nth(4).click()
    page.locator("#ds_folder textarea, #ds_folder input").first.fill("nope")
    page.click("#ds_open")
    _wait_text(page, "#ds_msg", "nope")
    assert "错误" in _text(page, "#ds_msg") and "Error" not in _text(page, "#ds_msg")
    page.locator("#ds_folder textarea, #ds_folder input").first.fill("run1")
    page.click("#ds_open")
    _wait_text(page, "#ds_msg", "已打开")
    page.wait_for_selector("#ds_layer_time .js-plotly-plot", timeout=WAIT)
    page.locator("#ds_row input").first.fill("0")
    page.click("#ds_show")
    _wait_text(page, "#ds_drill_msg", "第 0 行")
    page.wait_for_selector("#ds_words th", timeout=WAIT)
    labels = page.locator(
        "#tab-4 label, #tab-4 button, #tab-4 th, #tab-4 .label, #tab-4 [data-testid=block-label],"
        " #tab-4 .gtitle, #tab-4 .cbtitle"
    ).evaluate_all("els => els.map(e => e.innerText || e.textContent).filter(t => t.trim())")
    text = " | ".join(labels)
    assert CJK.search(text) and "打开" in text and "概览" in text
    assert not _english_words(text), (_english_words(text), text)
    _switch(page, "en")
    page.wait_for_function(
        "() => document.querySelector('#ds_open').innerText.includes('Open')", timeout=WAIT
    )
    assert "Open" in _text(page, "#ds_open") and "opened" in _text(page, "#ds_msg")
    _switch(page, "zh-CN")

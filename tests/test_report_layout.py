"""Reports and notebook displays stay legible where they are read: a long prompt (3 chunks,
160 words) wraps its tokens and tiles and splits the layer x token grid into labelled panels;
the block diagram's text is never drawn under 9 px, in a report or a ~900 px notebook cell.
Sizes are measured in a real Chromium."""

from __future__ import annotations

import math
import re

import pytest

from tests.conftest import tiny_capture
from tests.report_support import long_trace, long_words
from unetviz.report import display, html

N_WORDS = 160

#: rendered size (CSS px) of every SVG <text> under ``selector``: font size x the SVG's scale
TEXT_PX = """sel => [...document.querySelectorAll(sel + ' text')].map(t => {
  const m = t.getScreenCTM();
  return parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
})"""


@pytest.fixture(scope="module")
def long():
    return long_trace(N_WORDS)


@pytest.fixture(scope="module")
def long_report(long, tmp_path_factory):
    return html.write_report(long, tmp_path_factory.mktemp("long") / "long.html")


def _panels(text: str) -> list[str]:
    return re.findall(r'<div class="plot" title="cross-attention[^"]*".*?</svg>', text, re.S)


def test_long_prompt_report_wraps_tokens_and_splits_the_grid(long_report):
    text = long_report.read_text()
    assert text.count('<div class="chunk">') == 3  # one labelled line per 77-token chunk
    assert "chunk 3 (tokens 154\u2013230)" in text and "+ 65 padding" in text
    assert text.count('alt="heatmap of ') == N_WORDS  # every word keeps its map
    assert f'width="{display.SMALL_TILE}" class="heatmap px"' in text
    panels = _panels(text)
    assert len(panels) == math.ceil(N_WORDS / html.GRID_COLUMNS)
    words = long_words(N_WORDS)
    for k, panel in enumerate(panels):  # every column of every panel has its label
        chunk = words[k * html.GRID_COLUMNS : (k + 1) * html.GRID_COLUMNS]
        labels = re.findall(r'rotate\(-90\)" text-anchor="end">([^<]+)</text>', panel)
        assert labels == chunk
    assert "grid-note" not in text  # nothing left out: no note


def test_grid_over_budget_shows_the_most_attended_tokens_and_says_so(long, monkeypatch):
    layers = sum(1 for a in long.attention.values() if a.captured)
    monkeypatch.setattr(html, "GRID_CELLS", 30 * layers)  # room for 30 tokens
    shown, note = html.grid_tokens(long)
    assert len(shown) == 30 and shown == sorted(shown)
    assert note.startswith(f"showing 30 of the prompt's {N_WORDS} word tokens")
    mass = html._token_mass(long, list(range(len(long.tokens))))
    left_out = [i for i, w in enumerate(long.words) if w is not None and i not in shown]
    assert min(mass[i] for i in shown) >= max(mass[i] for i in left_out)
    text = html.build_report(long)
    assert 'class="small grid-note"' in text and len(_panels(text)) == 2


@pytest.mark.browser
def test_long_prompt_report_is_legible_in_chromium(long_report, browser):
    pytest.importorskip("playwright")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(long_report.as_uri())
    page.wait_for_selector("#plots svg")
    width = page.evaluate("() => document.documentElement.clientWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width  # no overflow
    # tiles wrap into rows of a few, each drawn at its size
    boxes = page.locator("#heatmaps figure img").evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.top, r.width]; })"
    )
    assert len(boxes) == N_WORDS
    rows: dict[int, int] = {}
    for top, w in boxes:
        assert w >= 100
        rows[round(top)] = rows.get(round(top), 0) + 1
    assert max(rows.values()) <= 10 and len(rows) >= N_WORDS // 10
    chips = page.locator("#run .tok").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().right)"
    )
    assert max(chips) <= width
    # every grid panel: every text >= 9 px, cells >= 20 px, panels inside the page
    panels = page.locator("#plots .plot[title^='cross-attention'] svg")
    assert panels.count() == math.ceil(N_WORDS / html.GRID_COLUMNS)
    for i in range(panels.count()):
        svg = panels.nth(i)
        sizes = page.evaluate(TEXT_PX, f"#plots .plot:nth-of-type({i + 1}) svg")
        assert sizes and min(sizes) >= 9, (i, min(sizes))
        cells = svg.locator("image").first.bounding_box()
        columns = svg.locator("text[transform]").count()
        assert cells["width"] / columns >= 20
        assert svg.bounding_box()["x"] + svg.bounding_box()["width"] <= width + 1
    page.close()


def _min_text(page, selector: str) -> float:  # noqa: ANN001
    sizes = page.evaluate(TEXT_PX, selector)
    assert sizes, f"no text under {selector}"
    return min(sizes)


@pytest.mark.browser
def test_trace_diagram_is_readable_in_a_notebook_cell(browser, tmp_path):
    pytest.importorskip("playwright")
    trace = tiny_capture()
    # a notebook output area: ~860 px wide inside a 900 px window, JupyterLab's own svg rule
    page_html = (
        "<!DOCTYPE html><html><head><style>.out svg{max-width:100%;height:auto}</style></head>"
        f'<body style="margin:0"><div class="out" style="width:860px;padding:0 20px">'
        f"{trace._repr_html_()}</div></body></html>"
    )
    path = tmp_path / "cell.html"
    path.write_text(page_html)
    page = browser.new_page(viewport={"width": 900, "height": 800})
    page.goto(path.as_uri())
    page.wait_for_selector(".diagram svg g.node")
    assert _min_text(page, ".diagram svg") >= 9
    box = page.locator(".diagram").evaluate(
        "e => [e.scrollWidth, e.clientWidth, e.getBoundingClientRect().right]"
    )
    assert box[2] <= 900  # the box stays in the cell; the diagram scrolls inside it
    assert box[0] >= box[1]
    # the node labels (the diagram's main text) are drawn at the graph's own size or larger
    node = page.evaluate(TEXT_PX, ".diagram svg g.node")
    assert min(node) >= 9
    page.close()


@pytest.mark.browser
def test_report_diagram_and_plots_text_is_readable(long_report, browser):
    pytest.importorskip("playwright")
    page = browser.new_page(viewport={"width": 900, "height": 800})
    page.goto(long_report.as_uri())
    page.wait_for_selector("#diagram svg g.node")
    assert _min_text(page, "#diagram svg") >= 9
    assert _min_text(page, "#plots svg") >= 9
    page.close()

"""The self-contained HTML report: run.report / trace.report / ``unetviz report``, its content,
its size, bad input, and a real Chromium opening it from file:// with the network cut off."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from unetviz import cli
from unetviz.report.html import build_report, write_report

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
PROMPT = "a red circle and a blue square"
WORDS = ["a", "red", "circle", "and", "blue", "square"]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def run():
    from unetviz.pipelines import load_pipeline

    return load_pipeline("demo")(PROMPT, seed=0, steps=5)


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    return run.report(tmp_path_factory.mktemp("report") / "run.html")


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    return exc.value.code or 0


def test_run_report_is_one_self_contained_file(report):
    html = report.read_text()
    assert report.stat().st_size < 5 * 1024 * 1024
    assert "<script" not in html.lower() and not EXTERNAL.search(html)
    for section in ("run", "diagram", "heatmaps", "plots", "options"):
        assert f'<section id="{section}">' in html
    figures = re.findall(r'<figure><img src="data:image/png;base64,[^"]+" alt="heatmap', html)
    assert len(figures) == len(WORDS)
    # the image is captioned with what made it
    assert "<figcaption>generated image: 96x96 px, seed 0, steps 5, guidance 4.0" in html
    for word in WORDS:
        assert f"<b>{word}</b>" in html
    assert "recipe:" in html and "DAAM" in html  # the aggregation recipe is spelt out
    assert html.count("<svg") >= 4  # diagram + layer grid + two temb plots
    for item in ("attention_mode", "torch", "plotly", "python", PROMPT):
        assert item in html
    assert html.count('class="tok word"') == 7
    # the layer x token grid labels every column (upright when they do not fit side by side)
    grid = re.search(r'<div class="plot" title="cross-attention.*?</svg>', html, re.S).group(0)
    labels = re.findall(r'(?:rotate\(-90\)" text-anchor="end"|text-anchor="middle")>([^<]+)<', grid)
    assert labels == ["a", "red", "circle", "and", "a", "blue", "square"]


def test_trace_report_and_cli_read_saved_runs(run, tmp_path, capsys):
    # a Trace.save bundle with the app's image.png inside; an attention-style folder
    bundle = run.trace.save(tmp_path / "run.trace")
    png = io.BytesIO()
    run.image.save(png, format="PNG")
    with zipfile.ZipFile(bundle, "a") as zf:
        zf.writestr("image.png", png.getvalue())
    folder = tmp_path / "attention"
    folder.mkdir()
    run.trace.save(folder / "run.trace")
    run.image.save(folder / "image.png")
    saved = run.trace.save(tmp_path / "saved.trace", folder=True)  # Trace.save(folder=True)
    run.image.save(saved / "image.png")
    for source in (bundle, folder, saved):
        out = tmp_path / f"{source.stem}.html"
        assert run_main(["report", str(source), "-o", str(out)]) == 0
        html = out.read_text()
        assert 'alt="generated image"' in html and PROMPT in html
        assert "wrote" in capsys.readouterr().err
    from unetviz.app.sessions import Session  # what the app's "Download report" passes

    app = write_report(
        Session(trace=run.trace, image=run.image, label="from the app"), tmp_path / "app.html"
    )
    assert "unetviz report: from the app" in app.read_text()
    assert 'alt="generated image"' in app.read_text()
    bare = run.trace.report(tmp_path / "trace.html")  # no image: maps over grey, and why
    text = bare.read_text()
    assert 'alt="generated image"' not in text
    assert text.count('alt="heatmap of') == len(WORDS)
    assert "No image: this trace was saved without the image" in text
    assert "trace.save(path, image=run.image)" in text and "over flat grey (no image)" in text


def test_a_saved_trace_carries_its_image_downscaled(run, tmp_path):
    from unetviz.capture import Trace
    from unetviz.capture.bundle import IMAGE_NAME, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE

    rng = __import__("numpy").random.default_rng(0)  # noise: the worst case for PNG bytes
    big = Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype="uint8"))
    for folder in (False, True):
        path = run.trace.save(tmp_path / f"big{int(folder)}.trace", folder=folder, image=big)
        if folder:
            data = (path / IMAGE_NAME).read_bytes()
        else:
            with zipfile.ZipFile(path) as zf:
                data = zf.read(IMAGE_NAME)
        kept = Image.open(io.BytesIO(data))
        assert kept.format == "PNG" and max(kept.size) <= MAX_IMAGE_SIDE
        assert kept.size[0] * 3 == kept.size[1] * 4  # the aspect ratio is kept
        assert len(data) <= MAX_IMAGE_BYTES
        assert Trace.load(path).tokens == run.trace.tokens  # the bundle still loads
        html = build_report(path)
        assert 'alt="generated image"' in html and "No image" not in html
    from unetviz.capture import TraceError

    with pytest.raises(TraceError, match="image=ndarray: expected a PIL image"):
        run.trace.save(tmp_path / "bad.trace", image=rng.random((8, 8)))
    assert not (tmp_path / "bad.trace").exists()


def test_attention_output_trace_alone_reports_its_image(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(["attention", PROMPT, "-o", str(out), "--steps", "2"]) == 0
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    (alone / "copy.trace").write_bytes((out / "run.trace").read_bytes())  # no image.png beside
    assert run_main(["report", str(alone / "copy.trace"), "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert 'alt="generated image"' in text and "No image" not in text
    # a run.trace saved before traces kept their image: the image.png beside it is used
    old = tmp_path / "old"
    old.mkdir()
    run.trace.save(old / "run.trace")
    run.image.save(old / "image.png")
    assert 'alt="generated image"' in build_report(old / "run.trace")
    capsys.readouterr()


@pytest.mark.parametrize("case", ["missing", "not-html", "corrupt", "no-folder", "huge-image"])
def test_cli_bad_input_is_one_error_line_and_no_file(case, run, tmp_path, capsys):
    source, out = tmp_path / "run.trace", tmp_path / "out.html"
    if case != "missing":
        run.trace.save(source)
    if case == "not-html":
        out = tmp_path / "out.txt"
    elif case == "corrupt":
        source.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "no-folder":
        out = tmp_path / "nowhere" / "out.html"
    elif case == "huge-image":  # a valid PNG header claiming 20000 x 20000 px
        img = io.BytesIO()
        Image.new("L", (20000, 1)).save(img, format="PNG")
        data = bytearray(img.getvalue())
        data[20:24] = (20000).to_bytes(4, "big")  # IHDR height
        with zipfile.ZipFile(source, "a") as zf:
            zf.writestr("image.png", bytes(data))
    assert run_main(["report", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [] if case == "missing" else ["run.trace"]
    )


@pytest.mark.browser
def test_report_opens_offline_in_chromium(report, browser):
    pytest.importorskip("playwright")
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside: list[str] = []
    requests: list[str] = []

    def route(r):  # the file itself (and inline data) only: any network request fails
        if urlparse(r.request.url).scheme in ("file", "data"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri())
    page.wait_for_selector("#diagram svg g.node")
    for selector in ("#diagram svg", "#run img.image", "#heatmaps img.heatmap"):
        assert page.locator(selector).first.is_visible(), selector
    loaded = page.locator("img").evaluate_all(
        "els => els.map(e => e.complete && e.naturalWidth > 0)"
    )
    assert loaded and all(loaded)
    assert page.locator("#heatmaps img.heatmap").count() == len(WORDS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()
    assert not outside, outside
    assert all(urlparse(u).scheme in ("file", "data") for u in requests), requests

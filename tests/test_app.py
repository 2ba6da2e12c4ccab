"""The app's endpoints through gradio_client against an in-process server: each endpoint,
bad inputs (clear error, server stays up), re-aggregation without a model run, trace bundles,
and two concurrent clients."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_app_support import TEST_STEPS, Served, heatmap_args, run_args

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

ALL = ("down", "mid", "up")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("app"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served.url, verbose=False)


@pytest.fixture(scope="module")
def ran(served, client):
    """One 4-step run of 'a red circle' in the module client's session."""
    out = client.predict(*run_args("a red circle"), api_name="/run")
    return out


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for want in (
        "/architecture",
        "/block_parts",
        "/run",
        "/heatmaps",
        "/upload_trace",
        "/temb_figures",
    ):
        assert want in names


def test_binds_localhost_by_default(served):
    import app as app_py

    assert served.url.startswith("http://127.0.0.1:")
    args = app_py.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860
    args = app_py.parse_args(["--host", "0.0.0.0", "--port", "8080", "--model-root", "/m"])
    assert (args.host, args.port, args.model_root) == ("0.0.0.0", 8080, ["/m"])


def test_unetviz_app_subcommand_is_registered():
    from typer.testing import CliRunner

    from unetviz import cli

    cli._register_subcommands(["app"])
    out = CliRunner().invoke(cli.app, ["app", "--help"])
    assert out.exit_code == 0 and "--model-root" in out.output and "127.0.0.1" in out.output


def test_run_reports_progress_every_step(served):
    from unetviz.app.ui import AppHandlers

    seen = []

    def progress(value, desc=None, unit=None, **_):
        seen.append(value)

    h = AppHandlers(served.registry)
    out = h.run("demo", "a red circle", "", 0, 3, 4.0, *heatmap_args(), progress=progress)
    assert [v for v in seen if isinstance(v, tuple)] == [(1, 3), (2, 3), (3, 3)]
    assert len(out[7]) == 3


def test_architecture_demo_and_preset(served, client):
    html, table, pick, svg, png, dot, js, status, *_ = client.predict(
        "demo", "", 32, 32, 2, "layers", 100, api_name="/architecture"
    )
    assert "<svg" in html and "overflow" in html
    rows = table["data"]
    names = [r[0] for r in rows]
    assert "down_blocks.0.resnets.0" in names and "mid_block" in names
    row = rows[names.index("down_blocks.0")]
    c0 = served.registry.spec("demo").config["block_out_channels"][0]
    assert row[2] == f"(2,{c0},32,32) → (2,{c0},16,16)"
    assert Path(svg).read_text().lstrip().startswith(("<?xml", "<svg", "<!--"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digraph" in Path(dot).read_text()
    assert json.loads(Path(js).read_text())["nodes"]
    assert "demo" in status
    # SD 1.5 on meta: the seed's shapes, LDM keys and A1111 labels in the table
    _, table, *_ = client.predict("sd15", "", 512, 512, 2, "blocks", 100, api_name="/architecture")
    rows = {r[0]: r for r in table["data"]}
    assert rows["down_blocks.0"][2] == "(2,320,64,64) → (2,320,32,32)"
    assert rows["mid_block"][5] != "-" and rows["mid_block"][6] != "-"


def test_arch_defaults_follow_the_model(client):
    h, w, folder = client.predict("sdxl", "", api_name="/arch_defaults")
    assert h["value"] == w["value"] == 1024 and h["step"] == 32
    assert folder["visible"] is False
    h, w, folder = client.predict("folder", "", api_name="/arch_defaults")
    assert folder["visible"] is True
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict("folder", "/etc", api_name="/arch_defaults")
    h, _, _ = client.predict("demo", "", api_name="/arch_defaults")
    assert h["value"] == client.predict("demo", "", api_name="/arch_defaults")[1]["value"]


def test_block_parts(client):
    client.predict("sd15", "", 512, 512, 2, "layers", 100, api_name="/architecture")
    parts = client.predict("down_blocks.0.attentions.0", api_name="/block_parts")
    rows = {r[0]: r for r in parts["data"]}
    assert "transformer_blocks.0" in rows and "proj_in" in rows
    assert rows["proj_in"][1] in ("Linear", "Conv2d")


def test_architecture_bad_inputs_then_recovers(served, client):
    outside = served.root.parent / "elsewhere"
    (outside / "unet").mkdir(parents=True)
    (outside / "unet" / "config.json").write_text("{}")
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict("folder", str(outside), 64, 64, 2, "blocks", 100, api_name="/architecture")
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict("folder", "../elsewhere", 64, 64, 2, "blocks", 100, api_name="/architecture")
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict("folder", "/etc", 64, 64, 2, "blocks", 100, api_name="/architecture")
    # a symlink inside the root pointing out of it is outside too
    (served.root / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict("folder", "sneaky", 64, 64, 2, "blocks", 100, api_name="/architecture")
    with pytest.raises(AppError, match="height=33"):
        client.predict("sd15", "", 33, 512, 2, "blocks", 100, api_name="/architecture")
    html, *_ = client.predict("sd21", "", 768, 768, 2, "blocks", 100, api_name="/architecture")
    assert "<svg" in html


def test_architecture_of_a_folder_inside_the_roots(served, client):
    from unetviz.pipelines.demo import demo_unet_config

    folder = served.root / "mine" / "unet"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(demo_unet_config()))
    html, table, *_, status, _ = client.predict(
        "folder", "mine", 256, 256, 1, "blocks", 80, api_name="/architecture"
    )
    assert "<svg" in html and "mine" in status
    assert any(r[0] == "conv_in" for r in table["data"])


def test_a_stable_diffusion_folder_inside_the_roots(served, client):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tests.test_sd_tiny import build_tiny_sd

    build_tiny_sd(served.root / "tiny-sd", "sd1")
    _, table, *_, status, _ = client.predict(
        "folder", "tiny-sd", 64, 64, 2, "blocks", 100, api_name="/architecture"
    )
    rows = {r[0]: r for r in table["data"]}
    assert rows["conv_in"][2].startswith("(2,4,8,8)")  # a latent model: 64 px -> 8x8
    c = Client(served.url, verbose=False)
    out = c.predict(*run_args("a photo of a cat", steps=2, model="tiny-sd"), api_name="/run")
    words = [t["token"] for t in out[1] if t["class_or_confidence"] == "word"]
    assert words == ["a", "photo", "of", "a", "cat"]
    assert len(out[1]) == 7  # <|startoftext|> ... <|endoftext|>, not 77 padded positions
    assert [g["caption"] for g in out[7]][-1] == "cat (5)"


def test_run_gives_image_tokens_and_one_heatmap_per_word(ran, served):
    image, tokens, token_pick, step_from, step_to, res, heads, gallery, status, temb_step = ran
    side = served.registry.spec("demo").default_size
    k = max(1, 256 // side)  # small images are shown scaled up
    assert _pixels(image).shape == (side * k, side * k, 3)
    labels = [t["token"] for t in tokens]
    assert labels == ["<bos>", "a", "red", "circle", "<eos>"]
    assert token_pick["value"] == [1, 2, 3]
    assert [g["caption"] for g in gallery] == ["a (1)", "red (2)", "circle (3)"]
    assert step_to["maximum"] == TEST_STEPS - 1 and step_to["value"] == TEST_STEPS - 1
    assert len(res["value"]) >= 2 and res["value"] == sorted(res["value"], reverse=True)
    assert heads["choices"][0] == ["head 0", 0]  # per-head maps kept for the demo model
    assert f"{TEST_STEPS} steps" in status


def test_reaggregation_does_not_run_the_model(ran, served, client):
    calls = served.registry.pipeline_calls
    full = client.predict(*heatmap_args([2], 0, TEST_STEPS - 1), api_name="/heatmaps")
    early = client.predict(*heatmap_args([2], 0, 0), api_name="/heatmaps")
    late = client.predict(*heatmap_args([2], TEST_STEPS - 1, TEST_STEPS - 1), api_name="/heatmaps")
    assert len(full) == len(early) == 1
    a, b, c = (_pixels(g[0]["image"]) for g in (full, early, late))
    assert not np.array_equal(b, c)
    # every other control re-aggregates too
    for args in (
        heatmap_args([1, 2, 3], 0, 1, preset="daam"),
        heatmap_args([2], 0, 3, preset="p2p", normalize="max"),
        heatmap_args([0, 4], 1, 2, locations=("up",), resolutions=ran[5]["value"][:1], heads=[0]),
        heatmap_args([3], 0, 3, normalize="none", threshold=0.5, opacity=0.3),
    ):
        out = client.predict(*args, api_name="/heatmaps")
        assert len(out) == len(args[0])
    assert served.registry.pipeline_calls == calls


def test_heatmap_bad_controls(ran, client):
    with pytest.raises(AppError, match="empty"):
        client.predict(*heatmap_args([2], 3, 1), api_name="/heatmaps")
    with pytest.raises(AppError, match="at least one"):
        client.predict(*heatmap_args([2], 0, 3, locations=()), api_name="/heatmaps")
    # the step sliders' maximum follows the session's trace: gradio itself refuses 20
    with pytest.raises(AppError, match="greater than maximum value 3"):
        client.predict(*heatmap_args([2], 0, 20), api_name="/heatmaps")
    out = client.predict(*heatmap_args([2], 0, 3), api_name="/heatmaps")
    assert len(out) == 1


def test_heatmaps_before_any_run_is_a_clear_error(served):
    fresh = Client(served.url, verbose=False)
    with pytest.raises(AppError, match="press Run or upload"):
        fresh.predict(*heatmap_args([], 0, 0), api_name="/heatmaps")


def test_run_bad_inputs_then_recovers(served, client):
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict(*run_args("   "), api_name="/run")
    with pytest.raises(AppError, match="steps=0"):
        client.predict(*run_args("a red circle", steps=0), api_name="/run")
    with pytest.raises(AppError, match="unknown word"):
        client.predict(*run_args("a purple elephant"), api_name="/run")
    with pytest.raises(AppError, match="outside the allowed model roots"):
        client.predict(*run_args("a red circle", model="/etc"), api_name="/run")
    out = client.predict(*run_args("a green square", steps=2), api_name="/run")
    assert [g["caption"] for g in out[7]] == ["a (1)", "green (2)", "square (3)"]


def test_trace_bundle_roundtrip_and_corrupt_upload(served, tmp_path):
    from unetviz.app import views

    c = Client(served.url, verbose=False)
    out = c.predict(*run_args("a blue triangle", steps=2), api_name="/run")
    session = views.Session(
        trace=served.registry.pipeline("demo")("a blue triangle", steps=2, per_head=True).trace,
        image=Image.open(out[0]).convert("RGB"),
        label="a blue triangle",
    )
    bundle = views.save_bundle(session, tmp_path / "t.trace.zip")
    assert views.IMAGE_NAME in zipfile.ZipFile(bundle).namelist()
    zipped = views.heatmaps_zip(session, views.HeatmapControls(step_to=1), tmp_path / "h.zip")
    assert any(n.endswith("_overlay.png") for n in zipfile.ZipFile(zipped).namelist())

    other = Client(served.url, verbose=False)
    calls = served.registry.pipeline_calls
    up = other.predict(handle_file(str(bundle)), *heatmap_args(), api_name="/upload_trace")
    assert [g["caption"] for g in up[7]] == ["a (1)", "blue (2)", "triangle (3)"]
    assert np.array_equal(_pixels(up[0]), _pixels(out[0]))
    assert "a blue triangle" in up[8]
    maps = other.predict(*heatmap_args([3], 1, 1), api_name="/heatmaps")
    assert len(maps) == 1
    assert served.registry.pipeline_calls == calls

    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip at all")
    with pytest.raises(AppError, match="corrupt.zip"):
        other.predict(handle_file(str(bad)), *heatmap_args(), api_name="/upload_trace")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(AppError, match="not a unetviz trace"):
        other.predict(handle_file(str(foreign)), *heatmap_args(), api_name="/upload_trace")
    up = other.predict(handle_file(str(bundle)), *heatmap_args(), api_name="/upload_trace")
    assert len(up[7]) == 3


def test_time_embedding_endpoints(ran, client):
    # the module session's latest trace has >= 2 steps
    heat, lines, sinus, svg = client.predict(1, "layers", 100, "layer", api_name="/temb_figures")
    for fig in (heat, lines, sinus):
        assert fig["type"] == "plotly" or "plot" in json.dumps(fig)[:200]
    assert "<svg" in svg
    svg2 = client.predict(0, "blocks", 100, api_name="/temb_diagram")
    assert "<svg" in svg2 and svg2 != svg
    with pytest.raises(AppError, match="greater than maximum"):
        client.predict(20, "layers", 100, api_name="/temb_diagram")


def test_two_clients_at_once_get_their_own_results(served):
    prompts = ["a yellow square on the right", "a green circle on the top"]
    solo = []
    for p in prompts:
        c = Client(served.url, verbose=False)
        solo.append(c.predict(*run_args(p, steps=3), api_name="/run"))
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            c = Client(served.url, verbose=False)
            results[i] = c.predict(*run_args(prompts[i], steps=3), api_name="/run")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i, p in enumerate(prompts):
        assert np.array_equal(_pixels(results[i][0]), _pixels(solo[i][0]))
        words = [t["token"] for t in results[i][1] if t["class_or_confidence"] == "word"]
        assert words == p.split()
        for g_con, g_solo in zip(results[i][7], solo[i][7], strict=True):
            assert np.array_equal(_pixels(g_con["image"]), _pixels(g_solo["image"]))
    assert not np.array_equal(_pixels(results[0][0]), _pixels(results[1][0]))

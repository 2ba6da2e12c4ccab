"""The app's handlers and endpoints against an in-process server (real demo model): errors keep
the work, exact seeds, comparable heatmaps, presets, search, session limits, launch checks, and
two concurrent clients."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_support import (
    TEST_STEPS,
    Request,
    Served,
    arch_form,
    controls_form,
    heatmap_args,
    named,
    run_args,
    run_form,
)
from tests.demo_support import latent_demo_folder
from unetviz.app.i18n import one_language

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from unetviz.app import views  # noqa: E402
from unetviz.app.handlers import clean_message, parse_int  # noqa: E402
from unetviz.app.sessions import Session, SessionStore  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("app"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def ran(served):
    """One 4-step run of 'a red circle' in session "test" (direct handler call)."""
    h = served.handlers
    return h.run(run_form(), request=Request())


def _pixels(path) -> np.ndarray:
    return np.asarray(
        Image.open(path).convert("RGB") if not isinstance(path, Image.Image) else path
    )


def test_run_gives_image_tokens_heatmaps_and_a_colour_bar(ran, served):
    image, tokens, pick, steps = (
        ran[k] for k in ("image", "tokens_view", "token_pick", "step_range")
    )
    heads, tiles, bar, status, msg = (
        ran[k] for k in ("heads", "tiles", "colorbar", "status", "run_msg")
    )
    side = served.registry.spec("demo").default_size
    assert image.size[0] >= side and msg == ""
    assert [t for t, _ in tokens] == ["<bos>", "a", "red", "circle", "<eos>"]
    assert pick["value"] == [1, 2, 3]
    shown = views.tiles_from_html(tiles)  # one HTML block of inline images
    assert [cap for _, cap in shown] == ["a (1)", "red (2)", "circle (3)"]
    assert all(img.size == (views.TILE, views.TILE) for img, _ in shown)
    assert steps == {"lo": 0, "hi": TEST_STEPS - 1, "max": TEST_STEPS - 1}
    assert "one scale for all tiles" in bar
    assert one_language(status).startswith("Showing **a red circle**")
    assert heads["choices"][0] == ("head 0", 0)


def test_a_failed_run_keeps_every_output_and_says_why_beside_run(ran, served, caplog):
    h = served.handlers
    before = served.runs
    for prompt, steps, seed, want in (
        ("a purple elephant", 4, "0", "purple"),
        ("   ", 4, "0", "prompt is empty"),
        ("a red circle", 500, "0", "steps=500"),
        (
            "a red circle",
            4,
            str(2**64 + 1),
            f"seed={2**64 + 1}: expected a whole number 0..{2**64 - 1}",
        ),
        ("a red circle", 4, "1.5", "seed='1.5'"),
    ):
        with caplog.at_level(logging.WARNING, logger="unetviz.app"):
            caplog.clear()
            out = h.run(run_form(prompt, steps, seed=seed), request=Request())
        assert want in out["run_msg"], out
        assert list(out) == ["run_msg"]  # nothing else touched
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is None  # one line
    assert served.runs <= before + 1  # only the unknown word reached the model
    assert served.handlers.session(Request()).label == "a red circle"  # work kept


def test_a_bug_logs_its_traceback_and_still_keeps_the_work(served, caplog, monkeypatch):
    h = served.handlers

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(views, "heatmap_tiles", boom)
    with caplog.at_level(logging.ERROR, logger="unetviz.app"):
        out = h.heatmaps(controls_form(), request=Request("nobody-but-me"))
    assert "nothing to show yet" in out["ctrl_msg"]  # no session: a user message, not the bug
    h.sessions.put("bug", Session(trace=served.handlers.session(Request()).trace))
    with caplog.at_level(logging.ERROR, logger="unetviz.app"):
        out = h.heatmaps(controls_form(step_to=TEST_STEPS - 1), request=Request("bug"))
    assert "internal error" in out["ctrl_msg"] and list(out) == ["ctrl_msg"]
    assert caplog.records[-1].exc_info is not None


def test_seeds_are_exact_integers():
    assert parse_int("9223372036854775807", "seed", 0, 2**64 - 1) == 2**63 - 1
    assert parse_int("9007199254740993", "seed", 0, 2**64 - 1) == 9007199254740993
    assert parse_int(7.0, "seed", 0, 10) == 7
    with pytest.raises(
        ValueError, match=r"seed=18446744073709551616: expected .*18446744073709551615"
    ):
        parse_int(str(2**64), "seed", 0, 2**64 - 1)


def test_error_messages_hide_temp_paths_and_cut_long_prompts(tmp_path):
    import tempfile

    p = Path(tempfile.gettempdir()) / "gradio" / "0123abcd" / "bundle.zip"
    msg = clean_message(f"{p}: not a unetviz trace; prompt '{'a red circle ' * 800}'")
    assert tempfile.gettempdir() not in msg and "bundle.zip" in msg
    assert len(msg) < 200


def test_normalisation_and_scale_change_the_pixels(ran, served):
    session = served.handlers.session(Request())
    base = views.HeatmapControls(tokens=(1, 2, 3), step_to=TEST_STEPS - 1)
    seen = []
    for norm in views.NORMALIZE:
        tiles, lo, hi = views.heatmap_tiles(
            session, views.HeatmapControls(**{**base.__dict__, "normalize": norm})
        )
        seen.append(np.concatenate([_pixels(t) for t, _ in tiles]))
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not np.array_equal(seen[i], seen[j]), (views.NORMALIZE[i], views.NORMALIZE[j])
    per = views.heatmap_tiles(
        session,
        views.HeatmapControls(**{**base.__dict__, "normalize": "sum", "scale": "per-token"}),
    )[0]
    assert not np.array_equal(np.concatenate([_pixels(t) for t, _ in per]), seen[2])
    # the base under the colour is grey: an image's own colours never mix with the map
    bare = views.HeatmapControls(**{**base.__dict__, "opacity": 0.0})
    tile = _pixels(views.heatmap_tiles(session, bare)[0][0][0])
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()


def test_presets_show_what_they_use_and_layers_stay_ticked(ran, served):
    h = served.handlers
    out = h.preset_changed({"preset": "p2p"}, request=Request())
    locs, res, note = out["locations"], out["res_pick"], out["preset_note"]
    assert locs["interactive"] is False and res["interactive"] is False
    assert "Prompt-to-Prompt" in note
    # the boxes show the preset's own choice: p2p reads one down/up resolution, never mid
    assert set(locs["value"]) <= {"down", "up"} and len(res["value"]) == 1
    assert f"{res['value'][0]}×{res['value'][0]}" in note
    out = h.preset_changed({"preset": "custom"}, request=Request())
    locs, note = out["locations"], out["preset_note"]
    assert locs["interactive"] is True and note == ""
    out = h.heatmaps(controls_form(step_to=1, locations=()), request=Request())
    tiles, msg, fix = out["tiles"], out["ctrl_msg"], out["locations"]
    assert fix == ["down", "mid", "up"] and "stays ticked" in msg
    assert len(views.tiles_from_html(tiles)) == 3


def test_session_store_expires_caps_and_frees():
    store = SessionStore(ttl_s=0.2, max_sessions=2)
    for k in "abc":
        store.put(k, Session(trace=None))
    assert len(store) == 2 and store.get("a") is None  # least recently used went first
    time.sleep(0.3)
    store.sweep()
    assert len(store) == 0
    store.put("d", Session(trace=None))
    store.drop("d")
    assert store.get("d") is None


def test_upload_size_limit_is_stated_and_enforced(tmp_path, monkeypatch):
    big = tmp_path / "big.trace.zip"
    with big.open("wb") as fh:
        fh.truncate(views.MAX_UPLOAD_MB * 2**20 + 1)
    with pytest.raises(ValueError, match=f"up to {views.MAX_UPLOAD_MB} MB"):
        views.load_bundle(big)
    from unetviz.app import launch_kwargs

    assert launch_kwargs()["max_file_size"] == f"{views.MAX_UPLOAD_MB}mb"


def test_sinusoid_is_drawn_before_any_run(served):
    fig = served.handlers.temb_intro()
    assert (
        fig is not None
        and fig.data[0].z.shape[0] == served.registry.spec("demo").config["block_out_channels"][0]
    )


def test_search_finds_a_module_by_any_of_its_names(served):
    side = served.registry.spec("demo").default_size
    arch = served.handlers.architecture(arch_form("demo", "", side, side, 2, "layers"))
    rows = arch["block_table"]
    for query, want in (
        ("down_blocks.1.attentions.0", "down_blocks.1.attentions.0"),  # diffusers
        ("input_blocks.3.1", "down_blocks.1.attentions.0"),  # LDM key
        ("in03", "down_blocks.1.attentions.0"),  # A1111 label (IN03: resnet and attention)
    ):
        hits = [r[0] for r in views.search_rows(rows, query)]
        assert want in hits[:2] and len(hits) < 5, (query, hits)
    files = served.handlers.exports({"arch_state": arch["arch_state"]})
    svg, png, dot, js = (files[f"dl_{k}"] for k in ("svg", "png", "dot", "json"))
    assert (
        "arch_msg" not in files
        and Path(png).read_bytes()[:4] == b"\x89PNG"
        and "digraph" in Path(dot).read_text()
    )
    out = served.handlers.search({"arch_state": arch["arch_state"], "block_search": "OUT05"})
    table, msg = out["block_table"], out["search_msg"]
    assert "up_blocks.2.attentions.1" in [r[0] for r in table][:2] and "match" in msg


def test_endpoints(served):
    c = Client(served.url, verbose=False)
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {
        "/architecture",
        "/run",
        "/heatmaps",
        "/upload_trace",
        "/select_block",
        "/search",
    } <= names
    assert not any("refresh" in n or "temb_figures" in n for n in names)
    before = served.runs
    h = served.handlers
    out = named(h.run, c.predict(*run_args("a green square", steps=2), api_name="/run"))
    caps = [cap for _, cap in views.tiles_from_html(out["tiles"])]
    assert caps == ["a (1)", "green (2)", "square (3)"]
    early = c.predict(*heatmap_args([2], 0, 0), api_name="/heatmaps")
    late = c.predict(*heatmap_args([2], 1, 1), api_name="/heatmaps")
    early, late = named(h.heatmaps, early)["tiles"], named(h.heatmaps, late)["tiles"]
    (e, _), (la, _) = views.tiles_from_html(early) + views.tiles_from_html(late)
    assert not np.array_equal(_pixels(e), _pixels(la))
    assert served.runs == before + 1  # re-aggregated, not re-run
    bad = named(h.run, c.predict(*run_args("a purple square", steps=2), api_name="/run"))
    assert "purple" in bad["run_msg"]  # the message slot, no exception, the server stays up
    side = served.registry.spec("demo").default_size
    drawn = c.predict("demo", "", side, side, 2, "blocks", api_name="/architecture")
    drawn = named(h.architecture, drawn)
    assert "uv-panel" in drawn["diagram"]
    assert any(r[0] == "mid_block" for r in drawn["block_table"]["data"])
    bad = c.predict("sd15", "", 33, 512, 2, "blocks", api_name="/architecture")
    assert "height=33" in named(h.architecture, bad)["arch_msg"]


def test_model_roots_are_enforced(served):
    h = served.handlers
    msg = h.architecture(arch_form("folder", "/etc", 64, 64))["arch_msg"]
    assert "outside the allowed model roots" in msg
    out = h.run(run_form(steps=2, model="/etc"), request=Request("roots"))
    assert "outside the allowed model roots" in out["run_msg"]


def test_trace_bundle_roundtrip(served, ran, tmp_path):
    session = served.handlers.session(Request())
    bundle = views.save_bundle(session, tmp_path / "t.trace.zip")
    c = Client(served.url, verbose=False)
    up = c.predict(handle_file(str(bundle)), *heatmap_args(), api_name="/upload_trace")
    up = named(served.handlers.upload, up)
    assert [cap for _, cap in views.tiles_from_html(up["tiles"])] == [
        "a (1)",
        "red (2)",
        "circle (3)",
    ]
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    up = c.predict(handle_file(str(bad)), *heatmap_args(), api_name="/upload_trace")
    msg = named(served.handlers.upload, up)["run_msg"]
    assert "corrupt.zip" in msg and "/tmp/gradio" not in msg


@pytest.mark.slow
def test_two_clients_at_once_get_their_own_results(served):
    prompts = ["a yellow square", "a green circle"]
    results: dict[int, tuple] = {}

    def go(i: int) -> None:
        results[i] = Client(served.url, verbose=False).predict(
            *run_args(prompts[i], steps=2), api_name="/run"
        )

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, p in enumerate(prompts):
        tokens = named(served.handlers.run, results[i])["tokens_view"]
        words = [t["token"] for t in tokens if t["class_or_confidence"] == "word"]
        assert words == p.split()


@pytest.mark.parametrize(
    "args, want",
    [
        (["--port", "-1"], "--port -1"),
        (["--host", "999.1.1.1"], "--host '999.1.1.1'"),
        (["--threads", "-1"], "--threads -1"),
        (["--model-root", "/nonexistent"], "--model-root '/nonexistent'"),
        (["--demo", "/nonexistent"], "--demo '/nonexistent'"),
        (["--dtype", "float8"], "--dtype 'float8'"),
        (["--device", "tpu; rm"], "--device 'tpu; rm'"),
    ],
)
def test_bad_launch_options_are_one_error_line_and_exit_2(args, want, capsys):
    import app as app_py

    assert app_py.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {want}")


def test_a_port_in_use_is_one_error_line(capsys):
    import app as app_py

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert app_py.main(["--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen" in err[0]


def test_a_restart_on_the_port_a_browser_just_used_is_not_refused():
    """Connections the stopped server closed linger in TIME_WAIT for a minute; the server
    (uvicorn, SO_REUSEADDR) can bind then, so the launch check must not refuse the port."""
    from unetviz.app import check_launch

    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as browser:
            conn, _ = srv.accept()
            conn.close()  # the server closes first: its side of the connection waits
            assert browser.recv(1) == b""
    check_launch("127.0.0.1", port)  # no LaunchError


def test_unetviz_app_subcommand(capsys):
    from unetviz import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["app", "--port", "-1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --port -1")


def test_demo_and_assets_demo_both_name_the_demo_model(served):
    reg = served.registry
    assert reg.is_demo("demo") and reg.is_demo("assets/demo") and reg.is_demo(str(reg.demo_dir()))
    assert not reg.is_demo("/etc") and not reg.is_demo("sd15")
    assert reg.pipeline("assets/demo") is reg.pipeline("demo")


def test_downloads_bundle_and_report_follow_the_session(ran, served):
    h = served.handlers
    form = controls_form(step_to=TEST_STEPS - 1) | {"temb_step": 1, "temb_detail": "blocks"}
    out = h.post_load(form, request=Request()) | h.post_load_files({}, request=Request())
    z, t, r = out["dl_zip"], out["dl_trace"], out["dl_report"]
    assert z.endswith("-heatmaps.zip") and out["ctrl_msg"] == "" and out["temb_msg"] == ""
    assert t.endswith(".trace.zip") and r.endswith("-report.html")
    assert "<html" in Path(r).read_text()[:500].lower()
    assert "uv-panel" in out["temb_svg"] and out["layer_plot"] is not None
    assert h.post_load(form, request=Request()) == {}  # made once per trace
    assert h.post_load_files({}, request=Request()) == {}
    assert h.post_load(form, request=Request("never-ran")) == {}


@pytest.fixture(scope="module")
def tiny_sd(served) -> str:
    """A tiny random SD 1.x folder inside the served roots (tests/sd_tiny.py), its UNet's
    sample_size set to 12 latents: the app runs it at 24 px, its cross-attention sits at 6x6
    and DAAM's factor rule keeps those maps (int(sqrt(9216 / 36)) = 16, one of DAAM's
    factors; at the stock 16 latents the 8x8 maps give 12, which DAAM never records)."""
    import json

    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tests.sd_tiny import build_tiny_sd

    folder = build_tiny_sd(served.root / "tiny-sd", "sd1")
    cfg_path = folder / "unet" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "sample_size": 12}))
    return folder.name


@pytest.mark.slow
def test_a_stable_diffusion_folder_inside_the_roots(served, tiny_sd):
    h = served.handlers
    drawn = h.architecture(arch_form("folder", tiny_sd, 64, 64))
    assert drawn["arch_msg"] == "", drawn["arch_msg"]
    rows = {r[0]: r for r in drawn["block_table"]}
    assert rows["conv_in"][2].startswith("(2,4,8,8)")  # a latent model: 64 px -> 8x8
    out = h.run(run_form("a photo of a cat", 2, model=tiny_sd), request=Request("sd"))
    assert out["run_msg"] == "", out["run_msg"]
    words = [t for t, kind in out["tokens_view"] if kind == "word"]
    assert words == ["a", "photo", "of", "a", "cat"] and len(out["tokens_view"]) == 7
    assert [cap for _, cap in views.tiles_from_html(out["tiles"])][-1] == "cat (5)"


def test_a_model_choice_sets_its_size_and_draws_in_one_call(served):
    h = served.handlers
    out = h.choose_model(arch_form("sd15"))
    height, width, folder, panel = (out[k] for k in ("arch_h", "arch_w", "arch_folder", "diagram"))
    assert out["arch_msg"] == "" and height["value"] == width["value"] == 512
    assert folder["visible"] is False
    assert (
        "uv-panel" in panel and "sd15" in out["arch_status"] and out["arch_state"]["trace"].blocks
    )
    # nothing of the previous model stays: picked block, its parts, the search
    assert out["block_parts"] == [] and out["block_picked"] == out["block_search"] == ""
    again = h.choose_model(arch_form("sd15"))
    assert again["diagram"] is panel  # drawn once, then served from the diagram cache
    assert "type a folder" in h.choose_model(arch_form("folder"))["arch_msg"]
    assert h.prerender(("demo", "sd15")) == 2


def test_experiments_choices_come_from_the_structure_not_the_model(served, ran):
    from unetviz.app import edit_handlers as eh
    from unetviz.app.experiments import demo_choices

    mine = demo_choices(served.registry)
    theirs = eh.choices(served.registry.pipeline("demo"))
    assert mine["blocks"] == theirs["blocks"] and mine["skips"] == theirs["skips"]


def test_follow_ups_are_not_remade_when_their_inputs_did_not_change(ran, served):
    h = served.handlers
    req = Request("follow")
    h.sessions.put("follow", Session(trace=served.handlers.session(Request()).trace))
    first = h.follow_controls(controls_form(step_to=1), request=req)
    assert first["layer_plot"] is not None and first["dl_zip"].endswith(".zip")
    again = h.follow_controls(controls_form(step_to=1, normalize="max"), request=req)
    assert "layer_plot" not in again  # the grid does not read the normalisation
    assert "layer_plot" in h.follow_controls(
        controls_form(step_to=1, scale="per-token"), request=req
    )
    assert "dl_zip" not in h.follow_controls(
        controls_form(step_to=1, scale="per-token"), request=req
    )
    assert "dl_zip" in h.follow_controls(controls_form(step_to=1, opacity=0.3), request=req)


@pytest.mark.slow  # a fresh interpreter importing gradio: ~3 s
def test_building_the_app_imports_neither_torch_nor_gradio_stub_writer(tmp_path, monkeypatch):
    """The first page does not wait for torch (once the demo's structure is cached, as on any
    restart), and gradio's .pyi rewrite is skipped."""
    import subprocess
    import sys

    from unetviz.app.experiments import demo_choices
    from unetviz.app.registry import ModelRegistry

    monkeypatch.setenv("UNETVIZ_CACHE_DIR", str(tmp_path / "cache"))
    demo_choices(ModelRegistry())  # a first start fills the structure cache

    code = (
        "import sys\n"
        "from unetviz.app import create_app, launch_kwargs\n"
        "blocks, registry = create_app(preload=None)\n"
        # a later gradio without the stub writer needs no hook: that passes too
        "import gradio.component_meta as m\n"
        "f = getattr(m, 'create_or_modify_pyi', None)\n"
        "print('torch' in sys.modules, getattr(f, '__name__', '_no_stub_rewrite'),"
        " launch_kwargs()['run_history'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "_no_stub_rewrite", "False"], out.stdout


def test_the_first_page_carries_the_demo_diagram(served):
    """Drawn at build time from the demo's structure (no torch), identical to a redraw."""
    panel, rows, status = served.handlers.first_drawing()
    side = served.registry.spec("demo").default_size
    again = served.handlers.architecture(arch_form("demo", "", side, side))
    assert (panel, rows) == (again["diagram"], again["block_table"]) and "demo model" in status
    initial = {
        c["props"].get("elem_id"): c["props"].get("value")
        for c in served.blocks.config["components"]
    }
    assert initial["diagram"] == panel and "uv-panel" in panel


def test_a_latent_demo_folder_is_drawn_in_pixels_over_its_vae_factor(tmp_path):
    from unetviz.app.registry import ModelRegistry
    from unetviz.detect import demo_geometry

    latent_demo_folder(tmp_path / "latent")  # a latent demo (VAE factor 4), random weights
    reg = ModelRegistry(roots=[tmp_path])
    spec = reg.spec("folder", "latent")
    assert spec.factor == 4 and spec.default_size == 4 * spec.config["sample_size"] == 32
    assert spec.tokens == 20  # its own text encoder's length, not CLIP's 77
    shipped = reg.spec("demo")  # whichever demo ships: its own geometry
    assert (shipped.factor, shipped.tokens) == demo_geometry(reg.demo_dir())


@pytest.mark.slow
def test_the_daam_preset_works_on_a_stable_diffusion_run(served, tiny_sd):
    """DAAM's per-head sums are captured for SD models too: the preset works after Run."""
    h = served.handlers
    user = Request("sd-daam")
    out = h.run(run_form("a red cat", 2, model=tiny_sd), request=user)
    assert out["run_msg"] == "", out["run_msg"]
    session = h.session(Request("sd-daam"))
    assert views.has_daam(session.trace) and views.head_count(session.trace) == 0
    note = h.preset_changed({"preset": "daam"}, request=user)["preset_note"]
    assert "DAAM uses the down, up layers at 6×6" in note, note
    full = {"step_to": 1}  # DAAM sums every step: the whole window
    out = h.heatmaps(controls_form(preset="daam", **full), request=user)
    assert out["ctrl_msg"] == "", out
    daam = views.tiles_from_html(out["tiles"])
    assert [cap for _, cap in daam] == ["a (1)", "red (2)", "cat (3)"]
    custom = views.tiles_from_html(h.heatmaps(controls_form(**full), request=user)["tiles"])
    assert not np.array_equal(_pixels(daam[2][0]), _pixels(custom[2][0]))
    out = h.heatmaps(controls_form(preset="daam", step_to=0), request=user)
    assert "widen the step range" in out["ctrl_msg"]


def _copy(session: Session) -> Session:
    import copy

    return Session(trace=copy.deepcopy(session.trace), image=session.image, label="copy")


def test_a_byte_budget_sheds_daam_sums_first_then_whole_sessions(served, ran):
    from unetviz.app.handlers import AppHandlers

    one = served.handlers.session(Request())
    n = one.nbytes()
    daam = sum(
        r.head_sum.numel() * 4 for r in one.trace.attention.values() if r.head_sum is not None
    )
    assert 0 < daam < n
    store = SessionStore(max_bytes=3 * n - daam)
    h = AppHandlers(served.registry, sessions=store)
    for k in "abc":
        store.put(k, _copy(one))
    # three whole sessions are one DAAM share over: the least recently used one sheds it
    assert len(store) == 3 and store.nbytes() == 3 * n - daam
    a, b, c = (store.get(k) for k in "abc")
    assert a.shed_daam and not views.has_daam(a.trace)
    assert views.has_daam(b.trace) and views.has_daam(c.trace)
    # the DAAM preset says why and what to do; every other view still works
    full = {"step_to": TEST_STEPS - 1}
    out = h.heatmaps(controls_form(preset="daam", **full), request=Request("a"))
    tiles = out["tiles"]
    assert out["ctrl_msg"] == "" and not views.tiles_from_html(tiles)  # the area says why
    assert "freed to keep the server's memory" in tiles and "press Run again" in tiles
    assert h.heatmaps(controls_form(preset="p2p", **full), request=Request("a"))["ctrl_msg"] == ""
    assert h.heatmaps(controls_form(preset="daam", **full), request=Request("b"))["ctrl_msg"] == ""
    # sheds before it evicts; the newest session is kept whole even alone over the budget
    for k in "de":
        store.put(k, _copy(one))
        assert store.nbytes() <= store.max_bytes
        assert views.has_daam(store.get(k).trace)
    tiny = SessionStore(max_bytes=1)
    for k in "xy":
        tiny.put(k, _copy(one))
    assert len(tiny) == 1 and tiny.get("y") is not None and tiny.nbytes() == n


def test_the_experiments_table_reads_as_measures(served):
    from unetviz.app.experiments import CHANGED_HEADERS, NOT_APPLICABLE, edited

    strip, heat, table, note = edited(
        served.registry, "demo", "a red circle", 0, 2, 4.0, "red", 0.0, "all",
        [], [], "zero", "none", 1.0,
    )  # fmt: skip
    assert table["headers"] == CHANGED_HEADERS == ["measure", "base", "edited", "change"]
    rows = {r[0]: r[1:] for r in table["data"]}
    pixel = rows["pixels: mean |edited − base| (0–1)"]
    assert pixel[:2] == [NOT_APPLICABLE] * 2 and float(pixel[2]) >= 0  # a difference only
    base, after, change = rows["objects in the prompted colour (share)"]
    assert float(change) == pytest.approx(float(after) - float(base))
    assert rows["colour most pixels have"][2] in ("same", "changed")
    assert all(len(r) == 4 and all(str(v) for v in r) for r in table["data"])  # no blank cell
    assert not any(r[0] == "edit" for r in table["data"]) and "**Reweight** token=red" in note


def test_a_session_budget_below_16_mib_is_refused_before_launch():
    from unetviz.app import LaunchError, check_launch

    with pytest.raises(LaunchError, match=r"--session-mb 1: expected a whole number of MiB"):
        check_launch("127.0.0.1", 0, session_mb=1)


def test_a_trace_without_daam_sums_loads_while_daam_is_chosen(served, tmp_path):
    """An upload never fails for the preset: drawn with custom, the preset control moved and
    its note saying why and what to do; choosing DAAM then says so in the heatmap area."""
    h, user = served.handlers, Request("no-daam")
    run = served.registry.generate(
        "demo", prompt="a red circle", seed=0, steps=TEST_STEPS, guidance=4.0, daam=False
    )
    assert not views.has_daam(run.trace)
    saved = views.save_bundle(Session(trace=run.trace, image=run.image), tmp_path / "p.zip")
    # a file handed over from Python is the caller's: loaded, never deleted
    out = h.upload({"upload": str(saved), **controls_form(preset="daam")}, request=user)
    assert out["run_msg"] == "" and saved.is_file()
    # gradio's copy of an upload lives in a folder of its own under its upload folder
    from gradio.utils import get_upload_folder

    uploads = Path(get_upload_folder())
    uploads.mkdir(parents=True, exist_ok=True)
    copy = Path(tempfile.mkdtemp(dir=uploads))
    bundle = copy / "p.zip"
    shutil.copyfile(saved, bundle)
    out = h.upload({"upload": str(bundle), **controls_form(preset="daam")}, request=user)
    assert out["run_msg"] == "", out["run_msg"]
    caps = [c for _, c in views.tiles_from_html(out["tiles"])]
    assert caps == ["a (1)", "red (2)", "circle (3)"]
    assert out["preset"] == "custom" and "no DAAM per-head sums" in out["status"]
    note = out["preset_note"]
    assert "**This trace has no DAAM per-head sums**" in note and "daam=True" in note
    # the prompt and sampling boxes now show the trace's own, so Run draws it again
    boxes = {k: out.get(k) for k in ("prompt", "negative", "seed", "steps", "guidance")}
    assert boxes == {"prompt": "a red circle", "negative": "", "seed": "0",
                     "steps": TEST_STEPS, "guidance": 4.0}  # fmt: skip
    assert not bundle.exists() and not copy.exists()  # gradio's copy deleted once loaded
    full = {"step_to": TEST_STEPS - 1}
    out = h.preset_changed({"preset": "daam"}, request=user)
    assert "does not hold" in out["preset_note"] and out["ctrl_msg"] == ""
    out = h.heatmaps(controls_form(preset="daam", **full), request=user)
    tiles = out["tiles"]
    assert out["ctrl_msg"] == "" and out["colorbar"] == "" and not views.tiles_from_html(tiles)
    assert 'id="no_daam"' in tiles and "captured without daam=True" in tiles
    assert h.follow_controls(controls_form(preset="daam", **full), request=user)["dl_zip"] is None
    assert h.heatmaps(controls_form(preset="p2p", **full), request=user)["ctrl_msg"] == ""
    run.trace.meta.update(seed=-1, steps=10**6, guidance=float("nan"), prompt=None)
    bundle = views.save_bundle(Session(trace=run.trace, image=run.image), tmp_path / "q.zip")
    out = h.upload({"upload": str(bundle), **controls_form()}, request=user)
    assert out["negative"] == "" and not {"prompt", "seed", "steps", "guidance"} & set(out)
    # a guidance Run accepts (the API takes up to 30) but the page's slider would refuse
    run.trace.meta.update(guidance=20.0)
    again = views.save_bundle(Session(trace=run.trace, image=run.image), tmp_path / "r.zip")
    assert "guidance" not in h.upload({"upload": str(again), **controls_form()}, request=user)
    # a Run's trace has the sums: the preset stays as chosen
    out = h.run(run_form(steps=2, controls={"preset": "daam"}), request=user)
    assert out["run_msg"] == "" and "preset" not in out and "DAAM uses" in out["preset_note"]
    assert len(views.tiles_from_html(out["tiles"])) == 3


def test_a_gated_warm_up_waits_for_the_first_page(served):
    """``launch`` warms up (torch, demo model, preset diagrams) only once the first page has
    loaded its diagram state: before, the warm-up's imports slowed the page's own scripts."""
    from unetviz.app import warm_up

    h, registry = served.handlers, served.registry
    h.page_seen.clear()
    calls: list[str] = []
    preload = registry.preload

    def counted():
        calls.append("preload")
        return preload()

    registry.preload = counted  # type: ignore[method-assign]
    try:
        thread = warm_up(served.blocks, after=h.page_seen, wait_s=120)
        thread.join(0.3)
        assert thread.is_alive() and calls == []  # no page yet: waiting
        side = registry.spec("demo").default_size
        assert h.arch_state(arch_form("demo", "", side, side))["arch_msg"] == ""  # load event
        assert h.page_seen.is_set()
        thread.join(120)
        assert not thread.is_alive() and calls == ["preload"]
    finally:
        del registry.preload


def _objects(image) -> dict[str, int]:
    """Objects per colour in a demo image (connected regions of 6+ pixels of one palette
    colour, read with the training evaluator's pixel classifier)."""
    from unetviz.training.data import COLOURS
    from unetviz.training.evaluate import classify_pixels, largest_component

    labels = classify_pixels(np.asarray(image.convert("RGB"), np.float32) / 255)
    found = {}
    for i, colour in enumerate(COLOURS):
        mask, n = labels == i, 0
        while mask.sum() >= 6:
            part = largest_component(mask)
            if part.sum() < 6:
                break
            n, mask = n + 1, mask & ~part
        if n:
            found[colour] = n
    return found


def _shown_prompts(served) -> set[str]:
    """Every example prompt the project shows for the demo model at seed 0: the app's example
    buttons and defaults, the Experiments tab's swap and the notebook's prompt."""
    import json
    import re

    from unetviz.app import attention, experiments

    words = served.registry.demo_words()
    nb = json.loads((Path(__file__).parents[1] / "examples" / "quickstart.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return {
        *views.demo_examples(words),
        attention.DEFAULT_PROMPT,
        experiments.DEFAULT_PROMPT,
        experiments.DEFAULT_SWAP,
        *re.findall(r'^prompt = "([^"]+)"', code, re.M),
    }


@pytest.mark.slow
def test_every_example_prompt_is_drawn_right_at_its_shown_seed(served):
    """Colour, shape and count of every object, read from the pixels by the training evaluator
    (25 steps, guidance 4: the app's and the notebook's defaults)."""
    from unetviz.training.edit_scores import demo_scores, parse_caption

    pipe = served.registry.pipeline("demo")
    prompts = _shown_prompts(served)
    assert "a red circle and a blue square" in prompts and len(prompts) >= 5
    for prompt in sorted(prompts):
        image = pipe(prompt, seed=0, steps=25, guidance=4.0).image
        scores = demo_scores(prompt, image)
        assert scores["colour_ok"] == scores["shape_ok"] == 1.0, (prompt, scores)
        want: dict[str, int] = {}
        for obj in parse_caption(prompt).objects:
            want[obj.colour] = want.get(obj.colour, 0) + 1
        assert _objects(image) == want, (prompt, _objects(image))

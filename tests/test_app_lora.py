"""The app with what Stable Diffusion users bring: LoRA files in the model roots (the demo's
shipped LoRA too) fused for one run only, the U filled by what a LoRA changes, the with / without
comparison, emphasis weights on the token chips, long prompts listed per chunk, and the
Experiments note kept short. Handlers called directly on the real demo model (no server)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.app_support import Request, arch_form, run_form
from unetviz.app import views

EXAMPLE = "examples/yellow.safetensors"
STEPS = 4


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """Handlers on a registry whose one root holds a LoRA made for the demo model (kohya keys),
    one whose keys are not LoRA keys, one for modules the demo does not have, and a plain
    weights file."""
    from safetensors.torch import save_file

    from tests.lora_support import make_lora
    from unetviz.app.handlers import AppHandlers
    from unetviz.app.registry import ModelRegistry

    root = tmp_path_factory.mktemp("roots") / "models"
    (root / "loras").mkdir(parents=True)
    registry = ModelRegistry(roots=[root])
    handlers = AppHandlers(registry, tmp_path_factory.mktemp("work"))
    pipe = registry.pipeline("demo")
    make_lora(root / "loras" / "mine.safetensors", {"unet": pipe.unet}, "kohya", rank=2)
    r = torch.zeros(2, 8)
    save_file({"lora_unet_x.lora_down.weight": r, "extra.weight": r.clone()},
              str(root / "loras" / "unknown.safetensors"))  # fmt: skip
    save_file({"lora_unet_down_blocks_7_proj_in.lora_down.weight": r,
               "lora_unet_down_blocks_7_proj_in.lora_up.weight": r.T.contiguous()},
              str(root / "loras" / "other-base.safetensors"))  # fmt: skip
    save_file({"conv.weight": r}, str(root / "plain.safetensors"))
    return SimpleNamespace(registry=registry, h=handlers, root=root, pipe=pipe)


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_files_in_the_roots_and_the_demo_lora_are_offered(app, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((app.root / "loras" / "mine.safetensors").read_bytes())
    os.symlink(outside, app.root / "loras" / "link.safetensors")  # leaves the root: not offered
    try:
        values = [v for _, v in app.registry.lora_choices()]
    finally:
        (app.root / "loras" / "link.safetensors").unlink()
    assert values[:2] == ["none", EXAMPLE]
    assert sorted(values[2:]) == [
        "loras/mine.safetensors",
        "loras/other-base.safetensors",
        "loras/unknown.safetensors",
    ]  # adapters only (the plain weights file is not one); the library judges them on use
    with pytest.raises(Exception, match="outside the allowed model roots"):
        app.registry.resolve_lora(str(outside))
    with pytest.raises(Exception, match="expected a .safetensors file"):
        app.registry.resolve_lora("loras")


def test_a_run_fuses_the_lora_for_that_run_only(app):
    before = _weights(app.pipe)
    plain = app.h.run(run_form("a red circle", STEPS), request=Request("plain"))
    assert plain["run_msg"] == "", plain["run_msg"]
    form = run_form("a red circle", STEPS) | {"lora_pick": EXAMPLE, "lora_scale": 1.0}
    out = app.h.run(form, request=Request("yellow"))
    assert out["run_msg"] == "", out["run_msg"]
    assert "LoRA yellow.safetensors ×1" in out["status"]
    assert "LoRA yellow.safetensors，强度 ×1 · 生成并捕获用时" in out["status"]  # and in Chinese
    session = app.h.session(Request("yellow"))
    assert session.trace.meta["loras"] == [{"file": str(app.registry.resolve_lora(EXAMPLE)),
                                            "scale": 1.0}]  # fmt: skip
    img = np.asarray(session.image, dtype=float) / 255
    lit = img.max(axis=2) > 0.4
    assert img[..., 0][lit].mean() > 0.5 and img[..., 1][lit].mean() > 0.5  # yellow
    assert _same(before, _weights(app.pipe)) and app.pipe.loras is None  # unfused, bit for bit
    again = app.h.run(run_form("a red circle", STEPS), request=Request("again"))
    assert again["run_msg"] == ""
    first, second = (np.asarray(app.h.session(Request(k)).image) for k in ("plain", "again"))
    assert np.array_equal(first, second)  # nothing of the LoRA in the next run


@pytest.mark.parametrize(
    ("choice", "scale", "message"),
    [
        ("loras/other-base.safetensors", 1.0, "LoRA does not fit this model"),
        ("loras/other-base.safetensors", 1.0, "该 LoRA 与此模型不匹配"),
        ("loras/unknown.safetensors", 1.0, "are not LoRA keys"),
        ("../../etc/passwd", 1.0, "LoRA: model folder"),
        (EXAMPLE, "lots", "LoRA scale='lots': expected a number"),
        (EXAMPLE, 1e9, "LoRA scale=1000000000.0: expected a number"),
        ([f"loras/{i}.safetensors" for i in range(9)], 1.0, "9 LoRAs chosen: at most 8 per run"),
    ],
)
def test_a_refused_lora_is_the_librarys_message_and_changes_nothing(app, choice, scale, message):
    before = _weights(app.pipe)
    form = run_form("a red circle", STEPS) | {"lora_pick": choice, "lora_scale": scale}
    out = app.h.run(form, request=Request("refused"))
    assert list(out) == ["run_msg"] and "⚠" in out["run_msg"]  # the page keeps its work
    assert message.replace("_", "\\_") in out["run_msg"] or message in out["run_msg"], out
    assert _same(before, _weights(app.pipe)) and app.pipe.loras is None


def test_the_u_is_filled_by_what_the_lora_changes(app):
    lora = {"arch_lora": EXAMPLE, "arch_lora_scale": 1.0}
    out = app.h.choose_model(arch_form("demo") | lora)
    assert out["arch_msg"] == "", out["arch_msg"]
    ranking = {row[0]: row for row in out["lora_table"]}
    assert out["lora_table"][0][0] == "up_blocks.1"  # largest first
    assert {b: r[2] for b, r in ranking.items()} == {
        "add_embedding": 2,
        "down_blocks.0": 2,
        "down_blocks.1": 2,
        "mid_block": 2,
        "up_blocks.1": 4,
        "up_blocks.2": 4,
    }  # fmt: skip  (where examples/train_demo_lora.py trained it)
    fill = out["arch_state"]["fill"]
    assert fill["down_blocks.2"] == fill["up_blocks.0"] == 0.0  # resnet-only blocks: unchanged
    assert fill["up_blocks.1"] == pytest.approx(ranking["up_blocks.1"][1], rel=1e-3)
    assert "fill: LoRA" in out["diagram"] and "yellow.safetensors" in out["arch_status"]
    files = app.h.exports({"arch_state": out["arch_state"]})
    assert "LoRA" in Path(files["dl_svg"]).read_text() and files["dl_svg"].endswith("-lora.svg")
    half = app.h.architecture(arch_form("demo", h=96, w=96) | lora | {"arch_lora_scale": 0.5})
    assert half["lora_table"][0][1] == pytest.approx(ranking["up_blocks.1"][1] / 2, rel=1e-3)
    layers = app.h.architecture(arch_form("demo", h=96, w=96, detail="layers") | lora)
    fill = layers["arch_state"]["fill"]  # each layer by the modules inside it
    assert fill["up_blocks.1.attentions.1"] > 0 and fill["up_blocks.1.resnets.0"] == 0
    assert fill["up_blocks.1"] == pytest.approx(
        fill["up_blocks.1.attentions.0"] + fill["up_blocks.1.attentions.1"]
    )
    plain = app.h.architecture(arch_form("demo", h=96, w=96))
    assert plain["lora_table"] == [] and "fill: LoRA" not in plain["diagram"]
    preset = app.h.choose_model(arch_form("sd15") | lora)  # no weights: drawn, not filled
    assert "no LoRA fill" in preset["arch_msg"] and preset["lora_table"] == []
    assert "uv-panel" in preset["diagram"]


def test_emphasis_weights_are_badges_and_maps_are_per_word(app):
    out = app.h.run(run_form("a (red:1.3) circle and a [blue] square", STEPS),
                    request=Request("weights"))  # fmt: skip
    assert out["run_msg"] == "", out["run_msg"]
    assert ("red ×1.3", "word") in out["tokens_view"] and ("blue ×0.91", "word") in out[
        "tokens_view"
    ]
    assert ("circle", "word") in out["tokens_view"]
    captions = [c for _, c in views.tiles_from_html(out["tiles"])]
    assert captions[:3] == ["a (1)", "red ×1.3 (2)", "circle (3)"]
    assert not any(ch in "".join(captions) for ch in "[]:")  # the words, not their syntax
    assert ("2: red ×1.3", 2) in out["token_pick"]["choices"]


def _long_trace(chunks: int, words_per_chunk: int) -> SimpleNamespace:
    """The token layout of a long prompt as the SD pipeline writes it: per 77-token chunk a
    start token, the words, one end token and end-token padding."""
    tokens, words = [], []
    for c in range(chunks):
        chunk_words = [f"w{c}_{i}</w>" for i in range(words_per_chunk)]
        pad = 77 - 2 - words_per_chunk
        tokens += ["<|startoftext|>", *chunk_words, "<|endoftext|>", *["<|endoftext|>"] * pad]
        words += [None, *(w[:-4] for w in chunk_words), None, *[None] * pad]
    return SimpleNamespace(tokens=tokens, words=words, meta={}, attention={})


def test_a_long_prompt_lists_every_chunk_and_maps_a_subset_by_default():
    tr = _long_trace(3, 60)  # 180 words in 231 positions
    shown = views.shown_positions(tr)
    assert len(shown) == 180 + 2 * 3  # every word, each chunk's start and first end token
    assert shown[:2] == [0, 1] and 77 in shown and 77 + 61 in shown and 77 + 62 not in shown
    assert len(views.word_tokens(tr)) == 180
    assert views.default_tokens(tr) == list(range(1, views.DEFAULT_TILES + 1))
    chips = views.highlighted_tokens(tr)
    assert len(chips) == 186 and chips[0] == ("<|startoftext|>", "special")


def test_the_with_and_without_lora_comparison(app):
    from unetviz.app.experiments import lora_compared

    before = _weights(app.pipe)
    call = (app.registry, "demo", "a red circle and a blue square", 0, STEPS, 4.0)
    strip, maps, note = lora_compared(*call, EXAMPLE, 1.0)
    assert strip is not None, note
    assert "without | with LoRA yellow.safetensors ×1" in note
    tiles = views.tiles_from_html(maps)
    assert [c for _, c in tiles][:2] == ["a (1): without | with", "red (2): without | with"]
    assert len(tiles) == 7 and all(img.width > 2 * img.height for img, _ in tiles)
    assert 'class="uv-tiles uv-pairs"' in maps
    assert _same(before, _weights(app.pipe)) and app.pipe.loras is None
    for choice, msg in (("none", "choose a LoRA"), ("loras/unknown.safetensors", "not LoRA keys")):
        strip, maps, note = lora_compared(*call, choice, 1.0)
        assert strip is None and maps == "" and msg in note


def test_an_edits_note_is_a_summary_and_every_parameter_is_apart(app):
    from unetviz.app.experiments import edit_result, edited

    call = (app.registry, "demo", "a red circle", 0, 2, 4.0)
    out = edit_result(*call, "", 0, "all", [], [], "zero", "none", 1, None, "a blue circle")
    assert out["note"].endswith("**Replace** source_prompt=a red circle")
    assert len(out["note"]) < 200 and "self_layers" not in out["note"]
    assert out["edits"][0]["edit"] == "Replace" and "self_layers" in out["edits"][0]
    note = edited(*call, "red", 0.0, "all", [], [], "zero", "all", 1.5)[3]
    assert "**Reweight** token=red, scale=0.0; **ScaleTemb** target=all, scale=1.5" in note

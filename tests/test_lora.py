"""LoRA files fused into unetviz's UNet and the text encoders: parity with diffusers'
load_lora_weights + fuse_lora (PEFT) on tiny SD1- and SDXL-shaped pipelines, in kohya and PEFT
key formats; bit-identical unfuse; refusals that name the keys."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests.lora_support import make_lora  # noqa: E402
from tests.sd_tiny import one_thread, tiny_sd_dir  # noqa: E402
from unetviz.lora import (  # noqa: E402
    block_changes,
    fuse_loras,
    lora_change_table,
    read_lora,
    relative_changes,
)
from unetviz.pipelines.sd import load_sd_pipeline  # noqa: E402
from unetviz.weights import WeightsError  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

SCALE = 0.7


def _unet_out(unet, ctx_dim, xl):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, ctx_dim, generator=g)
    added = None
    if xl:
        added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.ones(1, 6)}
    with torch.no_grad():
        out = unet(sample, torch.tensor(500), ctx, added_cond_kwargs=added)
    return out.sample if hasattr(out, "sample") else out


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_fused_lora_matches_diffusers(tmp_path, kind, fmt):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    plain = load_sd_pipeline(tiny_sd_dir(kind))
    lora = make_lora(tmp_path / f"{fmt}.safetensors", plain.lora_models(), fmt)
    pipe = load_sd_pipeline(tiny_sd_dir(kind), loras=[(lora, SCALE)])
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    ref = cls.from_pretrained(tiny_sd_dir(kind))
    ref.load_lora_weights(str(lora))
    ref.fuse_lora(lora_scale=SCALE)

    xl = kind == "sdxl"
    ctx = int(pipe.unet.config.cross_attention_dim)
    ours, theirs = _unet_out(pipe.unet, ctx, xl), _unet_out(ref.unet, ctx, xl)
    assert not torch.allclose(ours, _unet_out(plain.unet, ctx, xl), atol=1e-3)  # it acts
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    if fmt == "kohya":
        # diffusers 0.42 converts kohya text-encoder keys to a layout transformers 5 no longer
        # loads (it reports them UNEXPECTED and drops them): the text encoders are compared with
        # diffusers fusing the same tensors from a PEFT file, alpha / rank (= 1/2) in the scale
        peft = make_lora(tmp_path / "same.safetensors", plain.lora_models(), "peft")
        ref = cls.from_pretrained(tiny_sd_dir(kind))
        ref.load_lora_weights(str(peft))
        ref.fuse_lora(lora_scale=SCALE / 2)
    ids = torch.tensor([[0, 5, 9, 12, 40, 2]])
    encoders = [ref.text_encoder] + ([ref.text_encoder_2] if xl else [])
    for mine, their in zip(pipe.text_encoders, encoders, strict=True):
        with torch.no_grad():
            a, b = mine(ids, output_hidden_states=True), their(ids, output_hidden_states=True)
        assert torch.allclose(a.hidden_states[-2], b.hidden_states[-2], atol=1e-5, rtol=0)
    assert len(pipe.loras.matches) == len(read_lora(lora).modules) > 10


def test_unfuse_is_bit_identical(tmp_path):
    pipe = load_sd_pipeline(tiny_sd_dir("sdxl"))
    before = {
        part: {k: v.clone() for k, v in m.state_dict().items()}
        for part, m in pipe.lora_models().items()
    }
    a = make_lora(tmp_path / "a.safetensors", pipe.lora_models(), "kohya", seed=1)
    b = make_lora(tmp_path / "b.safetensors", pipe.lora_models(), "peft", seed=2)
    fused = fuse_loras(pipe.lora_models(), [(a, 0.8), (b, -1.3)])
    changed = pipe.lora_models()["unet"].state_dict()
    assert any(not torch.equal(changed[k], before["unet"][k]) for k in changed)
    fused.unfuse()
    for part, model in pipe.lora_models().items():
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[part][k]), (part, k)


def test_pipeline_compare_with_and_without_a_lora(tmp_path):
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    lora = make_lora(tmp_path / "l.safetensors", pipe.lora_models(), "peft")
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cmp = pipe.compare("a red cat", loras=[(lora, 1.0)], seed=3, steps=1)
    assert cmp.base.trace.meta["loras"] == []
    assert cmp.edited.trace.meta["loras"] == [{"file": str(lora), "scale": 1.0}]
    assert cmp.edits[0]["edit"] == "LoRA"
    assert cmp.base.trace.tokens == cmp.edited.trace.tokens
    name = next(iter(cmp.base.trace.attention))
    a, b = cmp.base.trace.attention[name].maps[0], cmp.edited.trace.attention[name].maps[0]
    assert not torch.equal(a, b)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())


def _save(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_refusals_name_the_keys(tmp_path):
    sd1 = load_sd_pipeline(tiny_sd_dir("sd1"))
    xl = load_sd_pipeline(tiny_sd_dir("sdxl"))
    models = sd1.lora_models()
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    cases = [
        (
            {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, "weird": down.clone()},
            "1 of 3 keys are not LoRA keys \\(weird\\)",
        ),
        (
            {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": torch.zeros(32, 3)},
            "rank mismatch in 'down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q'",
        ),
        ({f"{key}.hada_w1_a": down}, "LyCORIS"),
        ({f"{key}.lora_down.weight": down}, "has only .*a LoRA needs both halves"),
        (
            {
                f"{key}.lora_down.weight": down,
                f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(float("nan")),
            },
            "NaN or infinite",
        ),
    ]
    for i, (tensors, message) in enumerate(cases):
        path = _save(tmp_path / f"bad{i}.safetensors", tensors)
        with pytest.raises(WeightsError, match=message):
            fuse_loras(models, [(path, 1.0)])
    # a LoRA made for SDXL on an SD 1.x model: nothing fused, the count of matches named
    xl_lora = make_lora(tmp_path / "xl.safetensors", xl.lora_models(), "peft")
    before = {k: v.clone() for k, v in models["unet"].state_dict().items()}
    with pytest.raises(WeightsError, match=r"does not fit this model \(\d+ of \d+ modules matched"):
        fuse_loras(models, [(xl_lora, 1.0)])
    assert all(torch.equal(v, before[k]) for k, v in models["unet"].state_dict().items())
    with pytest.raises(WeightsError, match="scale nan"):
        fuse_loras(models, [(xl_lora, float("nan"))])
    with pytest.raises(WeightsError, match="no pickles"):
        read_lora(tmp_path / "x.ckpt")


def test_change_table_sums_modules_to_blocks(tmp_path):
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    lora = make_lora(tmp_path / "l.safetensors", {"unet": pipe.unet}, "kohya")
    rows = relative_changes(lora, {"unet": pipe.unet})
    assert rows and all(r["change"] > 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["change"])
    table = lora_change_table(lora, {"unet": pipe.unet})
    assert table == block_changes(rows)
    by_block = {r["block"]: r for r in table}
    assert set(by_block) >= {"down_blocks.0", "down_blocks.1", "up_blocks.0", "mid_block"}
    total = sum(r["change"] for r in rows if r["block"] == "down_blocks.1")
    assert by_block["down_blocks.1"]["change"] == pytest.approx(total)
    doubled = lora_change_table(lora, {"unet": pipe.unet}, scale=2.0)
    assert {r["block"]: r["change"] for r in doubled}["mid_block"] == pytest.approx(
        2 * by_block["mid_block"]["change"]
    )

"""The UNet: parity with diffusers, the seed's shapes on meta, clear errors for bad inputs."""

from __future__ import annotations

import pytest
import torch

import unetviz
from unetviz import UNetConfig, build_unet

diffusers = pytest.importorskip("diffusers")


def narrow(name: str) -> dict:
    """A published config made narrow enough for CPU tests, structure unchanged."""
    data = UNetConfig.preset(name).to_dict()
    n = len(data["block_out_channels"])
    data.update(
        block_out_channels=[32, 64, 64, 64][:n],
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4 if name == "sd15" else [2, 4, 4, 4][:n],
    )
    if name == "sdxl":
        data.update(
            transformer_layers_per_block=[1, 2, 2],
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        )
    return data


def reference(name: str, seed: int = 0):
    data = narrow(name)
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**{k: v for k, v in data.items() if k[0] != "_"})
    return ref.eval()


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_parity_with_diffusers(name, tmp_path):
    ref = reference(name)
    ref.save_pretrained(tmp_path / "unet")
    ours = unetviz.load_unet(tmp_path)
    ref_params = dict(ref.named_parameters())
    our_params = dict(ours.named_parameters())
    assert list(our_params) == list(ref_params)
    assert sum(p.numel() for p in our_params.values()) == sum(
        p.numel() for p in ref_params.values()
    )
    torch.manual_seed(1)
    sample = torch.randn(2, 4, 40, 56)  # non-square latent
    context = torch.randn(2, 7, 32)
    kwargs = {}
    if name == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32),
            "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2),
        }
    for t in (999, 10):
        with torch.no_grad():
            expected = ref(sample, t, context, **kwargs).sample
            got = ours(sample, torch.tensor([t, t]), context, **kwargs)
        assert (expected - got).abs().max().item() <= 1e-4


def test_class_embedding_parity(tmp_path):
    data = narrow("sd15")
    data.update(num_class_embeds=5)
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**{k: v for k, v in data.items() if k[0] != "_"}).eval()
    ref.save_pretrained(tmp_path)
    ours = unetviz.load_unet(tmp_path)
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        diff = ref(sample, 50, context, class_labels=labels).sample - ours(
            sample, 50, context, class_labels=labels
        )
    assert diff.abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="class_labels"):
        ours(sample, 50, context)


def test_seed_shapes_on_meta():
    """Every shape the seed lists for SD1.5 at 512x512 with batch 2, on the meta device."""
    unet = build_unet("sd15", device="meta")
    shapes: dict[str, object] = {}

    def keep(name):
        def hook(module, args, out):
            shapes[name] = out
            if name.endswith("attn2"):
                shapes[name + ".in"] = args[0]

        return hook

    handles = [
        module.register_forward_hook(keep(name))
        for name, module in unet.named_modules()
        if name.count(".") <= 1 or name.endswith(("attn2", "attn2.to_q", "attn2.to_k"))
    ]
    sample = torch.empty(2, 4, 64, 64, device="meta")
    context = torch.empty(2, 77, 768, device="meta")
    out = unet(sample, torch.tensor([981, 981], device="meta"), context)
    for h in handles:
        h.remove()

    def shape(name):
        value = shapes[name]
        return tuple((value[0] if isinstance(value, tuple) else value).shape)

    assert tuple(out.shape) == (2, 4, 64, 64)
    assert shape("time_embedding") == (2, 1280)
    assert shape("conv_in") == (2, 320, 64, 64)
    assert [shape(f"down_blocks.{i}") for i in range(4)] == [
        (2, 320, 32, 32),
        (2, 640, 16, 16),
        (2, 1280, 8, 8),
        (2, 1280, 8, 8),
    ]
    assert shape("mid_block") == (2, 1280, 8, 8)
    assert [shape(f"up_blocks.{i}") for i in range(4)] == [
        (2, 1280, 16, 16),
        (2, 1280, 32, 32),
        (2, 640, 64, 64),
        (2, 320, 64, 64),
    ]
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    attn = unet.get_submodule(first)
    q = shapes[first + ".to_q"].view(2, -1, attn.heads, attn.dim_head).transpose(1, 2)
    k = shapes[first + ".to_k"].view(2, -1, attn.heads, attn.dim_head).transpose(1, 2)
    assert tuple(q.shape) == (2, 8, 4096, 40)
    assert tuple(k.shape) == (2, 8, 77, 40)


def test_meta_build_allocates_nothing():
    """(Its speed is measured in bench/forward.py, not asserted here.)"""
    unet = build_unet("sdxl")
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684


@pytest.mark.parametrize(
    ("sample", "context", "message"),
    [
        ((2, 3, 64, 64), (2, 77, 768), r"sample has shape \(2, 3, 64, 64\): expected \(batch, 4"),
        ((2, 4, 60, 64), (2, 77, 768), "latent height=60 is not a positive multiple of 8"),
        ((2, 4, 64, 64), (2, 77, 1024), r"expected \(2, tokens, 768\)"),
        ((2, 4, 64, 64), (1, 77, 768), r"expected \(2, tokens, 768\)"),
    ],
)
def test_bad_inputs_name_the_expected_shape(sample, context, message):
    unet = build_unet("sd15")
    with pytest.raises(ValueError, match=message):
        unet(torch.empty(sample, device="meta"), 1, torch.empty(context, device="meta"))


def test_sdxl_needs_added_cond_kwargs():
    unet = build_unet("sdxl")
    sample = torch.empty(1, 4, 32, 32, device="meta")
    context = torch.empty(1, 77, 2048, device="meta")
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        unet(sample, 1, context)
    bad = {
        "text_embeds": torch.empty(1, 1280, device="meta"),
        "time_ids": torch.empty(1, 5, device="meta"),
    }
    with pytest.raises(ValueError, match="time_ids"):
        unet(sample, 1, context, added_cond_kwargs=bad)

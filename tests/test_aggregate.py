"""Heatmap aggregation: selection, presets (DAAM, Prompt-to-Prompt) on a demo-shaped UNet,
word lookup, normalisation and errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from unetviz import UNet2DConditionModel, UNetConfig, capture
from unetviz.capture import TraceError
from unetviz.pipelines.demo import demo_unet_config

# the shipped demo model's blocks at a 16x16 latent: cross-attention at 16 (down_blocks.0,
# up_blocks.2), 8 (down_blocks.1, up_blocks.1) and 4 (mid)
DEMO = demo_unet_config(added_conditions=False) | {"sample_size": 16}
TOKENS = ["<bos>", "a", "big", "blue", "square", "<eos>", "<pad>", "<pad>"]
WORDS = [None, "a", "big", "blue", "square", None, None, None]


@pytest.fixture(scope="module")
def trace():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(DEMO)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, DEMO["in_channels"], 16, 16, generator=g)
    ehs = torch.randn(2, 8, DEMO["cross_attention_dim"], generator=g)
    with torch.no_grad(), capture(unet, per_head=True, attention_dtype=torch.float32) as tr:
        for t in (900, 500, 50):
            unet(x, t, ehs)
    tr.tokens, tr.words = list(TOKENS), list(WORDS)
    return tr


def _layer(tr, name, token, steps=None, reduce="mean"):
    rec = tr[name]
    maps = torch.stack(rec.maps)  # (S, heads, h, w, T)
    if steps is not None:
        maps = maps[steps]
    maps = maps.sum(0) if reduce == "sum" else maps.mean(0)
    return maps[..., token]  # (heads, h, w)


def _minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def test_resolutions_and_layers(trace):
    res = {n: r.res for n, r in trace.attention.items()}
    assert sorted(set(res.values())) == [(4, 4), (8, 8), (16, 16)]
    assert len(res) == 7
    maps = trace.layer_maps("blue", layers="up")
    assert set(maps) == {n for n in res if n.startswith("up_blocks")}
    assert all(m.shape == res[n] for n, m in maps.items())
    only8 = trace.layer_maps(3, resolutions=8)
    assert {res[n] for n in only8} == {(8, 8)} and len(only8) == 3
    mid = trace.layer_maps(3, layers="mid_block")
    assert list(mid) == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
    name = "up_blocks.2.attentions.1.transformer_blocks.0.attn2"
    torch.testing.assert_close(
        trace.layer_maps(3, layers=name, steps=[0, 2])[name],
        _layer(trace, name, 3, steps=[0, 2]).mean(0),
    )


def test_daam_approx_preset_on_a_small_model(trace):
    # the earlier DAAM-like recipe (exact DAAM: tests/test_presets_reference.py):
    # latent 16: no map is <= 16/8, three resolutions -> drop the lowest (4x4, the mid block);
    # size 16 * ceil(64 / 16) = 64; bicubic, clamp >= 0 per head, mean over layers x heads,
    # sum over steps
    got = trace.heatmap("square", preset="daam-approx", normalize=None)
    assert got.shape == (64, 64)
    ups = []
    for name, rec in trace.attention.items():
        if rec.res == (4, 4):
            continue
        m = _layer(trace, name, 4, reduce="sum")
        ups.append(F.interpolate(m[:, None], size=(64, 64), mode="bicubic")[:, 0].clamp(min=0))
    want = torch.cat(ups).mean(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.min() >= 0
    # an explicit size wins over the preset's
    assert trace.heatmap("square", preset="daam-approx", size=48).shape == (48, 48)


def test_p2p_preset_on_a_small_model(trace):
    got = trace.heatmap("blue", preset="p2p", normalize="max")
    assert got.shape == (16, 16)
    layers = [n for n, r in trace.attention.items() if r.res == (16, 16) and r.location != "mid"]
    assert len(layers) == 3
    want = torch.stack([_layer(trace, n, 3).mean(0) for n in layers]).mean(0)
    torch.testing.assert_close(got, want / want.max(), atol=1e-5, rtol=1e-5)
    assert trace.heatmap("blue", preset="p2p", size=256).shape == (256, 256)


def test_default_heatmap_word_merge_and_normalize(trace):
    default = trace.heatmap("big")
    assert default.shape == (16, 16) and default.dtype == torch.float32
    assert default.min() == 0 and default.max() == 1
    ups = []
    for name in trace.attention:
        m = _layer(trace, name, [2, 3]).mean(-1)  # every head: a mean over layers x heads
        ups.append(F.interpolate(m[:, None], size=(16, 16), mode="bicubic")[:, 0])
    want = _minmax(torch.cat(ups).mean(0))
    torch.testing.assert_close(trace.heatmap([2, 3]), want, atol=1e-5, rtol=0)
    # a word made of several tokens averages them
    trace.words[3] = "big"
    try:
        torch.testing.assert_close(trace.heatmap("big"), want, atol=1e-5, rtol=0)
    finally:
        trace.words[3] = "blue"
    summed = trace.heatmap("big", normalize="sum")
    assert summed.sum().item() == pytest.approx(1.0, abs=1e-4)
    nearest = trace.heatmap("big", upsample="nearest", resolutions=[4, 8], size=8)
    assert nearest.shape == (8, 8)
    assert trace.heatmap("BIG", steps=slice(0, 2)).shape == (16, 16)
    assert trace.heatmap("big", heads=0, steps=-1).shape == (16, 16)


def test_cached_stacks_are_reused(trace):
    trace.clear_cache()
    trace.heatmap("square")
    n = len(trace.cache)
    assert n == 7
    trace.heatmap("blue", preset="daam-approx")
    trace.heatmap(1, steps=[0])
    assert len(trace.cache) == n


def test_errors_are_specific(trace):
    with pytest.raises(TraceError, match="word 'dog' is not in the prompt"):
        trace.heatmap("dog")
    with pytest.raises(TraceError, match="token index 8 out of range: this trace has 8 tokens"):
        trace.heatmap(8)
    with pytest.raises(TraceError, match="step 9 out of range: this trace has 3 steps"):
        trace.heatmap(1, steps=9)
    with pytest.raises(TraceError, match="heads \\[5\\] out of range"):
        trace.heatmap(1, heads=[5])
    with pytest.raises(TraceError, match="resolutions=32 match no selected layer"):
        trace.heatmap(1, resolutions=32)
    with pytest.raises(TraceError, match="layer 'side' matches no captured"):
        trace.heatmap(1, layers="side")
    with pytest.raises(TraceError, match="preset='sdxl'"):
        trace.heatmap(1, preset="sdxl")
    with pytest.raises(TraceError, match="upsample='cubic'"):
        trace.heatmap(1, upsample="cubic")
    with pytest.raises(TraceError, match="normalize='z'"):
        trace.heatmap(1, normalize="z")
    with pytest.raises(TraceError, match="upsample=None"):
        trace.heatmap(1, upsample=None)


def test_head_selection_needs_per_head_capture():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(DEMO | {"sample_size": 8})).eval()
    x, ehs = (
        torch.randn(1, DEMO["in_channels"], 8, 8),
        torch.randn(1, 8, DEMO["cross_attention_dim"]),
    )
    with torch.no_grad(), capture(unet) as tr:
        unet(x, 10, ehs)
    assert tr.heatmap(0).shape == (8, 8)
    with pytest.raises(TraceError, match="per_head=True"):
        tr.heatmap(0, heads=[0])
    with pytest.raises(TraceError, match="no token labels"):
        tr.heatmap("cat")

"""Shapes, skips and MACs recorded on meta models (no memory): SD1.5 and SDXL."""

from __future__ import annotations

import torch

from unetviz import UNet2DConditionModel, UNetConfig, capture


def _meta_unet(preset: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(UNetConfig.preset(preset))


def test_sd15_meta_shapes_and_skips():
    unet = _meta_unet("sd15")
    x = torch.zeros(2, 4, 64, 64, device="meta")
    ehs = torch.zeros(2, 77, 768, device="meta")
    with capture(unet, detail="layers") as trace:
        unet(x, 10, ehs)
    out = {b.name: b.outputs["sample"] for b in trace.blocks}
    assert out["time_embedding"] == [2, 1280]
    assert out["conv_in"] == [2, 320, 64, 64]
    assert [out[f"down_blocks.{i}"] for i in range(4)] == [
        [2, 320, 32, 32],
        [2, 640, 16, 16],
        [2, 1280, 8, 8],
        [2, 1280, 8, 8],
    ]
    assert out["mid_block"] == [2, 1280, 8, 8]
    assert [out[f"up_blocks.{i}"] for i in range(4)] == [
        [2, 1280, 16, 16],
        [2, 1280, 32, 32],
        [2, 640, 64, 64],
        [2, 320, 64, 64],
    ]
    assert out["conv_out"] == [2, 4, 64, 64]
    assert trace["down_blocks.0"].inputs["temb"] == [2, 1280]
    attn = trace["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert attn.q_shape == [2, 8, 4096, 40] and attn.k_shape == [2, 8, 77, 40]
    assert attn.res == (64, 64) and not attn.captured
    assert len(trace.skips) == 12
    assert [s.index for s in trace.skips] == list(range(12))
    assert trace.skips[0].source == "conv_in" and trace.skips[0].target == "up_blocks.3.resnets.2"
    assert trace.skips[11].source == "down_blocks.3.resnets.1"
    assert trace.skips[11].target == "up_blocks.0.resnets.0"
    assert trace.skips[3].source == "down_blocks.0.downsamplers.0"
    for s in trace.skips:  # resnet input = previous hidden state ++ skip on channels
        rec = trace[s.target]
        assert rec.inputs["skip"] == s.shape
        assert rec.inputs["sample"][2:] == s.shape[2:]
    assert trace["conv_in"].macs == 2 * 320 * 64 * 64 * 4 * 9
    assert trace["conv_in"].params == 320 * 4 * 9 + 320
    assert trace.temb == [] and trace.timesteps == [10.0]


def test_sdxl_meta_nine_skips():
    unet = _meta_unet("sdxl")
    x = torch.zeros(2, 4, 128, 128, device="meta")
    ehs = torch.zeros(2, 77, 2048, device="meta")
    added = {
        "text_embeds": torch.zeros(2, 1280, device="meta"),
        "time_ids": torch.zeros(2, 6, device="meta"),
    }
    with capture(unet, detail="blocks") as trace:
        unet(x, 10, ehs, added_cond_kwargs=added)
    assert len(trace.skips) == 9
    assert [s.shape[1] for s in trace.skips] == [320, 320, 320, 320, 640, 640, 640, 1280, 1280]
    assert trace.skips[1].source == "down_blocks.0.resnets.0"
    assert {b.level for b in trace.blocks} == {"block"}
    assert "add_embedding" in trace.names()

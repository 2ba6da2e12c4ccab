"""UNetConfig: presets equal the published configs, validation names the bad value."""

from __future__ import annotations

import json

import pytest

from unetviz import ConfigError, UNetConfig


def test_presets_match_published_values():
    sd15 = UNetConfig.preset("sd15")
    assert sd15.block_out_channels == (320, 640, 1280, 1280)
    assert sd15.heads == (8, 8, 8, 8)
    assert sd15.cross_attention_dim == 768
    sd21 = UNetConfig.preset("sd21")
    assert sd21.heads == (5, 10, 20, 20) and sd21.use_linear_projection and sd21.upcast_attention
    assert sd21.cross_attention_dim == 1024
    sdxl = UNetConfig.preset("sdxl")
    assert sdxl.transformer_layers == (1, 2, 10)
    assert sdxl.addition_embed_type == "text_time"
    assert sdxl.projection_class_embeddings_input_dim == 2816


def test_round_trip_through_json(tmp_path):
    for name in ("sd15", "sd21", "sdxl"):
        cfg = UNetConfig.preset(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg.to_dict()))
        assert UNetConfig.from_json(path) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["FancyBlock"]}, "FancyBlock"),
        ({"up_block_types": ["UpBlock2D"] * 3}, "up_block_types has 3 entries"),
        ({"block_out_channels": [320, 640, 1280, 1000]}, "block_out_channels[3] = 1000"),
        ({"attention_head_dim": [8, 8]}, "attention_head_dim has 2 entries"),
        ({"attention_head_dim": 7}, "not divisible by 7 attention heads"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift = 'scale_shift'"),
        ({"addition_embed_type": "text_image"}, "addition_embed_type 'text_image'"),
        (
            {"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"},
            "unknown mid block type 'UNetMidBlock2DSimpleCrossAttn'",
        ),
        ({"brand_new_key": 3}, "unknown config key 'brand_new_key'"),
    ],
)
def test_validation_names_the_bad_value(changes, message):
    data = UNetConfig.preset("sd15").to_dict()
    data.update(changes)
    with pytest.raises(ConfigError) as err:
        UNetConfig.from_dict(data)
    assert message in str(err.value)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'sd3'.*sd15"):
        UNetConfig.preset("sd3")
    with pytest.raises(ConfigError, match="not found"):
        UNetConfig.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        UNetConfig.from_json(bad)
    vae = tmp_path / "vae.json"
    vae.write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        UNetConfig.from_json(vae)

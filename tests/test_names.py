"""diffusers name <-> LDM single-file key <-> A1111 label, checked against diffusers' own
single-file converter for every parameter of every preset."""

from __future__ import annotations

import pytest
import torch

from unetviz import UNet2DConditionModel, UNetConfig
from unetviz.names import (
    LDM_PREFIX,
    LOCATIONS,
    UnknownNameError,
    a1111_label,
    block_of,
    diffusers_name,
    forward_rank,
    is_block,
    layer_order,
    ldm_key,
    location_of,
    short_layer,
    unet_names,
)
from unetviz.tokens import SPECIAL_TOKENS, label_at, match_key, token_label


@pytest.mark.parametrize("preset", ["sd15", "sd21", "sdxl"])
def test_every_parameter_matches_diffusers_single_file_converter(preset):
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    cfg = UNetConfig.preset(preset)
    with torch.device("meta"):
        keys = list(UNet2DConditionModel(cfg).state_dict())
    names = unet_names(cfg)
    # an LDM "checkpoint" whose values are the diffusers names we expect back
    ldm = {LDM_PREFIX + names.ldm(k): k for k in keys}
    assert len(ldm) == len(keys)
    converted = single_file.convert_ldm_unet_checkpoint(ldm, cfg.to_dict())
    assert converted == {k: k for k in keys}
    assert all(names.diffusers(LDM_PREFIX + names.ldm(k)) == k for k in keys)


def test_sd15_labels_and_keys():
    cfg = UNetConfig.preset("sd15")
    cases = {
        "conv_in": ("input_blocks.0.0", "IN00"),
        "down_blocks.0.resnets.0": ("input_blocks.1.0", "IN01"),
        "down_blocks.0.downsamplers.0": ("input_blocks.3.0", "IN03"),
        "down_blocks.1.attentions.0": ("input_blocks.4.1", "IN04"),
        "down_blocks.3.resnets.1": ("input_blocks.11.0", "IN11"),
        "mid_block.resnets.0": ("middle_block.0", "M00"),
        "mid_block.attentions.0": ("middle_block.1", "M00"),
        "mid_block.resnets.1": ("middle_block.2", "M00"),
        "up_blocks.0.upsamplers.0": ("output_blocks.2.1", "OUT02"),
        "up_blocks.1.resnets.2": ("output_blocks.5.0", "OUT05"),
        "up_blocks.1.upsamplers.0": ("output_blocks.5.2", "OUT05"),
        "up_blocks.3.attentions.2": ("output_blocks.11.1", "OUT11"),
        "conv_out": ("out.2", None),
        "time_embedding.linear_1": ("time_embed.0", None),
    }
    for name, (key, label) in cases.items():
        assert ldm_key(name, cfg) == key, name
        assert a1111_label(name, cfg) == label, name
        assert diffusers_name(key, cfg) == name
    assert ldm_key("down_blocks.1", cfg) == "input_blocks.4-6"
    assert a1111_label("down_blocks.1", cfg) == "IN04-IN06"
    assert a1111_label("up_blocks.3", cfg) == "OUT09-OUT11"
    assert ldm_key("time_proj", cfg) is None
    # a resnet's inner modules use LDM's names
    assert ldm_key("up_blocks.1.resnets.2.conv_shortcut.weight", cfg) == (
        "output_blocks.5.0.skip_connection.weight"
    )


def test_sdxl_layout_from_config_dict():
    cfg = UNetConfig.preset("sdxl").to_dict()  # a plain dict works too (trace.meta["config"])
    names = unet_names(cfg)
    assert names.n_input_blocks == 9 and names.n_output_blocks == 9
    assert names.ldm("down_blocks.0.resnets.1") == "input_blocks.2.0"
    assert names.ldm("down_blocks.2.attentions.1") == "input_blocks.8.1"
    assert names.a1111("down_blocks.2") == "IN07-IN08"
    assert names.ldm("up_blocks.0.upsamplers.0") == "output_blocks.2.2"
    assert names.ldm("up_blocks.2.resnets.2") == "output_blocks.8.0"
    assert names.ldm("add_embedding.linear_2") == "label_emb.0.2"
    # every block and layer has all three names where they exist
    for name in names.layer_names():
        n = names.names(name)
        assert n.ldm, name
        if name.startswith(("down_blocks", "mid_block", "up_blocks", "conv_in")):
            assert n.a1111, name


def test_unknown_names_are_clear_errors():
    names = unet_names(UNetConfig.preset("sdxl"))
    with pytest.raises(UnknownNameError, match="down_blocks.3"):
        names.ldm("down_blocks.3.resnets.0")
    with pytest.raises(UnknownNameError, match="input_blocks.11"):
        names.diffusers("input_blocks.11.0.in_layers.0.weight")


def test_stage_rules_follow_the_forward_pass_of_a_real_unet():
    """One rule for where a name sits: ``layer_order`` of every module of SD 1.5 (registered
    down, up, mid by diffusers) is the order the forward pass runs the stages."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(UNetConfig.preset("sd15"))
    modules = [n for n, _ in unet.named_modules() if n]
    attn2 = [n for n in modules if n.endswith("attn2")]
    ordered = layer_order(list(reversed(attn2)))
    assert [location_of(n) for n in ordered] == ["down"] * 6 + ["mid"] + ["up"] * 9
    assert ordered[:2] == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2",
    ]
    blocks = layer_order([n for n in modules if is_block(n)])
    assert blocks == [f"down_blocks.{i}" for i in range(4)] + ["mid_block"] + [
        f"up_blocks.{i}" for i in range(4)
    ]
    assert {block_of(n) for n in modules if n.startswith("up_blocks.1.")} == {"up_blocks.1"}
    assert block_of("conv_in") == "conv_in" and location_of("conv_out") == "conv_out"
    ranks = [forward_rank(n) for n in ("time_embedding", "conv_in", "down", "mid", "up_blocks.3")]
    assert ranks == [0, 0, 1, 2, 3] and forward_rank("conv_out") == 4 and forward_rank("") == -1
    assert layer_order(["all", "up", "down", "mid"]) == ["down", "mid", "up", "all"]
    assert LOCATIONS == ("down", "mid", "up") and not is_block("down_blocks")
    assert short_layer("up_blocks.1.attentions.2.transformer_blocks.0.attn2") == "up1.a2.t0"
    assert short_layer("mid_block.attentions.0.transformer_blocks.0.attn2") == "mid.a0.t0"


def test_token_labels_have_one_rule():
    assert token_label("cat</w>") == "cat" and match_key("▁Cat</w>") == "cat"
    assert label_at(["a", "cat</w>"], 1) == "cat" and label_at(["a"], 3) == "#3"
    assert label_at(None, 0, "{i}") == "0"
    assert {"<|endoftext|>", "<eos>", "<pad>"} <= SPECIAL_TOKENS and "cat" not in SPECIAL_TOKENS

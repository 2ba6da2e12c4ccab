"""diffusers -> original (LDM) key layout, spelled out by hand: the tests write single-file
checkpoints with it (independent of unetviz's converter; tests/test_single_file.py checks it
against diffusers' own converters) and scripts/make_full_size.py writes full-size ones."""

from __future__ import annotations

import torch

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def unet_to_ldm(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys."""
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(n):
        for j in range(lpb):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * (lpb + 1) + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = (
                f"input_blocks.{i * (lpb + 1) + j + 1}.1."
            )
        for j in range(lpb + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (lpb + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (lpb + 1) + j}.1."
        if i < n - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (
                f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
            )
            slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = (
                f"output_blocks.{(lpb + 1) * i + lpb}.{slot}."
            )
    out = {}
    for key, value in state.items():
        new = key
        if "resnets" in key:
            for hf, ldm in _RESNET:
                new = new.replace(f".{hf}.", f".{ldm}.")
        for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if new.startswith(hf):
                new = ldm + new[len(hf) :]
                break
        else:
            raise AssertionError(f"no LDM name for {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    """diffusers AutoencoderKL state dict -> ``first_stage_model.*`` keys."""
    n = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for i in range(n):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(
                f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."
            )
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            new = new.replace(
                f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."
            )
        for j in (0, 1):
            new = new.replace(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.")
        attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for hf, ldm in attn.items():
            if f"mid_block.attentions.0.{hf}." in new:
                new = new.replace(f"mid_block.attentions.0.{hf}.", f"mid.attn_1.{ldm}.")
                if hf != "group_norm" and value.ndim == 2:
                    value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_openclip(state: dict, prefix: str) -> dict:
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP text-tower keys."""
    out = {}
    layers = sorted({int(k.split(".")[3]) for k in state if ".encoder.layers." in k})
    for i in layers:
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            for hf, oc in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[dst + f"{oc}.{kind}"] = state[src + f"{hf}.{kind}"]
    out[prefix + "token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = state["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = state["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    out[prefix + "logit_scale"] = torch.tensor(4.6)
    return out

"""Full-size Stable Diffusion checkpoints with random weights, to walk a user's path at real
sizes without downloading anything.

    python scripts/make_full_size.py /work/fullsize            # both families
    python scripts/make_full_size.py /work/fullsize --only sd15

writes, in float16:

- ``sd15/``: a diffusers Stable Diffusion 1.5 folder (unet, vae, text_encoder = CLIP ViT-L/14
  text tower, tokenizer, scheduler), ~2.1 GB;
- ``sd15.safetensors``: the same weights as an A1111 single file (original LDM keys:
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``);
- ``sdxl/``: a diffusers SDXL base folder (text_encoder = CLIP ViT-L, text_encoder_2 =
  OpenCLIP bigG with projection), ~6.9 GB;
- ``sdxl.safetensors``: the same as a single file (``conditioner.embedders.{0,1}.*``).

The architectures are the published ones (the UNet configs of tests/data/unet_configs, the
VAE and scheduler configs of unetviz.single_file, the text towers' published sizes); the
weights are random (unit-variance activations: fan-in scaled normals, norms at 1/0). The
tokenizer is a small real CLIP BPE vocabulary written here (the real 49,408-word one is not on
this machine): prompts of its words tokenize as CLIP does, into the full-size embedding table.
Peak memory is about one copy of the float16 weights: modules are built on the meta device,
materialised in float16, and tensors are streamed to disk one at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("a", "photo", "of", "cat", "dog", "on", "red", "blue", "sofa", "the", "moon", "tree")
_SF_DTYPES = {"torch.float16": "F16", "torch.float32": "F32", "torch.bfloat16": "BF16"}


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict | None = None) -> int:
    """Stream ``tensors`` into a safetensors file one at a time (no second copy in memory);
    written to a temporary name and renamed, so a half-written file never has the final name."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        header[key] = {
            "dtype": _SF_DTYPES[str(t.dtype)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for t in tensors.values():
            t = t.contiguous()
            fh.write(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    os.replace(tmp, path)
    return path.stat().st_size


def randomize(module: Any, seed: int) -> Any:
    """Materialise a meta-built ``module`` in float16 on the CPU with random weights: fan-in
    scaled normals for weights, zeros for biases, 1 for norm scales, arange for position ids."""
    import torch

    module = module.to(torch.float16).to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim == 1:
                is_scale = leaf == "weight"
                p.fill_(1.0 if is_scale else 0.0)
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else p.shape[0]
                std = 1.0 / math.sqrt(fan_in) if "embedding" not in name else 0.02
                for chunk in p.view(p.shape[0], -1).split(256):  # small fp32 scratch
                    chunk.copy_(torch.randn(chunk.shape, generator=g) * std)
        for name, b in module.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1]).expand(b.shape))
    return module.eval()


#: ``tiny=True``: the same architectures and key layouts at a width small enough for the test
#: suite (channels / 10, text towers 64 wide and 2 deep).
TINY_UNET = {
    "sd15": {"block_out_channels": [32, 64, 128, 128], "cross_attention_dim": 64},
    "sdxl_base": {
        "block_out_channels": [32, 64, 128],
        "attention_head_dim": [1, 2, 4],
        "transformer_layers_per_block": [1, 1, 2],
        "cross_attention_dim": 128,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 64 + 6 * 8,
    },
}


def _unet_config(name: str, tiny: bool = False) -> dict[str, Any]:
    data = json.loads((ROOT / "tests" / "data" / "unet_configs" / f"{name}.json").read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return {**data, **TINY_UNET[name]} if tiny else data


def _clip(kind: str, eos: int, tiny: bool = False) -> Any:
    """CLIP ViT-L/14's text tower (SD 1.x, SDXL's first) or OpenCLIP bigG's (SDXL's second)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    big = kind == "bigG"
    width = (64 if big else 64) if tiny else (1280 if big else 768)
    cfg = CLIPTextConfig(
        vocab_size=eos + 1 if tiny else 49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2 if tiny else (32 if big else 12),
        num_attention_heads=4 if tiny else (20 if big else 12),
        max_position_embeddings=77,
        hidden_act="gelu" if big else "quick_gelu",
        projection_dim=width,
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
        torch_dtype="float16",
    )
    with torch.device("meta"):
        return (CLIPTextModelWithProjection if big else CLIPTextModel)(cfg)


def hub_state(module: Any) -> dict[str, Any]:
    """``module``'s tensors under the names its published checkpoints use: a transformers CLIP
    text model's are ``text_model.*`` (and ``text_projection.*``) there, whatever the installed
    transformers calls them in memory."""
    state = module.state_dict()
    if hasattr(module, "save_config"):  # diffusers: names are the checkpoint's
        return state
    return {
        k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
        for k, v in state.items()
    }


def _save_part(folder: Path, sub: str, module: Any, weights_name: str) -> None:
    part = folder / sub
    part.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_config"):  # diffusers
        module.save_config(part)
    else:  # transformers
        module.config.save_pretrained(part)
    write_safetensors(part / weights_name, hub_state(module))


def _tokenizer(folder: Path, sub: str) -> int:
    from tests.sd_tiny import write_tiny_clip_tokenizer

    return write_tiny_clip_tokenizer(folder / sub, WORDS) - 1  # eos: the last id


def _scheduler(folder: Path, family: str) -> None:
    from unetviz.single_file import SCHEDULER_CONFIG, SCHEDULER_FAMILY

    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    cfg = {**SCHEDULER_CONFIG, **SCHEDULER_FAMILY[family]}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2))


def _vae(family: str, seed: int, tiny: bool = False) -> Any:
    import torch
    from diffusers import AutoencoderKL

    from unetviz.single_file import VAE_CONFIG, VAE_FAMILY

    cfg = {k: v for k, v in {**VAE_CONFIG, **VAE_FAMILY[family]}.items() if k != "act_fn"}
    if tiny:
        cfg.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1, norm_num_groups=8)
    with torch.device("meta"):
        vae = AutoencoderKL(**cfg)
    return randomize(vae, seed)


def _unet(name: str, seed: int, tiny: bool = False) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_unet_config(name, tiny))
    return randomize(unet, seed)


def make(out: Path, family: str, tiny: bool = False) -> Path:
    """Write ``out/<family>/`` (diffusers) and ``out/<family>.safetensors`` (single file);
    returns the single file's path."""
    from tests.ldm_support import clip_to_openclip, unet_to_ldm, vae_to_ldm

    t0 = time.time()
    folder = out / family
    folder.mkdir(parents=True, exist_ok=True)
    eos = _tokenizer(folder, "tokenizer")
    unet_name = "sd15" if family == "sd15" else "sdxl_base"
    unet = _unet(unet_name, 0, tiny)
    vae = _vae("sd1" if family == "sd15" else "sdxl", 1, tiny)
    te = randomize(_clip("L", eos, tiny), 2)
    index: dict[str, Any] = {
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    _save_part(folder, "unet", unet, "diffusion_pytorch_model.safetensors")
    _save_part(folder, "vae", vae, "diffusion_pytorch_model.safetensors")
    _save_part(folder, "text_encoder", te, "model.safetensors")
    ldm = {
        **unet_to_ldm(unet.state_dict(), _unet_config(unet_name, tiny)),
        **vae_to_ldm(vae.state_dict(), dict(vae.config)),
    }
    if family == "sd15":
        _scheduler(folder, "sd1")
        index.update(
            _class_name="StableDiffusionPipeline",
            scheduler=["diffusers", "DDIMScheduler"],
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
        ldm.update({"cond_stage_model.transformer." + k: v for k, v in hub_state(te).items()})
    else:
        eos2 = _tokenizer(folder, "tokenizer_2")
        te2 = randomize(_clip("bigG", eos2, tiny), 3)
        _save_part(folder, "text_encoder_2", te2, "model.safetensors")
        _scheduler(folder, "sdxl")
        index.update(
            _class_name="StableDiffusionXLPipeline",
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            scheduler=["diffusers", "EulerDiscreteScheduler"],
            force_zeros_for_empty_prompt=True,
        )
        ldm.update(
            {"conditioner.embedders.0.transformer." + k: v for k, v in hub_state(te).items()}
        )
        ldm.update(clip_to_openclip(hub_state(te2), "conditioner.embedders.1.model."))
        ldm = {k: v.half() if v.is_floating_point() else v for k, v in ldm.items()}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    size = write_safetensors(out / f"{family}.safetensors", ldm)
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(
        f"{family}: {folder} {folder_bytes / 2**30:.2f} GiB, {out / family}.safetensors "
        f"{size / 2**30:.2f} GiB ({len(ldm)} tensors), {time.time() - t0:.0f} s"
    )
    return out / f"{family}.safetensors"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (outside the repository)")
    p.add_argument("--only", choices=["sd15", "sdxl"], action="append")
    args = p.parse_args(argv)
    if args.out.resolve().is_relative_to(ROOT):
        p.error(f"{args.out} is inside the repository: write full-size files elsewhere")
    for family in args.only or ["sd15", "sdxl"]:
        make(args.out, family)


if __name__ == "__main__":
    main()

"""LoRA files made here, in kohya and PEFT key formats, for the tiny SD1/SDXL models and the demo.

``make_lora`` writes random low-rank pairs for a model's attention projections, feed-forward,
``proj_in`` and the resnets' 3x3 ``conv1`` (conv LoRAs), plus the text encoders' attention and
MLP; kohya files carry ``alpha`` (= rank / 2, so the alpha / rank factor is exercised) and name
SDXL UNet modules by their LDM names, as kohya's SDXL trainer does. This module holds no tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

UNET_TARGETS = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "ff.net.2", "proj_in")
UNET_CONV = ("resnets.0.conv1",)
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")


def lora_targets(part: str, model: nn.Module) -> list[str]:
    """The module names a test LoRA changes in ``model``."""
    ends = UNET_TARGETS + UNET_CONV if part == "unet" else TEXT_TARGETS
    return [
        name
        for name, m in model.named_modules()
        if name.endswith(ends) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]


def make_lora(
    path: Path, models: dict[str, nn.Module], fmt: str, rank: int = 4, seed: int = 0
) -> Path:
    """Write a LoRA for ``models`` ({"unet": ..., "text_encoder": ..., "text_encoder_2": ...})
    in ``fmt`` ("kohya" or "peft") to ``path``."""
    from safetensors.torch import save_file

    from unetviz.names import ldm_key

    g = torch.Generator().manual_seed(seed)
    xl = "text_encoder_2" in models
    out: dict[str, torch.Tensor] = {}
    for part, model in models.items():
        for name in lora_targets(part, model):
            w = dict(model.named_modules())[name].weight
            if w.ndim == 4:
                down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.1
                up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.1
            else:
                down = torch.randn(rank, w.shape[1], generator=g) * 0.1
                up = torch.randn(w.shape[0], rank, generator=g) * 0.1
            if fmt == "kohya":
                if part == "unet":
                    written = name
                    if xl:
                        written = ldm_key(name + ".weight", model.config).removesuffix(".weight")
                    prefix = "lora_unet_"
                else:
                    prefix = {"text_encoder": "lora_te1_" if xl else "lora_te_"}.get(
                        part, "lora_te2_"
                    )
                    written = name
                key = prefix + written.replace(".", "_")
                out[f"{key}.lora_down.weight"] = down
                out[f"{key}.lora_up.weight"] = up
                out[f"{key}.alpha"] = torch.tensor(rank / 2)
            else:
                out[f"{part}.{name}.lora_A.weight"] = down
                out[f"{part}.{name}.lora_B.weight"] = up
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path

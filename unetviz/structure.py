"""The structure of a UNet without weights: one forward on the ``meta`` device under capture.

Shared by ``unetviz diagram`` / ``summary`` and the app's architecture tab, so both feed the
model the same inputs (text context, SDXL added conditions, class labels).
"""

from __future__ import annotations

from typing import Any

import torch

from .capture import Trace, capture
from .config import UNetConfig
from .weights import build_unet


def meta_trace(
    config: UNetConfig | dict,
    latent_height: int,
    latent_width: int,
    batch: int = 2,
    tokens: int = 77,
    detail: str = "layers",
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Capture one meta forward of ``config`` on a (batch, C, latent_height, latent_width)
    sample with ``tokens`` context tokens: every shape, parameter and MAC count, no memory."""
    unet = build_unet(config, device="meta")
    cfg = unet.config
    device = torch.device("meta")
    sample = torch.zeros(batch, cfg.in_channels, latent_height, latent_width, device=device)
    context = torch.zeros(batch, tokens, cfg.cross_attention_dim, device=device)
    kwargs: dict[str, Any] = {}
    if cfg.addition_embed_type == "text_time":
        n_time = 6  # original size, crop top-left, target size
        text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, text_dim, device=device),
            "time_ids": torch.zeros(batch, n_time, device=device),
        }
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        if cfg.class_embed_type == "projection":
            labels = torch.zeros(batch, cfg.projection_class_embeddings_input_dim, device=device)
        else:
            labels = torch.zeros(batch, dtype=torch.long, device=device)
        kwargs["class_labels"] = labels
    with (
        torch.no_grad(),
        capture(unet, detail=detail, attention=False, temb=False, meta=meta) as tr,
    ):
        unet(sample, torch.tensor(999.0, device=device), context, **kwargs)
    return tr

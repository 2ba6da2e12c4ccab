"""Token grounding loss (TokenCompose, Wang et al. CVPR 2024): the cross-attention of each
content word should fall on the object it names.

The training scenes come with exact object masks, so for every colour, shape, size and position
word of a (not dropped) caption we know where its object is. At every cross-attention layer of
resolution 24 or 12 (the maps DAAM-style heatmaps are built from), the share of the word's
attention (mean over heads) that falls outside its object's mask is penalised as TokenCompose's
token loss ``(1 - sum(A * M) / sum(A))**2``. It gives the text path a direct gradient towards
per-word localisation, and - because the object is invisible at high noise - it pushes queries
to carry position, which the plain denoising loss learned too slowly for position words.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from ..capture.attention import softmax_scores
from .data import COLOURS, POSITIONS, SHAPES, SIZES, Scene

GROUNDED = frozenset((*COLOURS, *SHAPES, *SIZES, *POSITIONS))
MASK_RES = 24  # masks are kept at the latent resolution; 12 x 12 is pooled from them


def token_objects(caption: str, max_tokens: int) -> list[int]:
    """For each token position (``<bos>`` first) the index of the object a grounded word names
    in the caption grammar of ``data.py`` ("... and ..." separates objects); -1 elsewhere."""
    out = [-1] * max_tokens
    obj = 0
    for i, word in enumerate(caption.split()):
        if word == "and":
            obj += 1
        elif word in GROUNDED and i + 1 < max_tokens:
            out[i + 1] = obj
    return out


def scene_masks(scenes: list[Scene], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(object masks (N, 2, 24, 24) float16 in [0, 1] area-pooled from the exact masks,
    token -> object indices (N, max_tokens) int8)."""
    masks = torch.zeros(len(scenes), 2, MASK_RES, MASK_RES)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            full = torch.from_numpy(obj.mask).float()[None, None]
            masks[i, j] = F.adaptive_avg_pool2d(full, MASK_RES)[0, 0]
    index = torch.tensor([token_objects(s.caption, max_tokens) for s in scenes], dtype=torch.int8)
    return masks.half(), index


def cross_attentions(unet: nn.Module) -> list[nn.Module]:
    """The UNet's cross-attention modules (``attn2`` of every transformer block)."""
    return [m for name, m in unet.named_modules() if name.endswith("attn2")]


@contextmanager
def recording(unet: nn.Module, resolutions: tuple[int, ...] = (24, 12)) -> Iterator[list]:
    """Record differentiable cross-attention probabilities ``(B, heads, r*r, T)`` of the layers
    at ``resolutions`` during the forwards inside the block (queries and keys recomputed from
    the module's inputs: the model itself keeps its fused SDPA)."""
    probs: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        hidden, context = args[0], args[1]
        n = hidden.shape[1]
        if round(n**0.5) not in resolutions:
            return
        probs.append(softmax_scores(module, module.to_q(hidden), module.to_k(context)))

    handles = [m.register_forward_hook(hook) for m in cross_attentions(unet)]
    try:
        yield probs
    finally:
        for handle in handles:
            handle.remove()


def grounding_loss(
    probs: list[torch.Tensor], masks: torch.Tensor, index: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """TokenCompose's token loss averaged over layers and grounded tokens of the captions
    ``keep`` marks (dropped, unconditional captions have none). ``masks`` (B, 2, 24, 24),
    ``index`` (B, T) object per token (-1: not grounded)."""
    idx = index.long().clone()
    idx[~keep] = -1
    b_idx, t_idx = torch.nonzero(idx >= 0, as_tuple=True)
    if len(b_idx) == 0 or not probs:
        return torch.zeros(())
    obj = idx[b_idx, t_idx]
    losses = []
    for p in probs:
        res = round(p.shape[2] ** 0.5)
        m = masks.float() if res == MASK_RES else F.adaptive_avg_pool2d(masks.float(), res)
        m = m.flatten(2)[b_idx, obj]  # (K, r*r)
        a = p.mean(1)[b_idx, :, t_idx]  # (K, r*r): the word's map, mean over heads
        inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2).mean())
    return torch.stack(losses).mean()

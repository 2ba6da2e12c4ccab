"""ResnetBlock2D: two 3x3 convs with the time embedding added between them."""

from __future__ import annotations

import torch
from torch import nn


class ResnetBlock2D(nn.Module):
    """norm1 -> SiLU -> conv1 -> (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2, + input.

    The temb contribution lives exactly at the ``+``: ``time_emb_proj``'s output is broadcast
    over the conv1 feature map. The capture engine measures both by hooking those two modules.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-5,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        temb = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        hidden = _add(hidden, temb)
        hidden = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden))))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        hidden = _add(hidden, input_tensor)
        if self.output_scale_factor != 1.0:
            hidden = hidden / self.output_scale_factor
        return hidden


def _add(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, in place when ``fresh`` is a temporary only this forward owns.

    Same bits as ``+`` (addition commutes exactly); saves an allocation per residual. Not
    in place under autograd, where the tensor may be saved for backward.
    """
    if torch.is_grad_enabled() and (fresh.requires_grad or other.requires_grad):
        return fresh + other
    return fresh.add_(other)

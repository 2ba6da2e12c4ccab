"""Downsample2D (strided 3x3 conv) and Upsample2D (nearest x2, then 3x3 conv)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Downsample2D(nn.Module):
    """Halves H and W with a stride-2 3x3 conv (``padding`` 0: diffusers pads right and bottom
    by one first, as the original LDM code did)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Doubles H and W with nearest interpolation, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on some backends
            hidden_states = hidden_states.float()
        hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return self.conv(hidden_states.to(dtype))

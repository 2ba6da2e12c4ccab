"""Transformer2DModel: a feature map flattened to tokens, BasicTransformerBlocks, folded back."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, FeedForward
from .resnet import _add


class BasicTransformerBlock(nn.Module):
    """LayerNorm -> attn1 (self) -> LayerNorm -> attn2 (cross) -> LayerNorm -> GEGLU FF, each
    with a residual."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        upcast_attention: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, upcast_attention)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = _add(self.attn1(self.norm1(hidden_states)), hidden_states)
        hidden_states = _add(
            self.attn2(self.norm2(hidden_states), encoder_hidden_states), hidden_states
        )
        return _add(self.ff(self.norm3(hidden_states)), hidden_states)


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in -> (B, H*W, C) tokens -> blocks -> proj_out -> + input.

    ``use_linear_projection`` (SD 2.x, SDXL) makes proj_in/proj_out Linear layers applied after
    flattening; SD 1.x uses 1x1 convs before flattening. Same maths, different weight shapes.
    """

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        num_layers: int = 1,
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        layer = nn.Linear if use_linear_projection else lambda i, o: nn.Conv2d(i, o, kernel_size=1)
        self.proj_in = layer(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim,
                upcast_attention,
            )
            for _ in range(num_layers)
        )
        self.proj_out = layer(inner, in_channels)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states.permute(0, 2, 3, 1).reshape(b, h * w, -1))
        else:
            hidden_states = self.proj_in(hidden_states)
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states)
        if self.use_linear_projection:
            hidden_states = self.proj_out(hidden_states)
            hidden_states = hidden_states.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        else:
            hidden_states = hidden_states.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            hidden_states = self.proj_out(hidden_states)
        return _add(hidden_states, residual)

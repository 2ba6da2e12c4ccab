"""Attention (self and cross) with PyTorch's scaled-dot-product attention, and GEGLU."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention: queries from the latent; keys/values from the latent (attn1, self)
    or from ``encoder_hidden_states`` (attn2, cross: the prompt tokens).

    ``scale`` (``dim_head ** -0.5``) is the softmax temperature of ``softmax(Q K^T * scale)``.
    ``forward`` does not read it (scaled-dot-product attention applies the same default); it is
    the contract for code that recomputes the probabilities from ``to_q`` / ``to_k`` outputs,
    as diffusers' ``Attention.scale`` is: capture's attention probes and the demo's training and
    evaluation read ``module.scale``, on this model and on diffusers' alike.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5  # read by probability recomputation, not by forward
        self.is_cross_attention = cross_attention_dim is not None
        self.upcast_attention = upcast_attention
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        # hidden_states (b, n, query_dim): n = H*W latent pixels; context (b, t, context_dim):
        # t = n for self-attention, the prompt's tokens (77 in SD) for cross-attention
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b = hidden_states.shape[0]
        # split the inner width into heads: (b, n|t, heads * dim_head) -> (b, heads, n|t, dim_head)
        q = self.to_q(hidden_states).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(context).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        dtype = q.dtype
        if self.upcast_attention and dtype in (torch.float16, torch.bfloat16):
            q, k = q.float(), k.float()  # SD 2.x overflows in half precision without this
            v = v.float()
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        # (b, heads, n, dim_head) -> (b, n, heads * dim_head): the heads side by side again
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head).to(dtype)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Linear to twice the width; one half gates the other through GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU (dim -> 4 dim) -> dropout -> Linear (4 dim -> dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states

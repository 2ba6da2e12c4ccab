"""The UNet's stages: down blocks push skip tensors, up blocks pop and concatenate them."""

from __future__ import annotations

import torch
from torch import nn

from .resnet import ResnetBlock2D
from .sampling import Downsample2D, Upsample2D
from .transformer import Transformer2DModel


class _Common:
    """Keyword arguments every block passes to its resnets and transformers."""

    def __init__(self, temb_channels, groups, eps, heads, cross_attention_dim, linear, upcast):
        self.temb_channels = temb_channels
        self.groups = groups
        self.eps = eps
        self.heads = heads
        self.cross_attention_dim = cross_attention_dim
        self.linear = linear
        self.upcast = upcast

    def resnet(self, cin: int, cout: int, scale: float = 1.0) -> ResnetBlock2D:
        return ResnetBlock2D(cin, cout, self.temb_channels, self.groups, self.eps, scale)

    def transformer(self, channels: int, layers: int) -> Transformer2DModel:
        return Transformer2DModel(
            self.heads,
            channels // self.heads,
            channels,
            num_layers=layers,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.groups,
            use_linear_projection=self.linear,
            upcast_attention=self.upcast,
        )


class DownBlock2D(nn.Module):
    """Resnets, then an optional Downsample2D; every output is pushed as a skip tensor."""

    def __init__(self, cin, cout, num_layers, common: _Common, add_downsample, padding=1, **_):
        super().__init__()
        self.resnets = nn.ModuleList(
            common.resnet(cin if i == 0 else cout, cout) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding)]) if add_downsample else None

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, **_
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class CrossAttnDownBlock2D(nn.Module):
    """[ResnetBlock2D, Transformer2DModel] x num_layers, then an optional Downsample2D."""

    def __init__(
        self, cin, cout, num_layers, common: _Common, add_downsample, transformer_layers, padding=1
    ):
        super().__init__()
        # attentions registered first, as diffusers does, so state_dict order matches
        self.attentions = nn.ModuleList(
            common.transformer(cout, transformer_layers) for _ in range(num_layers)
        )
        self.resnets = nn.ModuleList(
            common.resnet(cin if i == 0 else cout, cout) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding)]) if add_downsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResnetBlock2D, then [Transformer2DModel, ResnetBlock2D] at the lowest resolution."""

    def __init__(self, channels, common: _Common, transformer_layers, output_scale_factor=1.0):
        super().__init__()
        self.attentions = nn.ModuleList([common.transformer(channels, transformer_layers)])
        self.resnets = nn.ModuleList(
            common.resnet(channels, channels, output_scale_factor) for _ in range(2)
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


def _up_resnets(cin, cout, prev, num_layers, common: _Common) -> nn.ModuleList:
    # Resnet i sees the previous output concatenated with the skip it pops: the last skip of
    # each up block comes from one level higher in the down path (``cin`` channels).
    return nn.ModuleList(
        common.resnet(
            (prev if i == 0 else cout) + (cin if i == num_layers - 1 else cout),
            cout,
        )
        for i in range(num_layers)
    )


class UpBlock2D(nn.Module):
    """Resnets that each concatenate one popped skip tensor, then an optional Upsample2D."""

    def __init__(self, cin, cout, prev, num_layers, common: _Common, add_upsample, **_):
        super().__init__()
        self.resnets = _up_resnets(cin, cout, prev, num_layers, common)
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
        **_,
    ) -> torch.Tensor:
        for resnet in self.resnets:
            skip, res_hidden_states_tuple = (
                res_hidden_states_tuple[-1],
                res_hidden_states_tuple[:-1],
            )
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(nn.Module):
    """[concat skip, ResnetBlock2D, Transformer2DModel] x num_layers, then an optional
    Upsample2D."""

    def __init__(
        self, cin, cout, prev, num_layers, common: _Common, add_upsample, transformer_layers
    ):
        super().__init__()
        self.attentions = nn.ModuleList(
            common.transformer(cout, transformer_layers) for _ in range(num_layers)
        )
        self.resnets = _up_resnets(cin, cout, prev, num_layers, common)
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            skip, res_hidden_states_tuple = (
                res_hidden_states_tuple[-1],
                res_hidden_states_tuple[:-1],
            )
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states

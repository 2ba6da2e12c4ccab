"""The UNet's stages: down blocks push skip tensors, up blocks pop and concatenate them.

Every block is built from the config and its ``level`` (the index into ``block_out_channels``
and the per-block lists: heads, layers, transformer layers); up blocks mirror the down block at
their level. Shapes in comments are SD 1.5 at 512x512 with classifier-free guidance (batch 2):
the first down block, level 0, runs at 320 channels on a 64x64 latent.

Down blocks share one call, ``block(hidden_states, temb, encoder_hidden_states=None) ->
(hidden_states, skips)``; up blocks share ``block(hidden_states, res_hidden_states_tuple, temb,
encoder_hidden_states=None) -> hidden_states`` (diffusers' argument names, which the capture
engine reads). ``has_cross_attention`` says whether a block reads the text.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import UNetConfig
from .resnet import ResnetBlock2D
from .sampling import Downsample2D, Upsample2D
from .transformer import Transformer2DModel


def resnet(
    config: UNetConfig, in_channels: int, out_channels: int, output_scale_factor: float = 1.0
) -> ResnetBlock2D:
    """A ResnetBlock2D with the config's time-embedding width and GroupNorm settings."""
    return ResnetBlock2D(
        in_channels,
        out_channels,
        config.time_embed_dim,
        config.norm_num_groups,
        config.norm_eps,
        output_scale_factor,
    )


def transformer(config: UNetConfig, level: int, channels: int, depth: int) -> Transformer2DModel:
    """A Transformer2DModel of ``level``, ``depth`` BasicTransformerBlocks deep: its heads
    (diffusers' ``attention_head_dim`` quirk included, see :attr:`UNetConfig.heads`)."""
    heads = config.heads[level]
    return Transformer2DModel(
        heads,
        channels // heads,
        channels,
        num_layers=depth,
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=config.norm_num_groups,
        use_linear_projection=config.use_linear_projection,
        upcast_attention=bool(config.upcast_attention),
    )


def _down_resnets(
    config: UNetConfig, level: int, in_channels: int, out_channels: int
) -> nn.ModuleList:
    """``layers[level]`` resnets; the first changes the width from ``in_channels``."""
    return nn.ModuleList(
        resnet(config, in_channels if i == 0 else out_channels, out_channels)
        for i in range(config.layers[level])
    )


def _downsamplers(config: UNetConfig, channels: int, add: bool) -> nn.ModuleList | None:
    """diffusers keeps its one Downsample2D in a list (``downsamplers.0``): so do we."""
    return nn.ModuleList([Downsample2D(channels, config.downsample_padding)]) if add else None


def _upsamplers(channels: int, add: bool) -> nn.ModuleList | None:
    return nn.ModuleList([Upsample2D(channels)]) if add else None


def _downsample(
    downsamplers: nn.ModuleList | None,
    hidden_states: torch.Tensor,
    skips: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Halve H and W (SD 1.5 level 0: (2,320,64,64) -> (2,320,32,32)) and push the result as
    one more skip; the last level has no downsampler."""
    if downsamplers is not None:
        hidden_states = downsamplers[0](hidden_states)
        skips += (hidden_states,)
    return hidden_states, skips


def _upsample(upsamplers: nn.ModuleList | None, hidden_states: torch.Tensor) -> torch.Tensor:
    """Double H and W (nearest, then a 3x3 conv); the last up block has no upsampler."""
    return upsamplers[0](hidden_states) if upsamplers is not None else hidden_states


class DownBlock2D(nn.Module):
    """Resnets, then an optional Downsample2D; every output is pushed as a skip tensor.
    SD 1.5's last down block: (2,1280,8,8) -> 2 resnets -> (2,1280,8,8), no downsampler."""

    has_cross_attention = False

    def __init__(
        self,
        config: UNetConfig,
        level: int,
        in_channels: int,
        out_channels: int,
        add_downsample: bool,
    ):
        super().__init__()
        self.resnets = _down_resnets(config, level, in_channels, out_channels)
        self.downsamplers = _downsamplers(config, out_channels, add_downsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,  # unused: no attention here
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for block in self.resnets:
            hidden_states = block(hidden_states, temb)
            skips += (hidden_states,)
        return _downsample(self.downsamplers, hidden_states, skips)


class CrossAttnDownBlock2D(nn.Module):
    """[ResnetBlock2D, Transformer2DModel] x layers, then an optional Downsample2D.
    SD 1.5 level 0: (2,320,64,64) -> 2 x [resnet, transformer] -> (2,320,64,64) -> downsample
    -> (2,320,32,32); three skips pushed (two at 64x64, one at 32x32)."""

    has_cross_attention = True

    def __init__(
        self,
        config: UNetConfig,
        level: int,
        in_channels: int,
        out_channels: int,
        add_downsample: bool,
    ):
        super().__init__()
        # attentions registered first, as diffusers does, so state_dict order matches
        depths = config.transformer_depths[0][level]  # SDXL level 2: (10, 10); SSD-1B: (4, 4)
        self.attentions = nn.ModuleList(transformer(config, level, out_channels, d) for d in depths)
        self.resnets = _down_resnets(config, level, in_channels, out_channels)
        self.downsamplers = _downsamplers(config, out_channels, add_downsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for block, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = block(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
            skips += (hidden_states,)
        return _downsample(self.downsamplers, hidden_states, skips)


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResnetBlock2D, then [Transformer2DModel, ResnetBlock2D] at the lowest resolution.
    SD 1.5: (2,1280,8,8) in and out."""

    has_cross_attention = True

    def __init__(self, config: UNetConfig):
        super().__init__()
        level = config.n_blocks - 1
        channels = config.block_out_channels[level]
        scale = config.mid_block_scale_factor
        depth = config.transformer_depths[1]
        self.attentions = nn.ModuleList([transformer(config, level, channels, depth)])
        self.resnets = nn.ModuleList(resnet(config, channels, channels, scale) for _ in range(2))

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, block in zip(self.attentions, self.resnets[1:], strict=True):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
            hidden_states = block(hidden_states, temb)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """One ResnetBlock2D and no attention at the lowest resolution: the mid block of the
    distilled SDXLs (Segmind's SSD-1B and Vega; diffusers' ``mid_block_type`` "UNetMidBlock2D",
    built with no attention layer as diffusers' UNet2DConditionModel builds it)."""

    has_cross_attention = False

    def __init__(self, config: UNetConfig):
        super().__init__()
        channels = config.block_out_channels[-1]
        scale = config.mid_block_scale_factor
        self.resnets = nn.ModuleList([resnet(config, channels, channels, scale)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.resnets[0](hidden_states, temb)


def _up_resnets(
    config: UNetConfig, level: int, in_channels: int, out_channels: int, prev_output_channel: int
) -> nn.ModuleList:
    """``layers[level] + 1`` resnets. Resnet i sees the previous output (``prev_output_channel``
    for the first) concatenated with the skip it pops; the last skip of an up block comes from
    one level higher in the down path (``in_channels``), as in diffusers."""
    layers = config.layers[level] + 1
    resnets = []
    for i in range(layers):
        res_skip_channels = in_channels if i == layers - 1 else out_channels
        resnet_in_channels = prev_output_channel if i == 0 else out_channels
        resnets.append(resnet(config, resnet_in_channels + res_skip_channels, out_channels))
    return nn.ModuleList(resnets)


def _pop_and_concat(
    hidden_states: torch.Tensor, skips: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Concatenate the last skip on channels: SD 1.5 level 3's first resnet gets
    (2,1280,8,8) + (2,1280,8,8) -> (2,2560,8,8)."""
    return torch.cat([hidden_states, skips[-1]], dim=1), skips[:-1]


class UpBlock2D(nn.Module):
    """Resnets that each concatenate one popped skip tensor, then an optional Upsample2D.
    SD 1.5's first up block (level 3): (2,1280,8,8) -> 3 resnets -> upsample -> (2,1280,16,16)."""

    has_cross_attention = False

    def __init__(
        self,
        config: UNetConfig,
        level: int,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        add_upsample: bool,
    ):
        super().__init__()
        self.resnets = _up_resnets(config, level, in_channels, out_channels, prev_output_channel)
        self.upsamplers = _upsamplers(out_channels, add_upsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,  # unused: no attention here
    ) -> torch.Tensor:
        for block in self.resnets:
            hidden_states, res_hidden_states_tuple = _pop_and_concat(
                hidden_states, res_hidden_states_tuple
            )
            hidden_states = block(hidden_states, temb)
        return _upsample(self.upsamplers, hidden_states)


class CrossAttnUpBlock2D(nn.Module):
    """[concat skip, ResnetBlock2D, Transformer2DModel] x (layers + 1), then an optional
    Upsample2D. SD 1.5 level 0 (the last up block): (2,640,64,64) -> (2,320,64,64)."""

    has_cross_attention = True

    def __init__(
        self,
        config: UNetConfig,
        level: int,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        add_upsample: bool,
    ):
        super().__init__()
        # up block i mirrors level n - 1 - i; its depths are reverse_transformer_layers_per_block
        # [i] when the config gives them (SSD-1B's first up block: (4, 4, 10))
        depths = config.transformer_depths[2][config.n_blocks - 1 - level]
        self.attentions = nn.ModuleList(transformer(config, level, out_channels, d) for d in depths)
        self.resnets = _up_resnets(config, level, in_channels, out_channels, prev_output_channel)
        self.upsamplers = _upsamplers(out_channels, add_upsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for block, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states, res_hidden_states_tuple = _pop_and_concat(
                hidden_states, res_hidden_states_tuple
            )
            hidden_states = block(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states)
        return _upsample(self.upsamplers, hidden_states)

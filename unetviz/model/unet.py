"""UNet2DConditionModel: the Stable Diffusion noise predictor, module for module diffusers'."""

from __future__ import annotations

import torch
from torch import nn

from ..config import UNetConfig
from .blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from .embeddings import TimestepEmbedding, Timesteps

_DOWN = {"CrossAttnDownBlock2D": CrossAttnDownBlock2D, "DownBlock2D": DownBlock2D}
_UP = {"CrossAttnUpBlock2D": CrossAttnUpBlock2D, "UpBlock2D": UpBlock2D}
_MID = {"UNetMidBlock2DCrossAttn": UNetMidBlock2DCrossAttn, "UNetMidBlock2D": UNetMidBlock2D}


class UNet2DConditionModel(nn.Module):
    """timestep -> temb; sample -> conv_in -> down blocks (push skips) -> mid -> up blocks (pop
    skips) -> GroupNorm -> SiLU -> conv_out. Parameter names equal diffusers', so a diffusers
    ``diffusion_pytorch_model.safetensors`` loads without renaming.

    Shapes in comments: SD 1.5, a 512x512 image (64x64 latent), batch 2 (classifier-free
    guidance), 77 text tokens of width 768. docs/walkthrough.md follows this file stage by stage.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        channels = c.block_out_channels  # SD 1.5: (320, 640, 1280, 1280)
        time_embed_dim = c.time_embed_dim  # 4 x 320 = 1280

        self.conv_in = nn.Conv2d(c.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.class_embedding = _class_embedding(c)
        if c.addition_embed_type == "text_time":  # SDXL: pooled text + size/crop conditions
            self.add_time_proj = Timesteps(
                c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift
            )
            self.add_embedding = TimestepEmbedding(
                c.projection_class_embeddings_input_dim, time_embed_dim
            )

        # diffusers' order: both lists registered first (state_dict: down, up, then mid), then
        # built down, mid, up (so a seeded random init draws the same numbers as diffusers')
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        output_channel = channels[0]
        for i, kind in enumerate(c.down_block_types):
            input_channel, output_channel = output_channel, channels[i]
            is_final_block = i == c.n_blocks - 1
            block = _DOWN[kind](c, i, input_channel, output_channel, not is_final_block)
            self.down_blocks.append(block)

        self.mid_block = _MID[c.mid_block_type](c)

        reversed_channels = list(reversed(channels))  # SD 1.5: (1280, 1280, 640, 320)
        output_channel = reversed_channels[0]
        for i, kind in enumerate(c.up_block_types):
            level = c.n_blocks - 1 - i  # the down block this one mirrors
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, c.n_blocks - 1)]
            is_final_block = i == c.n_blocks - 1
            block = _UP[kind](
                c, level, input_channel, output_channel, prev_output_channel, not is_final_block
            )
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], c.out_channels, kernel_size=3, padding=1)

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _check_inputs(self, sample, encoder_hidden_states, added_cond_kwargs, class_labels):
        c = self.config
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)}: expected (batch, {c.in_channels}, "
                "height, width)"
            )
        b, _, h, w = sample.shape
        c.check_size(h, w, scale=1, names=("latent height", "latent width"))
        if (
            encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[0] != b
            or encoder_hidden_states.shape[2] != c.cross_attention_dim
        ):
            raise ValueError(
                f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}: expected "
                f"({b}, tokens, {c.cross_attention_dim})"
            )
        if c.addition_embed_type == "text_time":
            if not added_cond_kwargs or not {"text_embeds", "time_ids"} <= set(added_cond_kwargs):
                raise ValueError(
                    "this UNet has addition_embed_type 'text_time' (SDXL): pass "
                    "added_cond_kwargs={'text_embeds': (batch, D), 'time_ids': (batch, 6)}"
                )
            text = added_cond_kwargs["text_embeds"]
            time_ids = added_cond_kwargs["time_ids"]
            n_time = c.projection_class_embeddings_input_dim - text.shape[-1]
            if (
                text.ndim != 2
                or text.shape[0] != b
                or time_ids.shape[0] != b
                or n_time != time_ids.reshape(b, -1).shape[1] * c.addition_time_embed_dim
            ):
                raise ValueError(
                    f"added_cond_kwargs text_embeds {tuple(text.shape)} and time_ids "
                    f"{tuple(time_ids.shape)} do not fit: expected text_embeds (batch={b}, D) and "
                    f"time_ids ({b}, n) with D + n * {c.addition_time_embed_dim} = "
                    f"{c.projection_class_embeddings_input_dim}"
                )
        if self.class_embedding is not None and class_labels is None:
            raise ValueError("this UNet has a class embedding: pass class_labels")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``sample`` (B, C, H, W) at ``timestep``, conditioned on the text
        ``encoder_hidden_states`` (B, tokens, cross_attention_dim)."""
        self._check_inputs(sample, encoder_hidden_states, added_cond_kwargs, class_labels)
        text = encoder_hidden_states  # (2, 77, 768)

        # 1. time: sinusoids (2, 320) -> MLP -> temb (2, 1280), plus class / SDXL embeddings
        emb = self.time_embed(sample, timestep, added_cond_kwargs, class_labels)

        # 2. down path: conv_in (2,4,64,64) -> (2,320,64,64); each block halves H and W
        # (-> 32, 16, 8; channels 320, 640, 1280, 1280) and pushes every output as a skip
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            sample, res = block(hidden_states=sample, temb=emb, **_text(block, text))
            skips += res  # SD 1.5: 1 + 3 + 3 + 3 + 2 = 12 skips

        # 3. mid: resnet, transformer, resnet at the lowest resolution, (2,1280,8,8)
        # (SSD-1B / Vega: one resnet, no text)
        sample = self.mid_block(hidden_states=sample, temb=emb, **_text(self.mid_block, text))

        # 4. up path: each block pops one skip per resnet (3 in SD 1.5) and upsamples:
        # (2,1280,16,16) -> (2,1280,32,32) -> (2,640,64,64) -> (2,320,64,64)
        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            sample = block(
                hidden_states=sample, res_hidden_states_tuple=res, temb=emb, **_text(block, text)
            )

        # 5. out: GroupNorm -> SiLU -> conv_out, (2,320,64,64) -> (2,4,64,64)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    def time_embed(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        class_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """temb (B, 4 x block_out_channels[0]): the timestep's sinusoids through an MLP, plus
        the class embedding and SDXL's text_time embedding when the config has them."""
        c = self.config
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(sample.shape[0])  # (2,)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))  # (2, 1280)
        if self.class_embedding is not None:
            if c.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(sample.dtype)
            emb = emb + self.class_embedding(class_labels).to(sample.dtype)
        if c.addition_embed_type == "text_time":
            text_embeds = added_cond_kwargs["text_embeds"]  # SDXL: (2, 1280) pooled text
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)  # (2, 6 x 256)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)
        return emb


def _text(block: nn.Module, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """The text goes to blocks that attend to it (``has_cross_attention``, as in diffusers);
    the others are called without it, so a trace records only the inputs a block uses."""
    return {"encoder_hidden_states": text} if block.has_cross_attention else {}


def _class_embedding(c: UNetConfig) -> nn.Module | None:
    """diffusers' class embedding choices (none in SD 1.x/2.x/XL base)."""
    if c.class_embed_type is None and c.num_class_embeds is not None:
        return nn.Embedding(c.num_class_embeds, c.time_embed_dim)
    if c.class_embed_type == "timestep":
        return TimestepEmbedding(c.block_out_channels[0], c.time_embed_dim)
    if c.class_embed_type == "identity":
        return nn.Identity()
    if c.class_embed_type == "projection":
        return TimestepEmbedding(c.projection_class_embeddings_input_dim, c.time_embed_dim)
    return None

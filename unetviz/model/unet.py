"""UNet2DConditionModel: the Stable Diffusion noise predictor, module for module diffusers'."""

from __future__ import annotations

import torch
from torch import nn

from ..config import UNetConfig
from .blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
    _Common,
)
from .embeddings import TimestepEmbedding, Timesteps

_DOWN = {"CrossAttnDownBlock2D": CrossAttnDownBlock2D, "DownBlock2D": DownBlock2D}
_UP = {"CrossAttnUpBlock2D": CrossAttnUpBlock2D, "UpBlock2D": UpBlock2D}


class UNet2DConditionModel(nn.Module):
    """timestep -> temb; sample -> conv_in -> down blocks (push skips) -> mid -> up blocks (pop
    skips) -> GroupNorm -> SiLU -> conv_out. Parameter names equal diffusers', so a diffusers
    ``diffusion_pytorch_model.safetensors`` loads without renaming."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        ch = c.block_out_channels
        temb_dim = c.time_embed_dim
        heads, layers, tlayers = c.heads, c.layers, c.transformer_layers

        def common(i: int) -> _Common:
            return _Common(
                temb_dim,
                c.norm_num_groups,
                c.norm_eps,
                heads[i],
                c.cross_attention_dim,
                c.use_linear_projection,
                bool(c.upcast_attention),
            )

        self.conv_in = nn.Conv2d(c.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(ch[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)

        self.class_embedding: nn.Module | None = None
        if c.class_embed_type is None and c.num_class_embeds is not None:
            self.class_embedding = nn.Embedding(c.num_class_embeds, temb_dim)
        elif c.class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(ch[0], temb_dim)
        elif c.class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif c.class_embed_type == "projection":
            self.class_embedding = TimestepEmbedding(
                c.projection_class_embeddings_input_dim, temb_dim
            )

        if c.addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(
                c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift
            )
            self.add_embedding = TimestepEmbedding(
                c.projection_class_embeddings_input_dim, temb_dim
            )

        # registration order follows diffusers (down, up, then mid) so state_dict order matches
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        cout = ch[0]
        for i, kind in enumerate(c.down_block_types):
            cin, cout = cout, ch[i]
            self.down_blocks.append(
                _DOWN[kind](
                    cin,
                    cout,
                    layers[i],
                    common(i),
                    add_downsample=i < c.n_blocks - 1,
                    transformer_layers=tlayers[i],
                    padding=c.downsample_padding,
                )
            )

        self.mid_block = UNetMidBlock2DCrossAttn(
            ch[-1], common(c.n_blocks - 1), tlayers[-1], c.mid_block_scale_factor
        )

        rch = list(reversed(ch))
        rlayers, rtlayers = list(reversed(layers)), list(reversed(tlayers))
        rcommon = [common(i) for i in reversed(range(c.n_blocks))]
        cout = rch[0]
        for i, kind in enumerate(c.up_block_types):
            prev, cout = cout, rch[i]
            cin = rch[min(i + 1, c.n_blocks - 1)]
            self.up_blocks.append(
                _UP[kind](
                    cin,
                    cout,
                    prev,
                    rlayers[i] + 1,
                    rcommon[i],
                    add_upsample=i < c.n_blocks - 1,
                    transformer_layers=rtlayers[i],
                )
            )

        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, ch[0], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, kernel_size=3, padding=1)

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
        c = self.config

        # 1. time: sinusoids -> MLP -> temb, plus class / SDXL text_time embeddings
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if self.class_embedding is not None:
            if c.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(sample.dtype)
            emb = emb + self.class_embedding(class_labels).to(sample.dtype)
        if c.addition_embed_type == "text_time":
            text_embeds = added_cond_kwargs["text_embeds"]
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)

        # 2. down path: every output is pushed for the up path
        if c.center_input_sample:
            sample = 2 * sample - 1.0
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if isinstance(block, CrossAttnDownBlock2D):
                sample, res = block(
                    hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states
                )
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res

        # 3. mid
        sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)

        # 4. up path: each block pops as many skips as it has resnets
        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if isinstance(block, CrossAttnUpBlock2D):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                )
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res)

        # 5. out
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

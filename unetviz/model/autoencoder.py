"""AutoencoderKL in miniature: the image <-> latent codec of a latent diffusion model.

Stable Diffusion's VAE layout, with diffusers' module and parameter names (so a diffusers
``AutoencoderKL`` with the same config loads these weights as is)::

    image (B, 3, 96, 96)
      encoder: conv_in -> down blocks [ResnetBlock x layers, Downsample (not in the last)]
               -> mid [Resnet, Attention, Resnet] -> GroupNorm/SiLU/conv_out -> (B, 2*4, 24, 24)
      quant_conv (1x1) -> mean, logvar: the diagonal Gaussian posterior
    latent (B, 4, 24, 24)
      post_quant_conv (1x1) -> decoder: conv_in -> mid -> up blocks [Resnet x (layers + 1),
               Upsample (not in the last)] -> GroupNorm/SiLU/conv_out -> image (B, 3, 96, 96)

The diffusion model works on ``(latent - shift_factor) * scaling_factor`` (unit variance),
exactly as SD scales its latents by 0.18215.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError, check_part_config, read_json

#: The most parameters a VAE config may describe before anything is built (SD's VAE: 84 M).
MAX_VAE_PARAMS = 400_000_000


@dataclass
class AutoencoderConfig:
    """diffusers ``AutoencoderKL`` config keys (the ones this layout uses)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    sample_size: int = 96
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    down_block_types: tuple[str, ...] = field(default=())
    up_block_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_part_config("vae", {k: _listed(v) for k, v in asdict(self).items() if v != ()})
        self.block_out_channels = tuple(self.block_out_channels)
        n = len(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types) or ("DownEncoderBlock2D",) * n
        self.up_block_types = tuple(self.up_block_types) or ("UpDecoderBlock2D",) * n
        self._check_layout()

    def _check_layout(self) -> None:
        """Block types this layout builds, channels divisible by groups, a parameter budget."""
        for key, kind in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            types = getattr(self, key)
            if len(types) != len(self.block_out_channels) or set(types) != {kind}:
                raise ConfigError(
                    f"vae.{key} = {list(types)[:8]}: expected {kind} once per block_out_channels "
                    "entry (the Stable Diffusion VAE layout)"
                )
        for i, ch in enumerate(self.block_out_channels):
            if ch % self.norm_num_groups:
                raise ConfigError(
                    f"vae.block_out_channels[{i}] = {ch} is not divisible by norm_num_groups = "
                    f"{self.norm_num_groups}"
                )
        # 3x3 convs: the encoder's resnets (2 convs each), the decoder's (one more per block)
        params = sum(18 * c * c * (2 * self.layers_per_block + 1) for c in self.block_out_channels)
        params += 4 * 18 * self.block_out_channels[-1] ** 2  # the two mid blocks
        if params > MAX_VAE_PARAMS:
            raise ConfigError(
                f"vae config describes about {params:,} parameters: more than the "
                f"{MAX_VAE_PARAMS:,} allowed (Stable Diffusion's VAE has 84 million)"
            )

    @property
    def downsampling_factor(self) -> int:
        """Image side / latent side (2 ** number of downsamplers)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """The ``vae/config.json`` contents."""
        d = asdict(self)
        d.update(
            _class_name="AutoencoderKL",
            act_fn="silu",
            block_out_channels=list(self.block_out_channels),
            down_block_types=list(self.down_block_types),
            up_block_types=list(self.up_block_types),
            mid_block_add_attention=True,
        )
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> AutoencoderConfig:
        """Read a ``vae/config.json`` the way every config is read: a bounded read, the VAE
        schema, then construction (keys diffusers adds and this layout fixes are dropped;
        ``shift_factor`` null is 0). ConfigError naming the file or the key otherwise."""
        data = check_part_config("vae", read_json(path, "vae config"))
        keys = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in keys and v is not None}
        return cls(**kwargs)


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class VAEResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding (eps 1e-6, as in the SD VAE)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class VAEAttention(nn.Module):
    """Single-head self-attention over all positions, with its own GroupNorm and residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class VAEMidBlock(nn.Module):
    """Resnet -> Attention -> Resnet at the latent resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])
        self.resnets = nn.ModuleList([VAEResnetBlock(channels, channels, groups) for _ in "ab"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (diffusers' padding=0 form)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CoderBlock(nn.Module):
    """One resolution level: resnets, then an optional resampler (diffusers' Down/UpDecoder)."""

    def __init__(self, channels: list[int], groups: int, resample: str | None):
        super().__init__()
        pairs = zip(channels[:-1], channels[1:], strict=True)
        self.resnets = nn.ModuleList(VAEResnetBlock(a, b, groups) for a, b in pairs)
        sampler = {"down": Downsample, "up": Upsample}.get(resample or "")
        samplers = [sampler(channels[-1])] if sampler else []
        name = "downsamplers" if resample == "down" else "upsamplers"
        setattr(self, name, nn.ModuleList(samplers))
        self.resample = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for sampler in getattr(self, self.resample):
            x = sampler(x)
        return x


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> posterior moments (B, 2 * latent_channels, H / f, W / f)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        ch, g, n = c.block_out_channels, c.norm_num_groups, c.layers_per_block
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        prev, blocks = ch[0], []
        for i, out in enumerate(ch):
            last = i == len(ch) - 1
            blocks.append(CoderBlock([prev] + [out] * n, g, None if last else "down"))
            prev = out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = VAEMidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> image (B, 3, h * f, w * f)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        ch, g, n = c.block_out_channels[::-1], c.norm_num_groups, c.layers_per_block
        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.mid_block = VAEMidBlock(ch[0], g)
        prev, blocks = ch[0], []
        for i, out in enumerate(ch):
            last = i == len(ch) - 1
            blocks.append(CoderBlock([prev] + [out] * (n + 1), g, None if last else "up"))
            prev = out
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """``encode(image) -> (mean, logvar)``; ``decode(latent) -> image``; images in [-1, 1]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        k = 2 * config.latent_channels
        self.quant_conv = nn.Conv2d(k, k, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_channels, H / f, W / f)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images (B, out_channels, H, W), about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the diffusion model's unit-variance latents."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents -> VAE latents (what ``decode`` takes)."""
        return z / self.config.scaling_factor + self.config.shift_factor

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, mean and logvar (the latent is sampled from the posterior when
        ``sample``: the decoder learns to read slightly noisy latents)."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            # drawn where the generator lives (a CPU generator gives the same numbers for a
            # CUDA model), then moved to the latent's device
            where = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=where)
            noise = noise.to(mean.device)
            z = mean + (0.5 * logvar).exp() * noise
        return self.decode(z), mean, logvar

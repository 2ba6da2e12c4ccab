"""unetviz's own UNet2DConditionModel, one file per concept, named like diffusers'."""

from .attention import GEGLU, Attention, FeedForward
from .blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from .embeddings import TimestepEmbedding, Timesteps, timestep_embedding
from .resnet import ResnetBlock2D
from .sampling import Downsample2D, Upsample2D
from .transformer import BasicTransformerBlock, Transformer2DModel
from .unet import UNet2DConditionModel

__all__ = [
    "GEGLU",
    "Attention",
    "BasicTransformerBlock",
    "CrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",
    "DownBlock2D",
    "Downsample2D",
    "FeedForward",
    "ResnetBlock2D",
    "TimestepEmbedding",
    "Timesteps",
    "Transformer2DModel",
    "UNet2DConditionModel",
    "UNetMidBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UpBlock2D",
    "Upsample2D",
    "timestep_embedding",
]

"""The demo text-to-image pipeline: word tokenizer, small text encoder, DDIM with guidance.

Everything runs offline from ``assets/demo/`` (diffusers-style folder layout)::

    assets/demo/unet/config.json, diffusion_pytorch_model.safetensors
    assets/demo/text_encoder/config.json, model.safetensors
    assets/demo/tokenizer/vocab.json
    assets/demo/scheduler/scheduler_config.json
    assets/demo/model_card.md

The model works in pixel space (3 x 24 x 24, values in [-1, 1]) and predicts v.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import PipelineError, Run

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"
SPECIALS = ("<pad>", "<bos>", "<eos>")


class UnknownWordError(PipelineError):
    """A prompt word outside the demo vocabulary."""


# ---------------------------------------------------------------------------------- tokenizer
class WordTokenizer:
    """Whitespace word tokenizer with ``<pad>``/``<bos>``/``<eos>``; padded to ``max_length``."""

    def __init__(self, words: Sequence[str], max_length: int = 16):
        self.vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id = (self.index[s] for s in SPECIALS)

    @property
    def words(self) -> list[str]:
        """The words a prompt may use (the vocabulary without special tokens)."""
        return self.vocab[len(SPECIALS) :]

    def split(self, text: str) -> list[str]:
        """Lower-case words with surrounding punctuation removed."""
        return [w.strip(".,;:!?\"'") for w in text.lower().split() if w.strip(".,;:!?\"'")]

    def encode(self, text: str) -> tuple[list[int], list[str], list[str | None]]:
        """Token ids (padded), token labels and the word each token belongs to."""
        words = self.split(text)
        unknown = [w for w in words if w not in self.index or w in SPECIALS]
        if unknown:
            raise UnknownWordError(
                f"unknown word(s) {', '.join(repr(w) for w in unknown)} in prompt {text!r}; "
                f"the demo model knows only: {' '.join(self.words)}"
            )
        if len(words) + 2 > self.max_length:
            raise PipelineError(
                f"prompt {text!r} has {len(words)} words; the demo model takes at most "
                f"{self.max_length - 2}"
            )
        ids = [self.bos_id, *(self.index[w] for w in words), self.eos_id]
        labels: list[str] = ["<bos>", *words, "<eos>"]
        owners: list[str | None] = [None, *words, None]
        pad = self.max_length - len(ids)
        return (
            ids + [self.pad_id] * pad,
            labels + ["<pad>"] * pad,
            owners + [None] * pad,
        )

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """A (B, max_length) long tensor of ids."""
        return torch.tensor([self.encode(t)[0] for t in texts], dtype=torch.long)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"vocab": self.vocab, "max_length": self.max_length, "specials": list(SPECIALS)}
        (folder / "vocab.json").write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> WordTokenizer:
        data = json.loads((Path(folder) / "vocab.json").read_text())
        return cls(data["vocab"], data["max_length"])


# ------------------------------------------------------------------------------ text encoder
@dataclass
class TextEncoderConfig:
    """Size of the demo text encoder."""

    vocab_size: int
    max_length: int = 16
    width: int = 64
    layers: int = 2
    heads: int = 2
    n_special: int = len(SPECIALS)


class TextEncoderLayer(nn.Module):
    """Pre-norm causal transformer layer (LayerNorm -> self-attention -> LayerNorm -> MLP)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class DemoTextEncoder(nn.Module):
    """Token + position embeddings, causal transformer layers, final LayerNorm.

    Special tokens (``<pad>``, ``<bos>``, ``<eos>``) come out as their own embedding only, free
    of caption content: everything the UNet learns about the caption must come from the word
    tokens, which is what makes per-word attention maps meaningful.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Embedding(c.max_length, c.width)
        self.layers = nn.ModuleList(TextEncoderLayer(c.width, c.heads) for _ in range(c.layers))
        self.final_layer_norm = nn.LayerNorm(c.width)
        nn.init.normal_(self.token_embedding.weight, std=0.3)
        nn.init.normal_(self.position_embedding.weight, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, width) hidden states."""
        tok = self.token_embedding(ids)
        x = tok + self.position_embedding.weight[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        special = (ids < self.config.n_special)[..., None]
        return self.final_layer_norm(torch.where(special, tok, x))


# ---------------------------------------------------------------------------------- scheduler
@dataclass
class DDIMSchedule:
    """Cosine-beta DDPM noise schedule (v-prediction) with deterministic DDIM sampling."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        n = self.num_train_timesteps

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
        self.alphas_cumprod = torch.cumprod(1 - betas.double(), 0).float()

    def add_noise(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy sample x_t and the v target for timesteps t (B,)."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return a * x0 + s * noise, a * noise - s * x0

    def timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps from T-1 down ("trailing" spacing, so sampling starts at T-1)."""
        n = self.num_train_timesteps
        return [int(round(n - 1 - i * n / steps)) for i in range(steps)]

    def step(self, v: torch.Tensor, t: int, t_prev: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from t to t_prev (t_prev < 0 means the clean image)."""
        ab = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        x0 = (ab.sqrt() * x - (1 - ab).sqrt() * v).clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps

    def to_dict(self) -> dict[str, Any]:
        return {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "timestep_spacing": "trailing",
            "clip_sample": True,
        }


def demo_unet_config(size: int = 24) -> dict[str, Any]:
    """The demo UNet's diffusers-style config: SD's block structure in miniature."""
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": size,
        "in_channels": 5,  # RGB + (x, y) coordinate channels, see ``unet_input``
        "out_channels": 3,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 64,
        "attention_head_dim": [1, 2, 2],
    }


def unet_input(unet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The UNet's input for an RGB batch ``x``: with ``in_channels == 5`` two coordinate
    channels (x and y, from -1 to 1) are appended (CoordConv), which lets the model place
    objects "on the left" without relying on zero-padding cues; with 3, ``x`` itself."""
    if int(unet.config.in_channels) == x.shape[1]:
        return x
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], 1)


def sample(
    unet: nn.Module,
    schedule: DDIMSchedule,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    generator: torch.Generator,
    steps: int = 25,
    guidance: float = 4.0,
    size: int = 24,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DDIM with classifier-free guidance; returns images (B, 3, size, size) in [-1, 1].

    The UNet sees one batch per step: ``[uncond, cond]`` when guidance != 1, else ``cond``.
    """
    b = cond.shape[0]
    x = torch.randn(b, 3, size, size, generator=generator)
    ts = schedule.timesteps(steps)
    cfg = guidance != 1.0
    context = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond
    for i, t in enumerate(ts):
        inp = unet_input(unet, torch.cat([x, x]) if cfg else x)
        v = unet(inp, torch.tensor(t), context)
        if cfg:
            v_u, v_c = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = schedule.step(v, t, ts[i + 1] if i + 1 < len(ts) else -1, x)
        if progress is not None:
            progress(i + 1, len(ts))
    return x


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL image."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


# ---------------------------------------------------------------------------------- save/load
def save_demo(
    folder: str | Path,
    unet: nn.Module,
    unet_config: dict[str, Any],
    text_encoder: DemoTextEncoder,
    tokenizer: WordTokenizer,
    schedule: DDIMSchedule,
) -> None:
    """Write the diffusers-style folder (unet/, text_encoder/, tokenizer/, scheduler/)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    te_config = dict(text_encoder.config.__dict__, _class_name="DemoTextEncoder")
    (folder / "text_encoder" / "config.json").write_text(json.dumps(te_config, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in text_encoder.state_dict().items()}
    save_file(state, str(folder / "text_encoder" / "model.safetensors"))
    tokenizer.save(folder / "tokenizer")
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(schedule.to_dict(), indent=2) + "\n"
    )


def _load_unet(folder: Path) -> nn.Module:
    try:
        from unetviz.weights import load_unet
    except ImportError:
        load_unet = None
    if load_unet is not None:
        try:
            return load_unet(folder)
        except TypeError:
            pass
    from safetensors.torch import load_file

    from unetviz import UNet2DConditionModel, UNetConfig

    unet = UNet2DConditionModel(UNetConfig.from_json(folder / "config.json"))
    unet.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    return unet


def load_demo_parts(
    folder: str | Path = DEMO_DIR,
) -> tuple[nn.Module, DemoTextEncoder, WordTokenizer, DDIMSchedule]:
    """Load (unet, text_encoder, tokenizer, schedule) from a demo folder, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    needed = [
        folder / "unet" / "config.json",
        folder / "unet" / "diffusion_pytorch_model.safetensors",
        folder / "text_encoder" / "config.json",
        folder / "text_encoder" / "model.safetensors",
        folder / "tokenizer" / "vocab.json",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise PipelineError(f"demo model folder {folder} is incomplete: missing {missing}")
    unet = _load_unet(folder / "unet").eval()
    te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    te_cfg.pop("_class_name", None)
    text_encoder = DemoTextEncoder(TextEncoderConfig(**te_cfg))
    text_encoder.load_state_dict(load_file(str(folder / "text_encoder" / "model.safetensors")))
    text_encoder.eval()
    tokenizer = WordTokenizer.load(folder / "tokenizer")
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    schedule = DDIMSchedule(
        num_train_timesteps=sched.get("num_train_timesteps", 1000),
        beta_schedule=sched.get("beta_schedule", "squaredcos_cap_v2"),
        prediction_type=sched.get("prediction_type", "v_prediction"),
    )
    return unet, text_encoder, tokenizer, schedule


# ---------------------------------------------------------------------------------- pipeline
@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads for a while. The demo model's kernels are tiny: a
    second thread buys nothing, and on a busy machine it made 25 steps take 66 s instead of
    0.46 s (measured here). Process-wide, so restored afterwards."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


class DemoPipeline:
    """``pipe(prompt, seed=0, steps=25, guidance=4.0)`` -> ``Run`` (image, captured trace,
    token labels). The UNet runs inside ``unetviz.capture`` for every call."""

    name = "demo"

    def __init__(self, folder: str | Path = DEMO_DIR):
        self.folder = Path(folder)
        self.unet, self.text_encoder, self.tokenizer, self.schedule = load_demo_parts(folder)
        self.size = int(self.unet.config.sample_size)

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[torch.Tensor, list[str], list[str | None]]:
        """Prompt -> (1, T, width) embeddings, token labels, token words."""
        ids, labels, words = self.tokenizer.encode(prompt)
        return self.text_encoder(torch.tensor([ids])), labels, words

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        steps: int = 25,
        guidance: float = 4.0,
        height: int | None = None,
        width: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        detail: str = "layers",
        **capture_kwargs: Any,
    ) -> Run:
        """Generate one image for ``prompt`` and capture the UNet while sampling."""
        import unetviz

        size = self.size
        if (height not in (None, size)) or (width not in (None, size)):
            raise PipelineError(
                f"the demo model generates {size}x{size} images only; got height={height}, "
                f"width={width}"
            )
        if steps < 1:
            raise PipelineError(f"steps must be >= 1, got {steps}")
        cond, labels, words = self.encode(prompt)
        uncond = self.encode(negative_prompt)[0]
        generator = torch.Generator().manual_seed(int(seed))
        start = time.perf_counter()
        options = {"attention": True, "temb": True, "detail": detail, **capture_kwargs}
        with _torch_threads(1), unetviz.capture(self.unet, **options) as trace:
            x = sample(
                self.unet, self.schedule, cond, uncond, generator, steps, guidance, size, progress
            )
        trace.tokens = labels
        trace.words = words
        trace.meta.update(
            model="demo",
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=int(seed),
            steps=int(steps),
            guidance=float(guidance),
            height=size,
            width=size,
            batch=2 if guidance != 1.0 else 1,
            cfg=guidance != 1.0,
            detail=detail,
            config=self.unet.config.to_dict(),
            seconds=time.perf_counter() - start,
        )
        return Run(
            image=to_pil(x[0]),
            trace=trace,
            tokens=labels,
            words=words,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=int(seed),
            steps=int(steps),
            guidance=float(guidance),
            latents=x,
        )

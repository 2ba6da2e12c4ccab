"""The demo text-to-image pipeline: word tokenizer, small text encoder, DDIM with guidance.

Everything runs offline from the shipped folder ``DEMO_DIR`` (package data, diffusers layout)::

    unet/config.json, diffusion_pytorch_model.safetensors
    text_encoder/config.json, model.safetensors
    tokenizer/vocab.json
    scheduler/scheduler_config.json
    vae/config.json, diffusion_pytorch_model.safetensors   (latent models only)
    model_card.md

Two generations of the format load here, told apart by the files present:

- latent (v2, with ``vae/``): the UNet denoises 4 x 24 x 24 latents, conditioned on the
  caption through cross-attention and, as SDXL does, on a pooled caption embedding added to
  the time embedding (``addition_embed_type="text_time"``); the autoencoder decodes the final
  latents to a 96 x 96 image, as Stable Diffusion's VAE does.
- pixel (v1, no ``vae/``): the UNet denoises the 24 x 24 RGB image itself (plus two coordinate
  input channels).

Both predict v on a cosine schedule and sample with deterministic DDIM.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from unetviz.callargs import uses_cfg
from unetviz.config import ConfigError, check_demo_config, read_json
from unetviz.detect import DEMO_DIR
from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL
from unetviz.weights import load_unet

from .base import PipelineError, Run, check_finite
from .captured import (
    Prepared,
    captured_run,
    check_call,
    compare_runs,
    emphasis_edits,
    fuse_pipeline_loras,
    prompt_meta,
)

__all__ = ["DEMO_DIR", "DemoPipeline", "UnknownWordError", "demo_unet_config", "load_demo_parts"]
SPECIALS = ("<pad>", "<bos>", "<eos>")
#: the demo model's guidance scale when a call gives none
DEFAULT_GUIDANCE = 4.0


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
        data = check_demo_config("tokenizer", read_json(Path(folder) / "vocab.json", "tokenizer"))
        if not isinstance(data.get("vocab"), list) or not all(
            isinstance(w, str) for w in data["vocab"]
        ):
            raise PipelineError(f"{folder}/vocab.json: 'vocab' must be a list of words")
        return cls(data["vocab"], data.get("max_length", 16))


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
    projection_dim: int | None = None  # pooled caption embedding size (None: no pooled output)
    causal: bool = True  # False: every token sees the whole caption (padding masked out)

    @classmethod
    def from_json(cls, path: str | Path) -> TextEncoderConfig:
        """Read ``text_encoder/config.json`` as every config is read: bounded read, the
        schema (with its parameter budget), then construction; ConfigError otherwise."""
        data = check_demo_config("text_encoder", read_json(path, "text_encoder config"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise ConfigError(f"{path}: unknown text_encoder config keys {unknown[:5]}")
        return cls(**{k: v for k, v in data.items() if k in known})


class TextEncoderLayer(nn.Module):
    """Pre-norm transformer layer (LayerNorm -> self-attention -> LayerNorm -> MLP); causal
    unless given a key mask (bidirectional encoders pass the non-padding tokens)."""

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

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if keys is None:
            attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = keys[:, None, None, :]  # (B, 1, 1, T): which tokens may be attended to
            attn = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class DemoTextEncoder(nn.Module):
    """Token + position embeddings, transformer layers (causal, or bidirectional with
    ``causal=False``), final LayerNorm.

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
        if c.projection_dim:
            self.text_projection = nn.Linear(c.width, c.projection_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.3)
        nn.init.normal_(self.position_embedding.weight, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, width) hidden states."""
        return self.encode(ids)[0]

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) ids -> hidden states (B, T, width) and the pooled caption embedding
        (B, projection_dim), or None for an encoder without ``text_projection``.

        The pooled embedding is the last word token's state (even causal layers let it see the
        whole caption, as CLIP pools its end token) through ``text_projection``; a caption with
        no words pools to zeros (the unconditional embedding of classifier-free guidance)."""
        tok = self.token_embedding(ids)
        x = tok + self.position_embedding.weight[: ids.shape[1]]
        keys = None if self.config.causal else ids != 0  # <pad> is id 0
        for layer in self.layers:
            x = layer(x, keys)
        is_word = ids >= self.config.n_special
        hidden = self.final_layer_norm(torch.where(is_word[..., None], x, tok))
        if not self.config.projection_dim:
            return hidden, None
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        last = torch.where(is_word, pos, -1).max(1).values  # (B,) -1 when no word
        rows = torch.arange(ids.shape[0], device=ids.device)
        pooled = self.text_projection(hidden[rows, last.clamp_min(0)])
        return hidden, pooled * (last >= 0)[:, None].to(pooled.dtype)


# ---------------------------------------------------------------------------------- scheduler
@dataclass
class DDIMSchedule:
    """Cosine-beta DDPM noise schedule (v-prediction) with deterministic DDIM sampling."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    clip_sample: bool = True  # clamp the predicted x0 to [-1, 1]: pixels yes, latents no

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
        ab_prev = (
            self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        )  # 0-d: any device
        x0 = ab.sqrt() * x - (1 - ab).sqrt() * v
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps

    def to_dict(self) -> dict[str, Any]:
        return {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "timestep_spacing": "trailing",
            "clip_sample": self.clip_sample,
        }


def demo_unet_config(
    folder: str | Path = DEMO_DIR, added_conditions: bool = True
) -> dict[str, Any]:
    """The shipped demo UNet's diffusers-style config (``unet/config.json``): the one source
    for code that needs a demo-shaped UNet without its weights (benchmarks, tests).

    ``added_conditions=False`` drops SDXL's ``text_time`` keys (the latent model has them), for
    code whose forward passes only (sample, timestep, text states)."""
    path = Path(folder) / "unet" / "config.json"
    config = read_json(path)
    if not added_conditions:
        for key in ADDED_KEYS:
            config.pop(key, None)
    return config


ADDED_KEYS = (
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


def added_conditions(pooled: torch.Tensor, image_size: int) -> dict[str, torch.Tensor]:
    """SDXL's added conditions for a ``text_time`` UNet: the pooled caption embedding and the
    six micro-conditioning numbers (original size, crop top-left, target size), here always
    the whole ``image_size`` square image."""
    ids = torch.tensor(
        [image_size, image_size, 0, 0, image_size, image_size],
        dtype=pooled.dtype,
        device=pooled.device,
    )
    return {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], 6)}


def unet_input(unet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The UNet's input for an RGB batch ``x``: with ``in_channels == 5`` two coordinate
    channels (x and y, from -1 to 1) are appended (CoordConv), which lets the model place
    objects "on the left" without relying on zero-padding cues; with 3, ``x`` itself."""
    if int(unet.config.in_channels) == x.shape[1]:
        return x
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
    ys, xs = ys.expand(b, 1, h, w), xs.expand(b, 1, h, w)
    return torch.cat([x, xs, ys], 1)


def sample(
    unet: nn.Module,
    schedule: DDIMSchedule,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    generator: torch.Generator,
    steps: int = 25,
    guidance: float = 4.0,
    size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    added: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """DDIM with classifier-free guidance; returns the final sample (B, C, size, size) in the
    UNet's space: latents for a latent model, pixels in [-1, 1] for a pixel model.

    The UNet sees one batch per step: ``[uncond, cond]`` when guidance > 1 (diffusers' rule,
    ``unetviz.callargs.uses_cfg``), else ``cond``;
    ``added`` is the (uncond, cond) pair of added conditions of a ``text_time`` UNet.
    """
    b = cond.shape[0]
    size = int(unet.config.sample_size) if size is None else size
    x = torch.randn(b, int(unet.config.out_channels), size, size, generator=generator)
    x = x.to(device=cond.device, dtype=cond.dtype)  # drawn on the generator's device (CPU)
    ts = schedule.timesteps(steps)
    cfg = uses_cfg(guidance)
    context = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond
    extra = None
    if added is not None:
        extra = added[1]
        if cfg:
            extra = {k: torch.cat([added[0][k].expand_as(v), v]) for k, v in extra.items()}
    for i, t in enumerate(ts):
        inp = unet_input(unet, torch.cat([x, x]) if cfg else x)
        v = unet(inp, torch.tensor(t, device=x.device), context, added_cond_kwargs=extra)
        check_finite(v, i + 1, len(ts))
        if cfg:
            v_u, v_c = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = schedule.step(v, t, ts[i + 1] if i + 1 < len(ts) else -1, x)
        if progress is not None:
            progress(i + 1, len(ts))
    return x


def position_weights(word_weights: list[float], length: int) -> list[float]:
    """Per-position weights of a demo token row: ``<bos>``, one per word, then 1.0 for
    ``<eos>`` and padding."""
    return ([1.0, *word_weights] + [1.0] * length)[:length]


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL image."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


# ---------------------------------------------------------------------------------- save/load
def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def safetensors_bytes(module: nn.Module) -> bytes:
    """A module's weights as a safetensors file's bytes (what ``write_file`` puts on disk)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def save_demo(
    folder: str | Path,
    unet: nn.Module,
    unet_config: dict[str, Any],
    text_encoder: DemoTextEncoder,
    tokenizer: WordTokenizer,
    schedule: DDIMSchedule,
    vae: AutoencoderKL | None = None,
) -> None:
    """Write the diffusers-style folder (unet/, text_encoder/, tokenizer/, scheduler/, and
    vae/ for a latent model), each file atomically."""
    from unetviz.outputs import write_file

    folder = Path(folder)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler", "vae" if vae else "unet"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_file(folder / "unet" / "config.json", _json(unet_config))
    write_file(folder / "unet" / "diffusion_pytorch_model.safetensors", safetensors_bytes(unet))
    te_config = dict(text_encoder.config.__dict__, _class_name="DemoTextEncoder")
    write_file(folder / "text_encoder" / "config.json", _json(te_config))
    write_file(folder / "text_encoder" / "model.safetensors", safetensors_bytes(text_encoder))
    tokenizer.save(folder / "tokenizer")
    write_file(folder / "scheduler" / "scheduler_config.json", _json(schedule.to_dict()))
    if vae is not None:
        write_file(folder / "vae" / "config.json", _json(vae.config.to_dict()))
        write_file(folder / "vae" / "diffusion_pytorch_model.safetensors", safetensors_bytes(vae))


def _load_state(module: nn.Module, path: Path) -> None:
    """Strictly load a safetensors file into a module (every key, every shape)."""
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as exc:
        raise PipelineError(f"weights {path} do not fit their config.json: {exc}") from exc


def load_demo_parts(
    folder: str | Path = DEMO_DIR,
) -> tuple[nn.Module, DemoTextEncoder, WordTokenizer, DDIMSchedule]:
    """Load (unet, text_encoder, tokenizer, schedule) from a demo folder, in eval mode."""
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
    unet = load_unet(folder / "unet").eval()
    te_cfg = TextEncoderConfig.from_json(folder / "text_encoder" / "config.json")
    text_encoder = DemoTextEncoder(te_cfg)
    _load_state(text_encoder, folder / "text_encoder" / "model.safetensors")
    text_encoder.eval()
    tokenizer = WordTokenizer.load(folder / "tokenizer")
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = check_demo_config("scheduler", read_json(sched_path)) if sched_path.is_file() else {}
    schedule = DDIMSchedule(
        num_train_timesteps=sched.get("num_train_timesteps", 1000),
        beta_schedule=sched.get("beta_schedule", "squaredcos_cap_v2"),
        prediction_type=sched.get("prediction_type", "v_prediction"),
        clip_sample=bool(sched.get("clip_sample", True)),
    )
    return unet, text_encoder, tokenizer, schedule


def load_demo_vae(folder: str | Path = DEMO_DIR) -> AutoencoderKL | None:
    """The autoencoder of a latent demo model (``vae/``), in eval mode; None for a pixel model."""
    vae_dir = Path(folder) / "vae"
    if not vae_dir.is_dir():
        return None
    weights = vae_dir / "diffusion_pytorch_model.safetensors"
    if not (vae_dir / "config.json").is_file() or not weights.is_file():
        raise PipelineError(f"{vae_dir} needs config.json and diffusion_pytorch_model.safetensors")
    vae = AutoencoderKL(AutoencoderConfig.from_json(vae_dir / "config.json"))
    _load_state(vae, weights)
    return vae.eval().requires_grad_(False)


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
    """``pipe(prompt, seed=0, steps=25, guidance=None)`` -> ``Run`` (image, captured trace,
    token labels). The UNet runs inside ``unetviz.capture`` for every call."""

    name = "demo"
    compare = compare_runs  # pipe.compare(prompt, edits=[...] or loras=[...], seed=0)
    fuse_loras = fuse_pipeline_loras  # pipe.fuse_loras([(file, scale)]) -> FusedLoras
    loras = None  # the FusedLoras of the LoRAs fused at load time

    def __init__(
        self,
        folder: str | Path = DEMO_DIR,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        """``device`` (default CPU: the demo is small) and ``dtype`` (default float32) of every
        part; the seeded noise is drawn on the CPU, so images match across devices."""
        from unetviz.weights import resolve_dtype

        self.folder = Path(folder)
        self.device = torch.device(device or "cpu")
        self.dtype = resolve_dtype(dtype) or torch.float32
        self.unet, self.text_encoder, self.tokenizer, self.schedule = load_demo_parts(folder)
        self.vae = load_demo_vae(folder)
        for part in (self.unet, self.text_encoder, self.vae):
            if part is not None:
                part.to(device=self.device, dtype=self.dtype)
        self.latent_size = int(self.unet.config.sample_size)
        self.vae_scale_factor = self.vae.config.downsampling_factor if self.vae else 1
        self.size = self.latent_size * self.vae_scale_factor  # the image side in pixels

    def lora_models(self) -> dict[str, nn.Module]:
        """The modules a LoRA file may change, by the part names its keys use."""
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def read(self, prompt: str, syntax: str = "a1111") -> tuple[str, list[float]]:
        """The prompt's plain words (A1111 emphasis syntax removed, :mod:`unetviz.prompts`)
        and one weight per word; ``syntax="literal"`` keeps brackets as text. ``BREAK`` is
        dropped: the demo encodes one window."""
        from unetviz.prompts import PromptError, check_syntax, check_weights
        from unetviz.prompts import parse_prompt_attention as parse

        if check_syntax(syntax) == "compel":
            raise PromptError("syntax='compel' needs a CLIP tokenizer: the demo reads a1111")
        parsed = parse(prompt) if syntax == "a1111" else [[prompt, 1.0]]
        check_weights(parsed)
        words, weights = [], []
        for text, weight in parsed:
            if text == "BREAK" and weight == -1:
                continue
            for word in self.tokenizer.split(text):
                words.append(word)
                weights.append(float(weight))
        return " ".join(words), weights

    @torch.no_grad()
    def encode(
        self, prompt: str, weights: list[float] | None = None
    ) -> tuple[torch.Tensor, list[str], list[str | None]]:
        """Prompt -> (1, T, width) embeddings, token labels, token words; ``weights`` (one per
        word) scale the word embeddings as A1111's emphasis does (``apply_emphasis``)."""
        from unetviz.prompts import apply_emphasis

        ids, labels, words = self.tokenizer.encode(prompt)
        z = self.text_encoder(torch.tensor([ids], device=self.device))
        if weights:
            z = apply_emphasis(z, position_weights(weights, len(ids)))
        return z, labels, words

    @torch.no_grad()
    def added(self, prompt: str) -> dict[str, torch.Tensor] | None:
        """The added conditions (pooled caption embedding, size ids) of a ``text_time`` UNet
        for ``prompt``; None for a UNet without them."""
        if self.unet.config.addition_embed_type != "text_time":
            return None
        ids = torch.tensor([self.tokenizer.encode(prompt)[0]], device=self.device)
        pooled = self.text_encoder.encode(ids)[1]
        return added_conditions(pooled, self.size)

    @torch.no_grad()
    def denoise(
        self,
        prompt: str,
        negative_prompt: str,
        generator: torch.Generator,
        steps: int,
        guidance: float,
        progress: Callable[[int, int], None] | None = None,
        weights: tuple[list[float], list[float]] | None = None,
    ) -> torch.Tensor:
        """The sampling loop: final latents (1, 4, 24, 24) or pixels of a pixel model;
        ``weights``: the (prompt, negative prompt) emphasis weights per word."""
        cond = self.encode(prompt, weights[0] if weights else None)[0]
        uncond = self.encode(negative_prompt, weights[1] if weights else None)[0]
        added = None
        if self.unet.config.addition_embed_type == "text_time":
            added = (self.added(negative_prompt), self.added(prompt))
        return sample(
            self.unet,
            self.schedule,
            cond,
            uncond,
            generator,
            steps,
            guidance,
            None,
            progress,
            added,
        )

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final samples -> images (B, 3, size, size) in [-1, 1]: the VAE decodes latents (as
        in Stable Diffusion); a pixel model's samples are the image."""
        if self.vae is None:
            return x
        return self.vae.decode(self.vae.unscale(x)).clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 0,
        steps: int = 25,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        detail: str = "layers",
        edits: Sequence[Any] | None = None,
        syntax: str = "a1111",
        emphasis: str = "embeddings",
        **capture_kwargs: Any,
    ) -> Run:
        """Generate one image for ``prompt`` and capture the UNet while sampling (under
        ``edits``, unetviz.edits interventions, if given). ``guidance`` None: 4.0; guidance
        <= 1 runs without classifier-free guidance. A1111's emphasis (``(red:1.4) circle``)
        is read as the SD pipeline reads it (``syntax``, ``emphasis``: see
        ``docs/sd-habits.md``)."""
        from unetviz.prompts import check_emphasis

        size = self.size
        if (height not in (None, size)) or (width not in (None, size)):
            raise PipelineError(
                f"the demo model generates {size}x{size} images only; got height={height}, "
                f"width={width}"
            )
        g = DEFAULT_GUIDANCE if guidance is None else guidance
        call = check_call(prompt, negative_prompt, seed, steps, g, size, size)
        weighted = check_emphasis(emphasis) == "embeddings"
        text, text_w = self.read(call.prompt, syntax)
        negative, negative_w = self.read(call.negative_prompt, syntax)
        _, labels, words = self.tokenizer.encode(text)
        _, neg_labels, neg_words = self.tokenizer.encode(negative)  # fails early
        token_w = position_weights(text_w, len(labels))
        if not weighted:
            edits = emphasis_edits(token_w, words, edits)
        prep = Prepared(
            call=call,
            tokens=labels,
            words=words,
            negative_tokens=neg_labels,
            negative_words=neg_words,
            meta={
                "model": "demo",
                "model_path": str(self.folder),
                "family": "demo",
                "scheduler": "DDIMScheduler",
                "dtype": str(next(self.unet.parameters()).dtype).removeprefix("torch."),
                "truncated": "",
                **prompt_meta(token_w, words, syntax, emphasis),
            },
        )
        generator = torch.Generator().manual_seed(call.seed)

        def denoise(progress: Callable[[int, int], None] | None) -> torch.Tensor:
            weights = (text_w, negative_w) if weighted else None
            return self.denoise(
                text, negative, generator, call.steps, call.guidance, progress, weights
            )

        return captured_run(
            self,
            prep,
            denoise,
            lambda x: to_pil(self.decode(x)[0]),
            progress=progress,
            detail=detail,
            edits=edits,
            capture_kwargs=capture_kwargs,
            context=lambda: _torch_threads(1),
        )

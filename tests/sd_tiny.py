"""Tiny random Stable Diffusion pipelines built with diffusers and saved with save_pretrained.

Shared by test_sd.py and test_single_file.py (``tiny_sd_dir`` caches one folder per kind for
the whole session). A tiny CLIP BPE vocabulary is written from scratch, so nothing is
downloaded. This module holds no tests of its own.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "a photo of an the cat dog sitting on mat red blue green house tree in with and by "
    "painting astronaut riding horse moon blurry ugly low quality"
).split()


#: What the tiny SD1- and SDXL-style UNets share: two levels, one layer each, 16x16 latents.
_TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte -> printable unicode table (256 base symbols)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_tokenizer(folder: Path, words: tuple[str, ...] = tuple(WORDS)) -> int:
    """A real CLIP BPE tokenizer (vocab.json + merges.txt) whose merges spell ``words`` as
    whole tokens (``cat</w>``); any other text falls back to single characters.
    Returns the vocabulary size."""
    from transformers import CLIPTokenizer

    base = _bytes_to_unicode()
    vocab: list[str] = base + [c + "</w>" for c in base]
    merges: list[str] = []
    seen = set(vocab)
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for sym in symbols[1:]:
            merged = current + sym
            if merged not in seen:
                merges.append(f"{current} {sym}")
                vocab.append(merged)
                seen.add(merged)
            current = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
    )
    tok.save_pretrained(folder)
    return len(vocab)


def _clip_config(vocab_size: int, eos: int, projection_dim: int = 32, act: str = "gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        projection_dim=projection_dim,
        hidden_act=act,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(folder: Path, kind: str = "sd1") -> Path:
    """Build a tiny random ``sd1`` (StableDiffusionPipeline) or ``sdxl``
    (StableDiffusionXLPipeline) with diffusers and ``save_pretrained`` it into ``folder``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = folder.parent / f"{folder.name}-tokenizer"
    vocab_size = write_tiny_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    if kind == "sd1":
        from diffusers import StableDiffusionPipeline

        unet = UNet2DConditionModel(
            **_TINY_UNET, cross_attention_dim=32, norm_num_groups=8, attention_head_dim=(2, 4)
        )
        text_encoder = CLIPTextModel(_clip_config(vocab_size, eos, act="quick_gelu"))
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif kind == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        unet = UNet2DConditionModel(
            **_TINY_UNET,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
            cross_attention_dim=64,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(_clip_config(vocab_size, eos, act="quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(vocab_size, eos))
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir),
            unet=unet,
            scheduler=_scheduler(),
            add_watermarker=False,
        )
    else:
        raise ValueError(kind)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="unetviz-tiny-sd-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@cache
def tiny_sd_dir(kind: str = "sd1") -> Path:
    """The session's saved tiny pipeline folder of ``kind`` (built once, then reused; removed
    when the test process exits)."""
    return build_tiny_sd(_root() / kind, kind)


def one_thread():
    """Generator body of an autouse fixture: tiny models run fastest on one thread, and on a
    shared, busy CPU torch's thread pool costs up to 10x (spinning workers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

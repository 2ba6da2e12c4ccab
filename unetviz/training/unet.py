"""Phase 3: train the UNet and the text encoder on the latent pool.

v-prediction DDPM on the autoencoder's scaled latents (4 x 24 x 24): cosine schedule;
timesteps drawn logit-normal (mid noise levels, where colour and shape form) mixed with uniform
draws from the noisier half (where the layout is decided); a jointly trained word-level text
encoder whose pooled caption embedding is added to the time embedding (SDXL's ``text_time``
added conditioning: a global path for layout words like "left" and "big"); 10% caption dropout
for classifier-free guidance; AdamW with warm-up and a lower final learning rate; EMA weights.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetviz.config import UNetConfig
from unetviz.model.autoencoder import AutoencoderKL
from unetviz.model.unet import UNet2DConditionModel
from unetviz.pipelines.demo import (
    DDIMSchedule,
    DemoTextEncoder,
    TextEncoderConfig,
    WordTokenizer,
    added_conditions,
    save_demo,
    unet_input,
)

from .common import Clock, append_jsonl, ema_update, load_state, save_state, set_lr, write_json
from .data import MAX_TOKENS, WORDS
from .ground import grounding_loss, recording
from .latents import Pool, vocabulary

WIDTH = 64  # text encoder width = cross_attention_dim = pooled embedding size
N_TIME_IDS, TIME_DIM = 6, 8  # SDXL's six size/crop numbers, each as 8 sinusoids


def latent_unet_config(latent_size: int = 24, coords: bool = False) -> dict[str, Any]:
    """The latent demo UNet: SD's block structure in miniature, 4 latent channels in and out
    (plus two coordinate channels in with ``coords``: ``pipelines.demo.unet_input``), and
    SDXL's ``text_time`` added conditioning (pooled text 64 + 6 x 8 size sinusoids)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": latent_size,
        "in_channels": 6 if coords else 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": WIDTH,
        "attention_head_dim": [1, 2, 2],
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_DIM,
        "projection_class_embeddings_input_dim": WIDTH + N_TIME_IDS * TIME_DIM,
    }


class Both(nn.Module):
    """UNet and text encoder as one module (one optimiser, one EMA)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder


def build(
    latent_size: int = 24, causal: bool = True, coords: bool = False, words: Any = WORDS
) -> tuple[Both, dict[str, Any], WordTokenizer]:
    """Fresh (UNet + text encoder, unet config, tokenizer); ``causal=False`` gives the text
    encoder full (bidirectional) self-attention, so a noun's token also knows the position
    and size words after it."""
    config = latent_unet_config(latent_size, coords)
    tokenizer = WordTokenizer(words, max_length=MAX_TOKENS)
    te_config = TextEncoderConfig(len(tokenizer.vocab), max_length=MAX_TOKENS, width=WIDTH)
    te_config.projection_dim = WIDTH
    te_config.causal = causal
    model = Both(UNet2DConditionModel(UNetConfig.from_dict(config)), DemoTextEncoder(te_config))
    return model, config, tokenizer


def warm_start(model: Both, tokenizer: WordTokenizer, folder: Path) -> int:
    """Initialise from a pixel (v1) demo model: every UNet / text-encoder tensor whose name and
    shape match is copied (conv_in / conv_out differ: 5 -> 4 input, 3 -> 4 output channels),
    word embeddings by word; the new added-conditioning MLP starts at zero output, so the
    start is v1's function on a new input space. Returns the number of tensors copied."""
    from unetviz.pipelines.demo import load_demo_parts

    unet1, te1, tok1, _ = load_demo_parts(folder)
    copied = 0
    for mine, theirs in ((model.unet, unet1), (model.text_encoder, te1)):
        state = mine.state_dict()
        for key, value in theirs.state_dict().items():
            if key in state and state[key].shape == value.shape:
                state[key] = value
                copied += 1
        mine.load_state_dict(state)
    with torch.no_grad():
        emb, old = model.text_encoder.token_embedding.weight, te1.token_embedding.weight
        for word, i in tok1.index.items():
            if word in tokenizer.index:
                emb[tokenizer.index[word]] = old[i]
        pos, old = model.text_encoder.position_embedding.weight, te1.position_embedding.weight
        n = min(len(pos), len(old))
        pos[:n] = old[:n]  # positions beyond v1's 16 tokens keep their fresh init
        nn.init.zeros_(model.unet.add_embedding.linear_2.weight)
        nn.init.zeros_(model.unet.add_embedding.linear_2.bias)
    return copied


def draw_timesteps(
    n: int, p_high: float, schedule: DDIMSchedule, p_top: float = 0.0
) -> torch.Tensor:
    """Logit-normal timesteps mixed with a ``p_high`` share uniform over the noisier half and a
    ``p_top`` share uniform over the noisiest tenth: there the object is invisible in x_t, so
    only the caption can say where it goes (position words are learned nowhere else)."""
    u = torch.sigmoid(torch.randn(n))
    r = torch.rand(n)
    u = torch.where(r < p_high, 0.5 + 0.5 * torch.rand(n), u)
    u = torch.where(r >= 1 - p_top, 0.9 + 0.1 * torch.rand(n), u)
    t = (u * schedule.num_train_timesteps).long()
    return t.clamp(0, schedule.num_train_timesteps - 1)


def loss_on(
    model: Both, batch: tuple, tokenizer: WordTokenizer, args: Any, schedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v-prediction loss, grounding loss) of one batch (captions dropped to "" with
    ``args.p_uncond``); the grounding loss is 0 unless ``args.ground`` > 0 and the pool has
    masks."""
    x0, captions, masks, index = batch
    ids = tokenizer(captions)
    drop = torch.rand(len(captions)) < args.p_uncond
    ids[drop] = tokenizer([""])[0]
    t = draw_timesteps(len(captions), args.p_high, schedule, getattr(args, "p_top", 0.0))
    x_t, target = schedule.add_noise(x0, torch.randn_like(x0), t)
    hidden, pooled = model.text_encoder.encode(ids)
    added = added_conditions(pooled, args.size)
    ground = torch.zeros(())
    x_in = unet_input(model.unet, x_t)
    if getattr(args, "ground", 0) > 0 and masks is not None:
        with recording(model.unet) as probs:
            pred = model.unet(x_in, t, hidden, added_cond_kwargs=added)
        ground = grounding_loss(probs, masks, index, ~drop)
    else:
        pred = model.unet(x_in, t, hidden, added_cond_kwargs=added)
    return nn.functional.mse_loss(pred, target), ground


def widen_conv_in(state: dict[str, Any], channels: int, names: list[str]) -> None:
    """Give a checkpoint's ``conv_in`` (model, EMA and Adam moments) ``channels`` input
    channels by appending zero weights: the new inputs (coordinate channels) start with no
    effect, so the network's function is unchanged at the switch. ``names``: the model's
    parameter names, in the optimiser's order."""
    key = "unet.conv_in.weight"
    old = state["model"][key]
    extra = channels - old.shape[1]
    if extra <= 0:
        return

    def widen(w: torch.Tensor) -> torch.Tensor:
        return torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], 1)

    state["model"][key], state["ema"][key] = widen(old), widen(state["ema"][key])
    moments = state["opt"]["state"].get(names.index(key), {})
    for name in ("exp_avg", "exp_avg_sq"):
        if name in moments and moments[name].shape == old.shape:
            moments[name] = widen(moments[name])


def narrow_vocab(state: dict[str, Any], names: list[str], vocab: list[str]) -> None:
    """Keep only ``vocab``'s rows of a checkpoint's word embeddings (model, EMA, Adam
    moments), by word: the checkpoint was trained with the full vocabulary (``<specials> +
    data.WORDS``); a model that drops words (``--drop-words``) starts from the rest as they
    were. ``names``: the model's parameter names, in the optimiser's order."""
    key = "text_encoder.token_embedding.weight"
    full = WordTokenizer(WORDS).vocab
    if state["model"][key].shape[0] != len(full) or len(vocab) == len(full):
        return
    rows = torch.tensor([full.index(w) for w in vocab])
    state["model"][key] = state["model"][key][rows]
    state["ema"][key] = state["ema"][key][rows]
    moments = state["opt"]["state"].get(names.index(key), {})
    for name in ("exp_avg", "exp_avg_sq"):
        if name in moments and moments[name].shape[0] == len(full):
            moments[name] = moments[name][rows]


class Trainer:
    """State of the UNet phase: models, optimiser, step, clock; save / eval / resume."""

    def __init__(self, args: Any, out: Path, vae: AutoencoderKL):
        torch.manual_seed(args.seed)
        self.args, self.out, self.vae = args, out, vae
        causal = not getattr(args, "bidirectional", False)
        coords = getattr(args, "coords", False)
        self.model, self.config, self.tokenizer = build(
            args.size // 4, causal, coords, vocabulary(args)
        )
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        params = self.model.parameters()
        self.opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.schedule = DDIMSchedule(clip_sample=False)
        self.step, before = 0, 0.0
        self.ckpt = out / "unet_ckpt.pt"
        start = getattr(args, "resume_from", None)
        if self.ckpt.is_file() or start:
            state = load_state(self.ckpt if self.ckpt.is_file() else Path(start))
            names = [n for n, _ in self.model.named_parameters()]
            widen_conv_in(state, self.model.unet.conv_in.weight.shape[1], names)
            narrow_vocab(state, names, self.tokenizer.vocab)
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.step, before = state["step"], state["minutes"]
            torch.set_rng_state(state["torch_rng"])
            print(f"unet: resumed at step {self.step} ({before:.1f} min)", flush=True)
            if not self.ckpt.is_file() and getattr(args, "reinit_words", None):
                self.reinit_words(args.reinit_words.split(","), args.reinit_std)
        elif args.init_from:
            n = warm_start(self.model, self.tokenizer, Path(args.init_from))
            self.ema.load_state_dict(self.model.state_dict())
            print(f"unet: {n} tensors initialised from {args.init_from}", flush=True)
        self.clock = Clock(before)

    def reinit_words(self, words: list[str], std: float) -> None:
        """Fresh, larger embeddings for ``words`` (model and EMA) when continuing another run.

        Why: a word the UNet never used gets suppressed by the text encoder (v1 and the first
        v2 run mapped "left" and "right" to almost the same output, 0.09 apart where "red" and
        "blue" are 0.85), so the UNet can never start to use it: a dead end that more training
        does not leave. Distinct embeddings larger than the rest reopen it."""
        emb = self.model.text_encoder.token_embedding.weight
        with torch.no_grad():
            for word in words:
                i = self.tokenizer.index[word]
                emb[i] = torch.randn(emb.shape[1]) * std
                self.ema.text_encoder.token_embedding.weight[i] = emb[i]
        print(f"unet: re-initialised {', '.join(words)} (std {std})", flush=True)

    def lr(self) -> float:
        a = self.args
        if self.clock.minutes() >= 0.85 * a.minutes or self.step >= 0.85 * a.steps:
            return a.lr_final
        return a.lr * min(1.0, (self.step + 1) / a.warmup)

    def export(self, folder: Path) -> None:
        e = self.ema
        save_demo(
            folder, e.unet, self.config, e.text_encoder, self.tokenizer, self.schedule, self.vae
        )
        write_json(folder / "train_state.json", {"step": self.step, "minutes": self.minutes()})

    def minutes(self) -> float:
        return round(self.clock.minutes(), 2)

    def save(self) -> None:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict()}
        state.update(opt=self.opt.state_dict(), step=self.step, minutes=self.clock.minutes())
        state["torch_rng"] = torch.get_rng_state()
        save_state(self.ckpt, state)
        self.export(self.out / "latest")

    def evaluate(self) -> None:
        from .evaluate import quick_eval

        self.export(self.out / f"step_{self.step}")
        t0 = time.time()
        e = self.ema.eval()
        parts = (e.unet, e.text_encoder, self.tokenizer, self.schedule)
        scores = quick_eval(*parts, n=self.args.eval_n, vae=self.vae)
        scores.update(phase="unet", step=self.step, minutes=self.minutes())
        scores["eval_s"] = round(time.time() - t0, 1)
        append_jsonl(self.out / "evals.jsonl", scores)
        print("EVAL " + str(scores), flush=True)


def train_unet(args: Any, out: Path, vae: AutoencoderKL, pool: Pool) -> None:
    """Train (or resume) until ``args.steps`` or ``args.minutes`` of UNet time."""
    tr = Trainer(args, out, vae)
    rng = random.Random(args.seed * 1_000_003 + tr.step)
    n = sum(p.numel() for p in tr.model.unet.parameters())
    print(f"unet {n / 1e6:.2f} M params, pool {len(pool)} scenes", flush=True)
    last_save = last_eval = tr.clock.minutes()
    log_t, log_loss, log_n, log_ground = time.time(), 0.0, 0, 0.0
    tr.model.train()
    while True:
        loss, ground = loss_on(
            tr.model, pool.batch(rng, args.batch), tr.tokenizer, args, tr.schedule
        )
        set_lr(tr.opt, tr.lr())
        tr.opt.zero_grad(set_to_none=True)
        (loss + args.ground * ground).backward()
        nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
        tr.opt.step()
        tr.step += 1
        ema_update(tr.ema, tr.model, min(args.ema, (1 + tr.step) / (10 + tr.step)))
        if not math.isfinite(loss.item()):
            sys.exit(f"loss is {loss.item()} at step {tr.step}: stopping")
        pool.refresh(vae, rng, args.refresh, args.size)
        log_loss, log_n = log_loss + loss.item(), log_n + 1
        log_ground += ground.item()
        if tr.step % args.log_every == 0:
            rate = log_n / (time.time() - log_t)
            print(
                f"unet step {tr.step} loss {log_loss / log_n:.4f} "
                f"ground {log_ground / log_n:.4f} lr {tr.lr():.2e} "
                f"{rate:.2f} steps/s {tr.clock.minutes():.1f} min",
                flush=True,
            )
            log_t, log_loss, log_n, log_ground = time.time(), 0.0, 0, 0.0
        minutes = tr.clock.minutes()
        done = tr.step >= args.steps or minutes >= args.minutes
        if minutes - last_save >= args.save_min or done:
            tr.save()
            last_save = minutes
        if args.eval_min > 0 and (minutes - last_eval >= args.eval_min or done):
            tr.evaluate()
            tr.model.train()
            last_eval, log_t = tr.clock.minutes(), time.time()
        if done:
            break
    print(f"unet done at step {tr.step} after {tr.clock.minutes():.1f} min", flush=True)

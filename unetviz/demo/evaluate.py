"""Score the demo model: ``python -m unetviz.demo.evaluate [--model assets/demo] [--n 32]``.

(a) Prompt adherence, measured on the generated pixels: every pixel is classified as background
    or the nearest palette colour; colour accuracy (the caption's colour is there, and for one
    object it is the dominant one), shape accuracy (fill ratio of the object's bounding box:
    square ~1, circle ~0.79, triangle ~0.5) and position accuracy (centroid in the named half).
(b) Token-map localisation, DAAM protocol: cross-attention probabilities of the conditional
    batch half, averaged over heads, each layer's map upsampled (bicubic) to the image size and
    summed over layers and sampling steps, min-max normalised, thresholded at tau = 0.4; IoU
    against the mask of the object the word names (the exact mask of that colour's pixels in
    the generated image), for nouns and colour adjectives, on one- and two-object captions.
    A centred blob (a centred Gaussian through the same threshold) is scored beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unetviz.demo.data import COLOURS, PALETTE, SHAPES, Scene, eval_scenes

TAU = 0.4


# ------------------------------------------------------------------------------ pixel analysis
def classify_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> (H, W) ints: -1 background, else index into COLOURS."""
    pal = np.array([PALETTE[c] for c in COLOURS], np.float32)
    dist = ((image[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    labels[image.max(-1) < 0.5] = -1
    return labels


def classify_shape(mask: np.ndarray) -> str | None:
    """Shape of a mask from its bounding-box fill ratio (None for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return "square" if fill >= 0.88 else "circle" if fill >= 0.64 else "triangle"


def position_ok(mask: np.ndarray, position: str) -> bool:
    """Whether the mask's centroid lies in the half a position word names."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return False
    h, w = mask.shape
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    return {
        "left": cx < w / 2,
        "right": cx > w / 2,
        "top": cy < h / 2,
        "bottom": cy > h / 2,
    }[position]


def generated_masks(scene: Scene, image: np.ndarray) -> list[np.ndarray]:
    """The mask of each caption object in a generated image: that colour's pixels (for one
    object: every foreground pixel)."""
    labels = classify_pixels(image)
    if len(scene.objects) == 1:
        return [labels >= 0]
    return [labels == COLOURS.index(o.colour) for o in scene.objects]


def adherence(scene: Scene, image: np.ndarray) -> dict[str, list[bool]]:
    """Per-object colour / shape / position correctness of one generated image."""
    labels = classify_pixels(image)
    out: dict[str, list[bool]] = {"colour": [], "shape": [], "position": []}
    fg = labels >= 0
    for obj, mask in zip(scene.objects, generated_masks(scene, image), strict=True):
        own = labels == COLOURS.index(obj.colour)
        if len(scene.objects) == 1:
            counts = np.bincount(labels[fg], minlength=len(COLOURS)) if fg.any() else None
            ok = counts is not None and int(counts.argmax()) == COLOURS.index(obj.colour)
        else:
            ok = int(own.sum()) >= 6
        out["colour"].append(bool(ok))
        out["shape"].append(classify_shape(own if len(scene.objects) == 2 else mask) == obj.shape)
        if obj.position is not None:
            out["position"].append(
                position_ok(own if len(scene.objects) == 2 else mask, obj.position)
            )
    return out


# ------------------------------------------------------------------------------ token maps
def daam_binary(heat: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Min-max normalise an (H, W) map and threshold it at tau."""
    heat = heat.float()
    lo, hi = heat.min(), heat.max()
    return (heat - lo) / (hi - lo).clamp_min(1e-12) >= tau


def iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a = torch.as_tensor(np.asarray(a)).bool()
    b = torch.as_tensor(np.asarray(b)).bool()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def centred_blob(size: int) -> torch.Tensor:
    """The baseline map: a centred Gaussian (sigma = size / 4)."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return torch.exp(-((xs - size / 2) ** 2 + (ys - size / 2) ** 2) / (2 * (size / 4) ** 2))


class AttentionProbe:
    """Forward hooks on every ``attn2`` that keep, per layer, the head-averaged cross-attention
    maps (B, T, size, size) of the conditional batch half summed over forwards. Used during
    training, and as an independent check of ``unetviz.capture``."""

    def __init__(self, unet: nn.Module, size: int, cond_half: bool = True):
        self.size = size
        self.cond_half = cond_half
        self.sums: dict[str, torch.Tensor] = {}
        self.res: dict[str, int] = {}
        self.handles = [
            m.register_forward_hook(self._hook(n))
            for n, m in unet.named_modules()
            if n.endswith("attn2")
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            hs, ctx = args[0], args[1]
            if self.cond_half:
                hs, ctx = hs[hs.shape[0] // 2 :], ctx[ctx.shape[0] // 2 :]
            b, n, _ = hs.shape
            q = module.to_q(hs).view(b, n, module.heads, -1).transpose(1, 2)
            k = module.to_k(ctx).view(b, ctx.shape[1], module.heads, -1).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) * module.scale).softmax(-1).mean(1)  # (b, n, T)
            side = int(math.isqrt(n))
            maps = probs.transpose(1, 2).reshape(b, -1, side, side)
            maps = F.interpolate(maps, size=(self.size, self.size), mode="bicubic")
            self.res[name] = side
            self.sums[name] = maps if name not in self.sums else self.sums[name] + maps

        return hook

    @property
    def sum(self) -> torch.Tensor:
        """DAAM aggregate (B, T, size, size): layers averaged, steps summed, maps clamped at 0;
        like the ``"daam"`` preset, the lowest resolution is dropped when there are more than
        two (here: the mid block)."""
        sides = sorted(set(self.res.values()))
        keep = [n for n in self.sums if len(sides) <= 2 or self.res[n] > sides[0]]
        return torch.stack([self.sums[n].clamp_min(0) for n in keep]).mean(0)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def probe(unet: nn.Module, size: int, cond_half: bool = True) -> Iterator[AttentionProbe]:
    """``with probe(unet, 32) as p: ...`` then ``p.sum`` holds the aggregated maps."""
    p = AttentionProbe(unet, size, cond_half)
    try:
        yield p
    finally:
        p.remove()


# ------------------------------------------------------------------------------ scoring
def score_scenes(
    scenes: list[Scene],
    images: np.ndarray,
    maps: list[dict[str, torch.Tensor]],
) -> dict[str, Any]:
    """Adherence and localisation for generated ``images`` (N, H, W, 3 in [0, 1]) with
    per-scene word maps (``{word: (H, W) map}``)."""
    size = images.shape[1]
    blob = daam_binary(centred_blob(size))
    acc: dict[str, list[bool]] = {"colour": [], "shape": [], "position": []}
    ious: dict[str, list[float]] = {"noun": [], "colour": [], "blob_noun": [], "blob_colour": []}
    for scene, image, word_maps in zip(scenes, images, maps, strict=True):
        for key, vals in adherence(scene, image).items():
            acc[key] += vals
        for obj, mask in zip(scene.objects, generated_masks(scene, image), strict=True):
            for kind, word in (("noun", obj.shape), ("colour", obj.colour)):
                ious[kind].append(iou(daam_binary(word_maps[word]), mask))
                ious[f"blob_{kind}"].append(iou(blob, mask))
    out: dict[str, Any] = {f"{k}_acc": float(np.mean(v)) if v else None for k, v in acc.items()}
    out.update({f"{k}_miou": float(np.mean(v)) for k, v in ious.items()})
    return out


@torch.no_grad()
def quick_eval(
    unet: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    schedule: Any,
    n: int = 32,
    steps: int = 20,
    guidance: float = 4.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate ``n`` one-object and ``n`` two-object eval captions in one batch each (hooks,
    no capture) and score them; keys are prefixed ``one_`` and ``two_``."""
    from unetviz.pipelines.demo import sample

    size = int(unet.config.sample_size)
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, size, n_obj)
        captions = [s.caption for s in scenes]
        ids = tokenizer(captions)
        cond = text_encoder(ids)
        uncond = text_encoder(tokenizer([""]))
        gen = torch.Generator().manual_seed(seed + n_obj)
        with probe(unet, size) as p:
            x = sample(unet, schedule, cond, uncond, gen, steps, guidance, size)
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        maps = []
        for i, caption in enumerate(captions):
            _, labels, _ = tokenizer.encode(caption)
            maps.append(
                {w: p.sum[i, labels.index(w)] for w in set(labels) if w in SHAPES + COLOURS}
            )
        for k, v in score_scenes(scenes, images, maps).items():
            result[prefix + k] = None if v is None else round(v, 4)
    result.update(teacher_forced_iou(unet, text_encoder, tokenizer, schedule, n, seed=seed))
    return result


@torch.no_grad()
def teacher_forced_iou(
    unet: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    schedule: Any,
    n: int = 32,
    timesteps: tuple[int, ...] = (300, 500, 700),
    seed: int = 0,
) -> dict[str, Any]:
    """Localisation against the exact rendered masks: dataset images noised to ``timesteps``,
    one conditional forward each, DAAM maps summed over them, IoU per noun / colour word."""
    from unetviz.pipelines.demo import unet_input

    size = int(unet.config.sample_size)
    blob = daam_binary(centred_blob(size))
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, size, n_obj)
        x0 = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2) * 2 - 1
        ids = tokenizer([s.caption for s in scenes])
        cond = text_encoder(ids)
        gen = torch.Generator().manual_seed(seed + n_obj)
        with probe(unet, size, cond_half=False) as p:
            for t in timesteps:
                noise = torch.randn(x0.shape, generator=gen)
                x_t, _ = schedule.add_noise(x0, noise, torch.full((n,), t))
                unet(unet_input(unet, x_t), torch.tensor(t), cond)
        ious: dict[str, list[float]] = {"noun": [], "colour": [], "blob": []}
        for i, scene in enumerate(scenes):
            labels = tokenizer.encode(scene.caption)[1]
            for obj in scene.objects:
                ious["blob"].append(iou(blob, obj.mask))
                for kind, word in (("noun", obj.shape), ("colour", obj.colour)):
                    ious[kind].append(iou(daam_binary(p.sum[i, labels.index(word)]), obj.mask))
        for k, v in ious.items():
            result[f"tf_{prefix}{k}_miou"] = round(float(np.mean(v)), 4)
    return result


def evaluate_pipeline(pipe: Any, n: int = 16, steps: int = 25, guidance: float = 4.0) -> dict:
    """Score a demo pipeline through its public call: ``pipe(caption, seed=i)`` per caption,
    maps from ``run.trace.heatmap(word, preset="daam")`` (the capture code path)."""
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, pipe.size, n_obj)
        images, maps = [], []
        for i, scene in enumerate(scenes):
            run = pipe(scene.caption, seed=i, steps=steps, guidance=guidance)
            images.append(np.asarray(run.image, np.float32) / 255)
            words = [w for w in set(run.words) if w in SHAPES + COLOURS]
            maps.append({w: run.trace.heatmap(w, preset="daam", size=pipe.size) for w in words})
        for k, v in score_scenes(scenes, np.stack(images), maps).items():
            result[prefix + k] = None if v is None else round(v, 4)
    return result


def full_eval(
    folder: str | Path, n: int = 32, steps: int = 25, guidance: float = 4.0, fast: bool = False
) -> dict[str, Any]:
    """The scores of a demo model folder: generation through the pipeline and capture (or,
    with ``fast``, batched generation with hooks), plus teacher-forced localisation."""
    from unetviz.pipelines.demo import DemoPipeline

    pipe = DemoPipeline(folder)
    parts = (pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.schedule)
    if fast:
        return quick_eval(*parts, n=n, steps=steps, guidance=guidance)
    scores = evaluate_pipeline(pipe, n, steps, guidance)
    scores.update(teacher_forced_iou(*parts, n=n))
    return scores


def format_scores(scores: dict[str, Any]) -> str:
    """A plain-text table of the scores (one / two objects, with the centred-blob baseline)."""
    lines = [f"{'':<30}{'one object':>12}{'two objects':>13}"]
    for key in ("colour_acc", "shape_acc", "position_acc", "noun_miou", "colour_miou"):
        one, two = scores["one_" + key], scores["two_" + key]
        lines.append(f"{key:<30}{one:>12.3f}{two:>13.3f}")
    lines.append(
        f"{'centred blob mIoU':<30}{scores['one_blob_noun_miou']:>12.3f}"
        f"{scores['two_blob_noun_miou']:>13.3f}"
    )
    if "tf_one_noun_miou" in scores:
        for key in ("noun_miou", "colour_miou", "blob_miou"):
            one, two = scores["tf_one_" + key], scores["tf_two_" + key]
            lines.append(f"{'teacher-forced ' + key:<30}{one:>12.3f}{two:>13.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the scores as a table and JSON."""
    from unetviz.pipelines.demo import DEMO_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEMO_DIR))
    p.add_argument("--n", type=int, default=32, help="captions per set (one- and two-object)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="batched generation with hooks")
    p.add_argument("--json", default=None, help="also write the scores to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    scores = full_eval(args.model, args.n, args.steps, args.guidance, args.fast)
    print(
        f"demo model {args.model}: {args.n} one-object + {args.n} two-object captions, "
        f"{args.steps} DDIM steps, guidance {args.guidance} ({time.time() - t0:.0f} s)\n"
    )
    print(format_scores(scores))
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1) + "\n")
    print("\n" + json.dumps(scores))


if __name__ == "__main__":
    main()

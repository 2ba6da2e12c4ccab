"""Score the demo model: ``python -m unetviz.training.evaluate [--model demo] [--n 32]``.

Captions are drawn from the model's own vocabulary (a v1 model is scored on v1 words).

(a) Prompt adherence, measured on the generated pixels: every pixel is classified as background
    or the nearest palette colour; colour accuracy (the caption's colour is there, and for one
    object it is the dominant one), shape accuracy (the shape template, fitted to the object's
    bounding box, that overlaps it best), position accuracy (centroid in the named half) and
    size accuracy (radius from the area, on the named side of the small/big split). Shape,
    position and size read the object as the largest 4-connected region of its colour: where
    two colours blend at an edge, single pixels of a third colour appear (white's grey edge next
    to blue reads as blue), and one such pixel used to stretch the bounding box across the image.
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

from ..capture.aggregate import daam_average, daam_latent_hw
from ..capture.attention import softmax_scores
from ..colors import minmax
from .data import COLOURS, PALETTE, SHAPES, SIZE_SPLIT, Scene, eval_scenes, shape_mask

TAU = 0.4


# ------------------------------------------------------------------------------ pixel analysis
def classify_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> (H, W) ints: -1 background, else index into COLOURS."""
    pal = np.array([PALETTE[c] for c in COLOURS], np.float32)
    dist = ((image[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    labels[image.max(-1) < 0.5] = -1
    return labels


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (the object without stray pixels)."""
    if not mask.any():
        return mask
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:  # every pixel takes the largest label among itself and its 4 neighbours
        p = np.pad(labels, 1)
        grown = np.maximum.reduce(
            [p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        )
        grown = np.where(mask, grown, 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def classify_shape(mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> str | None:
    """The shape whose template, fitted to the mask's bounding box, overlaps it best (IoU);
    None for an (almost) empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    half = (w + h) / 4
    radius = {"circle": half, "square": half / 0.9, "triangle": h / 2, "diamond": half}
    best, best_iou = None, -1.0
    for shape in shapes:
        template = shape_mask(shape, cx, cy, radius[shape], mask.shape[0])
        score = iou(template, mask)
        if score > best_iou:
            best, best_iou = shape, score
    return best


AREA = {"circle": math.pi, "square": 3.24, "triangle": 2.0, "diamond": 2.0}  # area / r^2


def size_ok(mask: np.ndarray, shape: str, size_word: str, n_objects: int) -> bool:
    """Whether the object's radius (from its area, for its named shape) lies on the named side
    of the small/big split."""
    r = math.sqrt(mask.sum() / AREA[shape]) / mask.shape[0]
    return r < SIZE_SPLIT[n_objects] if size_word == "small" else r >= SIZE_SPLIT[n_objects]


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


def adherence(
    scene: Scene, image: np.ndarray, shapes: tuple[str, ...] = SHAPES
) -> dict[str, list[bool]]:
    """Per-object colour / shape / position / size correctness of one generated image
    (``shapes``: the shape words the model knows)."""
    labels = classify_pixels(image)
    out: dict[str, list[bool]] = {"colour": [], "shape": [], "position": [], "size": []}
    fg = labels >= 0
    for obj, mask in zip(scene.objects, generated_masks(scene, image), strict=True):
        own = labels == COLOURS.index(obj.colour)
        if len(scene.objects) == 1:
            counts = np.bincount(labels[fg], minlength=len(COLOURS)) if fg.any() else None
            ok = counts is not None and int(counts.argmax()) == COLOURS.index(obj.colour)
        else:
            ok = int(own.sum()) >= 6
        out["colour"].append(bool(ok))
        mine = largest_component(own if len(scene.objects) == 2 else mask)
        out["shape"].append(classify_shape(mine, shapes) == obj.shape)
        if obj.position is not None:
            out["position"].append(position_ok(mine, obj.position))
        if obj.size_word is not None:
            out["size"].append(size_ok(mine, obj.shape, obj.size_word, len(scene.objects)))
    return out


# ------------------------------------------------------------------------------ token maps
def daam_binary(heat: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Min-max normalise an (H, W) map and threshold it at tau."""
    return minmax(heat.float()) >= tau


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
    """Forward hooks on every down/up ``attn2`` that keep each head's cross-attention
    probabilities (``capture.attention.softmax_scores``) of the conditional batch half per
    batch item, summed over forwards, and aggregate them as DAAM 0.2.0 does (``sum``, by
    ``capture.aggregate.daam_average``). Used during training, and as an independent check of
    ``unetviz.capture``'s ``"daam"`` preset (which averages the batch)."""

    def __init__(self, unet: nn.Module, size: int, cond_half: bool = True):
        self.size = size
        self.cond_half = cond_half
        self.sums: dict[str, torch.Tensor] = {}  # (B, heads, h, w, T)
        self.handles = [
            m.register_forward_hook(self._hook(n))
            for n, m in unet.named_modules()
            if n.endswith("attn2") and not n.startswith("mid_block")
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            hs, ctx = args[0], args[1]
            if self.cond_half:
                hs, ctx = hs[hs.shape[0] // 2 :], ctx[ctx.shape[0] // 2 :]
            probs = softmax_scores(module, module.to_q(hs), module.to_k(ctx))  # (b, heads, n, T)
            b, heads, n, t = probs.shape
            side = int(math.isqrt(n))
            maps = probs.reshape(b, heads, side, side, t)
            self.sums[name] = maps if name not in self.sums else self.sums[name] + maps

        return hook

    @property
    def sum(self) -> torch.Tensor:  # computed on every access: read it once
        """DAAM aggregate (B, T, size, size) at this image size's DAAM grid (96 x 96 unless
        512 / 1024 px), resized to ``size`` if that differs (DAAM's ``expand_as``)."""
        out = daam_average(list(self.sums.values()), daam_latent_hw(self.size))
        if out.shape[-1] != self.size:
            out = F.interpolate(out, size=(self.size, self.size), mode="bicubic")
        return out

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


def score_scenes(
    scenes: list[Scene],
    images: np.ndarray,
    maps: list[dict[str, torch.Tensor]],
    shapes: tuple[str, ...] = SHAPES,
) -> dict[str, Any]:
    """Adherence and localisation for generated ``images`` (N, H, W, 3 in [0, 1]) with
    per-scene word maps (``{word: (H, W) map}``)."""
    size = images.shape[1]
    blob = daam_binary(centred_blob(size))
    acc: dict[str, list[bool]] = {"colour": [], "shape": [], "position": [], "size": []}
    ious: dict[str, list[float]] = {"noun": [], "colour": [], "blob_noun": [], "blob_colour": []}
    for scene, image, word_maps in zip(scenes, images, maps, strict=True):
        for key, vals in adherence(scene, image, shapes).items():
            acc[key] += vals
        for obj, mask in zip(scene.objects, generated_masks(scene, image), strict=True):
            for kind, word in (("noun", obj.shape), ("colour", obj.colour)):
                ious[kind].append(iou(daam_binary(word_maps[word]), mask))
                ious[f"blob_{kind}"].append(iou(blob, mask))
    out: dict[str, Any] = {f"{k}_acc": float(np.mean(v)) if v else None for k, v in acc.items()}
    out.update({f"{k}_miou": float(np.mean(v)) for k, v in ious.items()})
    return out


def _known_shapes(words: Any) -> tuple[str, ...]:
    return tuple(s for s in SHAPES if s in words)


def _conditioning(text_encoder: nn.Module, tokenizer: Any, captions: list[str], image_size: int):
    """Cross-attention states and (for a ``text_time`` UNet) added conditions of captions."""
    from unetviz.pipelines.demo import added_conditions

    hidden, pooled = text_encoder.encode(tokenizer(captions))
    return hidden, None if pooled is None else added_conditions(pooled, image_size)


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
    vae: nn.Module | None = None,
    words: Any = None,
) -> dict[str, Any]:
    """Generate ``n`` one-object and ``n`` two-object eval captions in one batch each (hooks,
    no capture) and score them; keys are prefixed ``one_`` and ``two_``. With ``vae`` the
    UNet works on latents and the decoded images are scored."""
    from unetviz.pipelines.demo import sample

    factor = vae.config.downsampling_factor if vae is not None else 1
    size = int(unet.config.sample_size) * factor
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, size, n_obj, words=words or tokenizer.words)
        captions = [s.caption for s in scenes]
        cond, added = _conditioning(text_encoder, tokenizer, captions, size)
        uncond, added_u = _conditioning(text_encoder, tokenizer, [""], size)
        pair = None if added is None else (added_u, added)
        gen = torch.Generator().manual_seed(seed + n_obj)
        with probe(unet, size) as p:
            x = sample(unet, schedule, cond, uncond, gen, steps, guidance, None, None, pair)
        if vae is not None:
            x = torch.cat([vae.decode(vae.unscale(c)) for c in x.split(16)])
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        maps, summed = [], p.sum  # the aggregation runs once, not per word
        for i, caption in enumerate(captions):
            _, labels, _ = tokenizer.encode(caption)
            maps.append(
                {w: summed[i, labels.index(w)] for w in set(labels) if w in SHAPES + COLOURS}
            )
        shapes = _known_shapes(words or tokenizer.words)
        for k, v in score_scenes(scenes, images, maps, shapes).items():
            result[prefix + k] = None if v is None else round(v, 4)
    parts = (unet, text_encoder, tokenizer, schedule)
    result.update(teacher_forced_iou(*parts, n, seed=seed, vae=vae, words=words))
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
    vae: nn.Module | None = None,
    words: Any = None,
) -> dict[str, Any]:
    """Localisation against the exact rendered masks: dataset images (their latents, with a
    ``vae``) noised to ``timesteps``, one conditional forward each, DAAM maps summed over
    them, IoU per noun / colour word."""
    from unetviz.pipelines.demo import unet_input

    factor = vae.config.downsampling_factor if vae is not None else 1
    size = int(unet.config.sample_size) * factor
    blob = daam_binary(centred_blob(size))
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, size, n_obj, words=words or tokenizer.words)
        x0 = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2) * 2 - 1
        if vae is not None:
            x0 = torch.cat([vae.scale(vae.encode(c)[0]) for c in x0.split(16)])
        cond, added = _conditioning(text_encoder, tokenizer, [s.caption for s in scenes], size)
        gen = torch.Generator().manual_seed(seed + n_obj)
        with probe(unet, size, cond_half=False) as p:
            for t in timesteps:
                noise = torch.randn(x0.shape, generator=gen)
                x_t, _ = schedule.add_noise(x0, noise, torch.full((n,), t))
                unet(unet_input(unet, x_t), torch.tensor(t), cond, added_cond_kwargs=added)
        ious: dict[str, list[float]] = {"noun": [], "colour": [], "blob": []}
        summed = p.sum
        for i, scene in enumerate(scenes):
            labels = tokenizer.encode(scene.caption)[1]
            for obj in scene.objects:
                ious["blob"].append(iou(blob, obj.mask))
                for kind, word in (("noun", obj.shape), ("colour", obj.colour)):
                    ious[kind].append(iou(daam_binary(summed[i, labels.index(word)]), obj.mask))
        for k, v in ious.items():
            result[f"tf_{prefix}{k}_miou"] = round(float(np.mean(v)), 4)
    return result


def evaluate_pipeline(
    pipe: Any, n: int = 16, steps: int = 25, guidance: float = 4.0, words: Any = None
) -> dict:
    """Score a demo pipeline through its public call: ``pipe(caption, seed=i)`` per caption,
    maps from ``run.trace.heatmap(word, preset="daam")`` (the capture code path); ``words``
    restricts the captions to another vocabulary (e.g. v1's, to compare models)."""
    words = words or pipe.tokenizer.words
    result: dict[str, Any] = {}
    for n_obj, prefix in ((1, "one_"), (2, "two_")):
        scenes = eval_scenes(n, pipe.size, n_obj, words=words)
        images, maps = [], []
        for i, scene in enumerate(scenes):
            run = pipe(scene.caption, seed=i, steps=steps, guidance=guidance, daam=True)
            images.append(np.asarray(run.image, np.float32) / 255)
            scored = [w for w in set(run.words) if w in SHAPES + COLOURS]
            maps.append({w: run.trace.heatmap(w, preset="daam", size=pipe.size) for w in scored})
        shapes = _known_shapes(words)
        for k, v in score_scenes(scenes, np.stack(images), maps, shapes).items():
            result[prefix + k] = None if v is None else round(v, 4)
    return result


def full_eval(
    folder: str | Path,
    n: int = 32,
    steps: int = 25,
    guidance: float = 4.0,
    fast: bool = False,
    words: Any = None,
) -> dict[str, Any]:
    """The scores of a demo model folder: generation through the pipeline and capture (or,
    with ``fast``, batched generation with hooks), plus teacher-forced localisation."""
    from unetviz.pipelines.demo import DemoPipeline

    pipe = DemoPipeline(folder)
    parts = (pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.schedule)
    if fast:
        return quick_eval(*parts, n=n, steps=steps, guidance=guidance, vae=pipe.vae, words=words)
    scores = evaluate_pipeline(pipe, n, steps, guidance, words)
    scores.update(teacher_forced_iou(*parts, n=n, vae=pipe.vae, words=words))
    return scores


def format_scores(scores: dict[str, Any]) -> str:
    """A plain-text table of the scores (one / two objects, with the centred-blob baseline)."""
    lines = [f"{'':<30}{'one object':>12}{'two objects':>13}"]
    for key in ("colour_acc", "shape_acc", "position_acc", "size_acc", "noun_miou", "colour_miou"):
        one, two = scores.get("one_" + key), scores.get("two_" + key)
        cells = "".join(
            f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in ((one, 12), (two, 13))
        )
        lines.append(f"{key:<30}{cells}")
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
    p.add_argument("--model", default=str(DEMO_DIR), help="a demo-format folder (default: shipped)")
    p.add_argument("--n", type=int, default=32, help="captions per set (one- and two-object)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="batched generation with hooks")
    p.add_argument(
        "--words-from", default=None, help="caption vocabulary of another demo folder (compare)"
    )
    p.add_argument("--json", default=None, help="also write the scores to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    words = None
    if args.words_from:
        from unetviz.pipelines.demo import WordTokenizer

        words = WordTokenizer.load(Path(args.words_from) / "tokenizer").words
    scores = full_eval(args.model, args.n, args.steps, args.guidance, args.fast, words)
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

"""Ship a trained checkpoint: ``python -m unetviz.training.ship runs/demo2/step_N``.

Copies the diffusers-style folder (unet/, text_encoder/, tokenizer/, scheduler/, vae/), scores
it with ``evaluate.full_eval`` (pipeline + capture) and writes ``model_card.md`` (data, model
with its latent shapes, training, scores vs the targets and the centred-blob baseline, the score
curve from ``evals.jsonl``) plus ``scores.json``. The destination (default: the shipped
``DEMO_DIR`` inside the package) is replaced as a whole.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from unetviz.outputs import write_folder
from unetviz.pipelines.demo import DEMO_DIR, SPECIALS, load_demo_parts, load_demo_vae

from .evaluate import full_eval

# the demo model's score targets (one object / two objects)
TARGETS = {
    "one_noun_miou": 0.75,
    "two_noun_miou": 0.65,
    "one_colour_miou": 0.80,
    "two_colour_miou": 0.75,
    "one_colour_acc": 0.95,
    "two_colour_acc": 0.95,
    "one_shape_acc": 0.90,
    "two_shape_acc": 0.85,
    "one_position_acc": 0.80,
    "two_position_acc": 0.70,
    "one_size_acc": 0.80,
}
PARTS = ("unet", "text_encoder", "tokenizer", "scheduler", "vae")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(scores: dict[str, Any]) -> str:
    rows = [
        "| metric | one object | two objects | target | centred blob (1 / 2) |",
        "|---|---|---|---|---|",
    ]
    for key, name in (
        ("noun_miou", "noun mIoU (DAAM, generated)"),
        ("colour_miou", "colour-word mIoU (DAAM, generated)"),
        ("colour_acc", "colour adherence"),
        ("shape_acc", "shape adherence"),
        ("position_acc", "position adherence"),
        ("size_acc", "size adherence"),
    ):
        targets = [TARGETS.get(f"{n}_{key}") for n in ("one", "two")]
        target = " / ".join("-" if t is None else f">= {t}" for t in targets)
        blob = ""
        if key.endswith("miou"):
            blob = f"{scores['one_blob_noun_miou']:.3f} / {scores['two_blob_noun_miou']:.3f}"
        one, two = (_fmt(scores.get(f"{n}_{key}")) for n in ("one", "two"))
        rows.append(f"| {name} | {one} | {two} | {target} | {blob} |")
    for key, name in (
        ("noun_miou", "noun mIoU (teacher-forced, exact masks)"),
        ("colour_miou", "colour-word mIoU (teacher-forced, exact masks)"),
    ):
        blob = f"{scores['tf_one_blob_miou']:.3f} / {scores['tf_two_blob_miou']:.3f}"
        rows.append(
            f"| {name} | {scores['tf_one_' + key]:.3f} | {scores['tf_two_' + key]:.3f} | | {blob} |"
        )
    return "\n".join(rows)


def _curve(evals: Path) -> str:
    """The quick-eval curve (UNet phase) and the autoencoder's held-out error."""
    if not evals.is_file():
        return "(no evals.jsonl)"
    rows = [
        "| step | minutes | colour acc 1/2 | shape acc 1/2 | position acc 1/2 | size acc 1 "
        "| noun mIoU 1/2 | colour mIoU 1/2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    vae: list[str] = []
    decoder: list[str] = []
    for line in evals.read_text().splitlines():
        e = json.loads(line)
        if e.get("phase") in ("vae", "decoder"):
            (vae if e["phase"] == "vae" else decoder).append(
                f"step {e['step']}: {e['mae_255']:.2f}"
            )
            continue
        pair = [
            f"{_fmt(e.get('one_' + k))} / {_fmt(e.get('two_' + k))}"
            for k in ("colour_acc", "shape_acc", "position_acc")
        ]
        rows.append(
            f"| {e['step']} | {e['minutes']:.0f} | {' | '.join(pair)} | {_fmt(e.get('one_size_acc'))} "
            f"| {_fmt(e['one_noun_miou'])} / {_fmt(e['two_noun_miou'])} "
            f"| {_fmt(e['one_colour_miou'])} / {_fmt(e['two_colour_miou'])} |"
        )
    text = "\n".join(rows) + "\n\nAutoencoder held-out MAE (0-255): " + "; ".join(vae)
    if decoder:
        text += "\n\nDecoder fine-tune (encoder frozen), held-out MAE: " + "; ".join(decoder)
    return text


def model_card(src: Path, scores: dict[str, Any], info: dict[str, Any], evals: Path) -> str:
    """The markdown model card for a shipped checkpoint (``model_card.md`` beside the
    weights); the hand-written sections come from ``card.md`` in this package."""
    cfg = json.loads((src / "unet" / "config.json").read_text())
    vae = json.loads((src / "vae" / "config.json").read_text())
    te = json.loads((src / "text_encoder" / "config.json").read_text())
    causal = te.get("causal", True)
    te_kind = "causal" if causal else "bidirectional (padding masked)"
    vocab = json.loads((src / "tokenizer" / "vocab.json").read_text())["vocab"]
    words = [w for w in vocab if w not in SPECIALS]
    met = [k for k, v in TARGETS.items() if (scores.get(k) or 0) >= v]
    missed = [
        f"{k} {_fmt(scores[k])} < {v}"
        for k, v in TARGETS.items()
        if k not in met and scores.get(k) is not None
    ]
    unscored = [k for k in TARGETS if scores.get(k) is None]  # a word class it does not have
    template = (Path(__file__).parent / "card.md").read_text()
    return template.format(
        unet_params=f"{info['unet_params'] / 1e6:.2f}",
        vae_params=f"{info['vae_params'] / 1e6:.2f}",
        cfg=cfg,
        vae=vae,
        te=te,
        te_kind=te_kind,
        inputs=_inputs(cfg, vae),
        n_words=len(words),
        words=", ".join(f"`{w}`" for w in words),
        info=info,
        table=_table(scores),
        met=", ".join(met) or "none",
        missed=", ".join(missed) or "none",
        unscored=", ".join(unscored) or "none",
        curve=_curve(evals),
        training=_notes(evals.parent / "card_training.md"),
        limits=_notes(evals.parent / "card_limits.md"),
    )


def _inputs(cfg: dict[str, Any], vae: dict[str, Any]) -> str:
    """What the UNet's input channels are: latents, plus (CoordConv) x/y coordinates."""
    extra = cfg["in_channels"] - vae.get("latent_channels", 4)
    if extra == 2:
        return (
            "latents plus two coordinate channels, x and y from -1 to 1, appended by the "
            "pipeline (CoordConv): without them the model never learned position words"
        )
    return "latents; no coordinate channels"


def _notes(path: Path) -> str:
    """Hand-written card sections kept beside the run (what changed when, what is missing)."""
    return path.read_text().strip() if path.is_file() else f"(no {path.name} in the run folder)"


def ship(src: str | Path, dest: str | Path = DEMO_DIR, n: int = 32, steps: int = 25) -> dict:
    """Copy ``src`` to ``dest`` with a model card and scores; returns the scores."""
    src, dest = Path(src), Path(dest)
    torch.set_num_threads(1)
    t0 = time.time()
    unet = load_demo_parts(src)[0]
    scores = full_eval(src, n=n, steps=steps)
    vae = load_demo_vae(src)
    vae_params = sum(p.numel() for p in vae.parameters()) if vae is not None else 0
    run_dir = src.parent
    info: dict[str, Any] = {"eval_n": n, "eval_s": time.time() - t0}
    info["unet_params"] = sum(p.numel() for p in unet.parameters())
    info["vae_params"] = vae_params
    state = src / "train_state.json"
    step = int(src.name.split("_")[1]) if src.name.startswith("step_") else None
    evals = run_dir / "evals.jsonl"
    if state.is_file():
        info.update(json.loads(state.read_text()))
    elif evals.is_file():
        for line in evals.read_text().splitlines():
            e = json.loads(line)
            if e["step"] == step:
                info.update(step=e["step"], minutes=e["minutes"])
    info.setdefault("step", step)
    info.setdefault("minutes", float("nan"))
    if (run_dir / "args.json").is_file():
        info.update(json.loads((run_dir / "args.json").read_text()))

    def fill(tmp: Path) -> None:
        for part in PARTS:
            if (src / part).is_dir():
                shutil.copytree(src / part, tmp / part)
        scores_text = json.dumps(dict(scores, step=info["step"]), indent=1) + "\n"
        (tmp / "scores.json").write_text(scores_text)
        (tmp / "model_card.md").write_text(model_card(src, scores, info, evals))

    # unetviz.outputs rules: a folder unetviz did not write is never deleted; the package's own
    # demo folder (no marker: it comes from git) is written into, replacing same-named files
    write_folder(dest, fill, force=dest.resolve() == DEMO_DIR.resolve())
    return scores


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a demo folder written by training, e.g. runs/demo2/step_4000")
    p.add_argument("--dest", default=str(DEMO_DIR))
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--steps", type=int, default=25)
    args = p.parse_args(argv)
    scores = ship(args.src, args.dest, args.n, args.steps)
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()

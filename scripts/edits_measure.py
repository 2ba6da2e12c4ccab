"""Does re-weighting a word do what it says on the demo model? (issue 14's measurement)

Through the public API only: for every one-object caption the model's vocabulary allows
(colour x shape, with and without a position word; 24+ prompts), seed 0, 25 steps:

- Reweight(colour, 0) over all layers: is the object's colour (the palette colour most
  foreground pixels are nearest to) no longer the prompted one?
- Reweight(colour, 1): is the image bit-identical to the unedited one?
- Reweight(noun, 0): shape adherence (the demo evaluation's shape reader) before and after.
- Reweight(colour, -2) and masking-free checks, to say where the colour comes from.

    .venv/bin/python scripts/edits_measure.py [--steps 25] [--limit 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import unetviz
from unetviz import edits
from unetviz.training.edit_scores import demo_scores, dominant_colour

LIGHT = {"detail": "blocks", "attention": False, "temb": False}


def prompts(known: set[str]) -> list[tuple[str, str, str]]:
    from unetviz.training.data import COLOURS, POSITIONS, SHAPES

    out = []
    for where in (None, *[p for p in POSITIONS[:2] if p in known]):
        for colour in [c for c in COLOURS if c in known]:
            for shape in [s for s in SHAPES if s in known]:
                text = f"a {colour} {shape}" + (f" on the {where}" if where else "")
                out.append((text, colour, shape))
    return out


def measure(pipe, text: str, colour: str, shape: str, steps: int) -> dict:
    def run(chosen):
        return pipe(text, seed=0, steps=steps, edits=chosen or None, **LIGHT)

    base = run([])
    c0 = run([edits.Reweight(colour, 0.0)])
    c1 = run([edits.Reweight(colour, 1.0)])
    cneg = run([edits.Reweight(colour, -2.0)])
    n0 = run([edits.Reweight(shape, 0.0)])
    return {
        "prompt": text,
        "base_colour": dominant_colour(base.image),
        "c0_colour": dominant_colour(c0.image),
        "c0_changed": dominant_colour(c0.image) != colour,
        "c0_pixel_change": float(np.abs(_px(c0) - _px(base)).mean() / 255),
        "c1_identical": bool(np.array_equal(_px(c1), _px(base))),
        "cneg_colour": dominant_colour(cneg.image),
        "shape_base": demo_scores(text, base.image)["shape_ok"],
        "shape_n0": demo_scores(text, n0.image)["shape_ok"],
    }


def _px(run) -> np.ndarray:
    return np.asarray(run.image, np.int16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--limit", type=int, default=0, help="first N prompts only (0: all)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = unetviz.load_pipeline("demo")
    items = prompts(set(pipe.tokenizer.words))
    items = items[: args.limit] if args.limit else items
    start = time.perf_counter()
    print(f"{'prompt':34} base    c=0     c=0 d   c=1 same  c=-2    shape  shape n=0")
    rows = []
    for item in items:  # one line per prompt as it is measured
        r = measure(pipe, *item, args.steps)
        rows.append(r)
        print(
            f"{r['prompt']:34} {r['base_colour'] or '-':7} {r['c0_colour'] or '-':7} "
            f"{r['c0_pixel_change']:.3f}   {str(r['c1_identical']):9} {r['cneg_colour'] or '-':7} "
            f"{r['shape_base']:.2f}   {r['shape_n0']:.2f}",
            flush=True,
        )
    n = len(rows)
    shape_base = float(np.mean([r["shape_base"] for r in rows]))
    shape_n0 = float(np.mean([r["shape_n0"] for r in rows]))
    summary = {
        "prompts": n,
        "steps": args.steps,
        "colour_changed_by_reweight_0": sum(r["c0_changed"] for r in rows) / n,
        "identical_with_reweight_1": sum(r["c1_identical"] for r in rows) / n,
        "colour_changed_by_reweight_minus2": sum(
            r["cneg_colour"] != r["prompt"].split()[1] for r in rows
        )
        / n,
        "shape_adherence_base": shape_base,
        "shape_adherence_noun_0": shape_n0,
        "shape_adherence_drop": shape_base - shape_n0,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        from unetviz.outputs import write_file

        write_file(args.json, json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

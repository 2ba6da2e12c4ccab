"""Sweep: one edit per block, layer or skip, each run with the same seed, scored against the
unedited run: "which parts matter for this prompt (or for this word)?".

The per-target score is the mean absolute pixel change (RGB in [0, 1]); a ``score`` callable
``score(prompt, image) -> {name: value}`` adds columns (on the demo model: whether colour,
shape and position stay as prompted, from the demo evaluation's pixel readers). The result is
saved with the unedited run's trace (``trace.meta["sweep"]``) and fills the architecture
diagram (:func:`unetviz.render.edits.sweep_diagram`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .model_map import ModelMap
from .session import pixel_diff
from .spec import (
    AblateBlock,
    AblateSkip,
    Edit,
    EditError,
    Reweight,
    ScaleTemb,
    check_mode,
    check_scale,
    names,
)

OVER = ("blocks", "layers", "skips")
KINDS = ("ablate", "reweight", "temb")
#: capture settings of the edited runs: only the image is needed from them
LIGHT = {"detail": "blocks", "attention": False, "temb": False}

Score = Callable[[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Sweep:
    """``over`` "blocks" (down/mid/up blocks), "layers" (their resnets, transformers,
    samplers) or "skips"; ``edit`` "ablate" (AblateBlock / AblateSkip with ``mode``),
    "reweight" (``Reweight(word, scale, layers=target)``, targets holding cross-attention) or
    "temb" (``ScaleTemb(target, scale)``, targets holding resnets). ``targets`` narrows the
    list (names, or skip indices for "skips"; one string is one name; at most
    ``spec.MAX_NAMES``)."""

    over: str = "blocks"
    edit: str = "ablate"
    mode: str | float = "mean"
    word: str | None = None
    scale: float = 0.0
    targets: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.over, str) or self.over not in OVER:
            raise EditError(f"Sweep over={self.over!r}: expected one of {list(OVER)}")
        if not isinstance(self.edit, str) or self.edit not in KINDS:
            raise EditError(f"Sweep edit={self.edit!r}: expected one of {list(KINDS)}")
        if self.over == "skips" and self.edit != "ablate":
            raise EditError("Sweep over='skips' ablates each skip: use edit='ablate'")
        if self.word is not None and (not isinstance(self.word, str) or not self.word.strip()):
            raise EditError(f"Sweep word={self.word!r}: expected a word of the prompt")
        if self.edit == "reweight" and not self.word:
            raise EditError("Sweep edit='reweight' needs word= (the prompt word to re-weight)")
        check_mode(self.mode)
        object.__setattr__(self, "scale", check_scale(self.scale, "Sweep scale"))
        if self.targets is not None:  # one string is one target; at most MAX_NAMES
            targets = names(self.targets, "Sweep targets", ints=self.over == "skips")
            object.__setattr__(self, "targets", targets)

    def plan(self, mm: ModelMap) -> list[tuple[str, Edit]]:
        """(target label, edit) pairs for this model, in forward order."""
        if self.over == "skips":
            skips = mm.skips
            if self.targets is not None:
                skips = [mm.skip(t, "Sweep targets") for t in self.targets]
            return [(f"skip {s.index}", AblateSkip(s.index, self.mode)) for s in skips]
        names = mm.blocks if self.over == "blocks" else mm.layers
        if self.targets is not None:
            for t in self.targets:
                mm.module(t, "Sweep targets")
            names = list(self.targets)
        plan = []
        for name in names:
            if self.edit == "ablate":
                plan.append((name, AblateBlock(name, self.mode)))
            elif self.edit == "reweight":
                if any(c == name or c.startswith(name + ".") for c in mm.cross):
                    plan.append((name, Reweight(self.word, self.scale, layers=name)))
            elif any(r == name or r.startswith(name + ".") for r in mm.resnets):
                plan.append((name, ScaleTemb(name, self.scale)))
        if not plan:
            raise EditError(f"Sweep {self.edit!r} over {self.over!r}: no target fits this model")
        return plan

    def describe(self) -> dict[str, Any]:
        return {
            "over": self.over,
            "edit": self.edit,
            "mode": self.mode,
            "word": self.word,
            "scale": self.scale,
            "targets": list(self.targets) if self.targets is not None else None,
        }

    def run(
        self,
        pipe: Any,
        prompt: str,
        seed: int = 0,
        score: Score | None = None,
        progress: Callable[[int, int], None] | None = None,
        **call: Any,
    ) -> SweepResult:
        """Run the unedited prompt (fully captured) and one edited run per target."""
        plan = self.plan(ModelMap(pipe.unet))
        start = time.perf_counter()
        base = pipe(prompt, seed=seed, **call)
        base_scores = score(prompt, base.image) if score else {}
        rows = []
        for i, (target, edit) in enumerate(plan):
            run = pipe(prompt, seed=seed, edits=[edit], **{**call, **LIGHT})
            row: dict[str, Any] = {
                "target": target,
                "edit": edit.describe(),
                "change": round(float(pixel_diff(base.image, run.image).mean()), 6),
            }
            row.update(score(prompt, run.image) if score else {})
            rows.append(row)
            if progress is not None:
                progress(i + 1, len(plan))
        result = SweepResult(self, prompt, seed, base, rows, base_scores)
        result.seconds = time.perf_counter() - start
        base.trace.meta["sweep"] = result.describe()
        return result


@dataclass
class SweepResult:
    """Rows ``{target, edit, change, ...score columns}``; ``base`` the unedited Run, whose
    trace carries the sweep in ``meta["sweep"]`` (saved with it)."""

    sweep: Sweep
    prompt: str
    seed: int
    base: Any
    rows: list[dict[str, Any]]
    base_scores: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def values(self) -> dict[str, float]:
        """target -> mean absolute pixel change."""
        return {r["target"]: r["change"] for r in self.rows}

    def describe(self) -> dict[str, Any]:
        return {
            **self.sweep.describe(),
            "prompt": self.prompt,
            "seed": self.seed,
            "score": "mean abs pixel change (RGB in [0, 1])",
            "base_scores": self.base_scores,
            "rows": self.rows,
        }

    def to_json(self) -> str:
        return json.dumps(self.describe(), indent=1) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:  # the edit (a dict) as one JSON cell
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()}
            )
        return buf.getvalue()


def sweep(pipe: Any, prompt: str, seed: int = 0, **kwargs: Any) -> SweepResult:
    """``sweep(pipe, prompt, over="blocks", edit="ablate", mode="mean", ...)``: build a
    :class:`Sweep` from its fields and run it; other keywords go to ``Sweep.run``."""
    names = {"over", "edit", "mode", "word", "scale", "targets"}
    spec = Sweep(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
    return spec.run(pipe, prompt, seed=seed, **kwargs)

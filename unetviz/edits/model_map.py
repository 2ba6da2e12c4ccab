"""What an edit may name in a model: blocks, layers, resnets, attention layers, skips, tokens.

Read from the module tree alone (diffusers' names: unetviz's UNet and diffusers'
``UNet2DConditionModel`` alike), so every edit is checked before any forward, and an edit
naming something absent fails with a message listing what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..capture.plan import plan_of
from ..capture.shapes import is_attention as capture_is_attention
from ..names import LOCATIONS, forward_rank, is_block, location_of
from ..tokens import match_key
from .spec import EditError


def is_attention(module: nn.Module) -> bool:
    """An attention layer capture knows, with the ``to_v`` / ``to_out`` an edit needs."""
    return capture_is_attention(module) and all(
        isinstance(getattr(module, a, None), nn.Module) for a in ("to_v", "to_out")
    )


@dataclass(frozen=True)
class Skip:
    """One skip tensor: pushed by ``source`` at stack position ``index``, concatenated (as the
    last channels of its input) by up-block resnet ``target``."""

    index: int
    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.index}: {self.source} -> {self.target}"


def _listing(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class ModelMap:
    """Names of one model's parts, in forward order."""

    def __init__(self, model: nn.Module):
        # forward order (down, mid, up): diffusers registers mid_block after up_blocks; the
        # names come from the model's cached plan (no tree walk per call)
        plan = plan_of(model)
        mods = dict(sorted(plan.modules.items(), key=lambda kv: forward_rank(kv[0])))
        self.modules = mods
        attn = sorted((n for n in plan.attention if is_attention(mods[n])), key=forward_rank)
        cross = set(plan.cross)
        self.cross = [n for n in attn if n in cross]
        self.selfs = [n for n in attn if n not in cross]
        self.resnets = sorted(plan.resnets, key=forward_rank)
        self.blocks = [n for n in mods if is_block(n)]
        self.layers = [
            f"{b}.{kind}.{j}"
            for b in self.blocks
            for kind, lst in mods[b].named_children()
            if isinstance(lst, nn.ModuleList)
            for j in range(len(lst))
        ]
        self.skips = _skips(model, mods)

    # ------------------------------------------------------------------ lookups
    def module(self, name: str, what: str) -> nn.Module:
        """The module called ``name``; else an error listing the blocks and layers."""
        if name in self.modules:
            return self.modules[name]
        near = [n for n in self.modules if n.startswith(name)] or self.blocks + self.layers
        raise EditError(
            f"{what}: this model has no module {name!r}; blocks and layers: {_listing(near)} "
            "(any submodule name works, e.g. '...transformer_blocks.0.attn2')"
        )

    def attention_layers(self, layers: Sequence[str] | None, cross: bool, what: str) -> list[str]:
        """attn2 (``cross``) or attn1 names under ``layers`` (None: all; 'down'/'mid'/'up')."""
        pool = self.cross if cross else self.selfs
        if layers is None:
            return list(pool)
        chosen: list[str] = []
        for want in layers:
            hits = [
                n
                for n in pool
                if (want in LOCATIONS and location_of(n) == want)
                or n == want
                or n.startswith(want + ".")
            ]
            if not hits:
                kind = "cross-attention (attn2)" if cross else "self-attention (attn1)"
                raise EditError(
                    f"{what}: layers {want!r} matches no {kind} layer of this model; expected "
                    f"one of {list(LOCATIONS)} or a name / prefix of: {_listing(pool)}"
                )
            chosen += [h for h in hits if h not in chosen]
        return chosen

    def resnets_under(self, target: str, what: str) -> list[str]:
        """Resnet ``target`` or every resnet under the block / prefix ``target`` ('all': all)."""
        if target == "all":
            return list(self.resnets)
        hits = [n for n in self.resnets if n == target or n.startswith(target + ".")]
        if not hits:
            raise EditError(
                f"{what}: {target!r} is no resnet and holds none; resnets: "
                f"{_listing(self.resnets)} (or a block such as {self.blocks[:1]}, or 'all')"
            )
        return hits

    def skip(self, key: int | str, what: str) -> Skip:
        """The skip at stack index ``key`` or matching ``"source -> target"`` (names/prefixes)."""
        listing = "; ".join(str(s) for s in self.skips)
        if isinstance(key, int):
            for s in self.skips:
                if s.index == key:
                    return s
            raise EditError(f"{what}: no skip {key} in this model; skips are {listing}")
        src, _, dst = (part.strip() for part in key.partition("->"))

        def hit(name: str, want: str) -> bool:
            return not want or name == want or name.startswith(want + ".")

        hits = [s for s in self.skips if hit(s.source, src) and hit(s.target, dst)]
        if len(hits) != 1:
            found = "matches no skip" if not hits else f"matches {len(hits)} skips"
            raise EditError(f"{what}: {key!r} {found}; skips are {listing}")
        return hits[0]


def _skips(model: nn.Module, mods: dict[str, nn.Module]) -> list[Skip]:
    """The skip stack from structure: conv_in, then per down block each layer's output (the
    transformer's if the layer has one, else the resnet's) and the downsampler's; each up-block
    resnet pops the top, in order (the wiring of diffusers' UNet2DConditionModel)."""
    if "conv_in" not in mods or not hasattr(model, "down_blocks"):
        return []
    stack = ["conv_in"]
    for i, block in enumerate(model.down_blocks):
        attns = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            kind = "attentions" if j < len(attns) else "resnets"
            stack.append(f"down_blocks.{i}.{kind}.{j}")
        if getattr(block, "downsamplers", None):
            stack.append(f"down_blocks.{i}.downsamplers.0")
    indexed = list(enumerate(stack))
    skips = []
    for i, block in enumerate(getattr(model, "up_blocks", [])):
        for j in range(len(block.resnets)):
            if not indexed:
                break
            index, source = indexed.pop()
            skips.append(Skip(index, source, f"up_blocks.{i}.resnets.{j}"))
    return sorted(skips, key=lambda s: s.index)


def token_indices(
    token: str | int, tokens: Sequence[str] | None, words: Sequence[str | None] | None
) -> list[int]:
    """Positions a Reweight addresses: a token index, every token of a prompt word (its BPE
    pieces merged, as ``trace.words`` holds them) or a token label."""
    if isinstance(token, int):
        if tokens is not None and token >= len(tokens):
            raise EditError(
                f"Reweight token index {token}: the prompt has {len(tokens)} token positions"
            )
        return [token]
    if tokens is None and words is None:
        raise EditError(
            f"Reweight({token!r}) names a word but the prompt's tokens are unknown: use a "
            "pipeline (pipe(prompt, edits=[...])), pass tokens=/words= to intervene, or give "
            "a token index"
        )
    want = token.strip().lower()
    hits = [i for i, w in enumerate(words or []) if w is not None and w.lower() == want]
    if not hits and tokens is not None:
        hits = [i for i, t in enumerate(tokens) if t.lower() == want or match_key(t) == want]
    if not hits:
        present = [w for w in dict.fromkeys(words or []) if w] or [
            t for t in dict.fromkeys(tokens or []) if not t.startswith("<")
        ]
        raise EditError(
            f"Reweight({token!r}): the prompt has no such word; its words are: "
            f"{', '.join(present) or '(none)'} (or give a token index)"
        )
    return hits

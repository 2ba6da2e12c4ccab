"""``intervene(unet, [edits...])``: change what flows through a UNet for the length of a ``with``.

An :class:`Intervention` plans (each edit checked against the model's names and the prompt's
tokens, resolved to one edit probe) and describes; its :class:`~unetviz.capture.probe.
ProbeSession` hooks the probes, as a capture's session hooks its recording probes: one
lifecycle. Composable with ``capture`` in one ``with`` in either order: edit probes are
prepended (``edits = True``), so on each module the edit runs before any capture hook and a
capture records what the edited model computed. Every hook is removed on exit (normal or
exception); parameters are never touched; with no edit nothing is hooked at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..callargs import MAX_STEPS, as_int
from ..capture.probe import Probe, ProbeSession
from .model_map import ModelMap, token_indices
from .probes import (
    OutputEdit,
    ReplaceEdit,
    ReweightEdit,
    SkipAblation,
    SourceRecorder,
    TembScale,
)
from .spec import (
    MAX_INDEX as MAX_TOKENS,
)
from .spec import (
    AblateBlock,
    AblateSkip,
    Edit,
    EditError,
    Patch,
    Replace,
    Reweight,
    ScaleTemb,
    check_edits,
    check_steps,
    window,
)


@dataclass
class Recording:
    """What a source run left for Patch / Replace: per forward index, module outputs and
    post-softmax attention probabilities (conditional half), only of the names asked for."""

    outputs: dict[str, dict[int, list[torch.Tensor]]] = field(default_factory=dict)
    attention: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    prompt: str | None = None
    tokens: list[str] | None = None
    words: list[str | None] | None = None

    def __repr__(self) -> str:
        return (
            f"Recording(prompt={self.prompt!r}, outputs={sorted(self.outputs)}, "
            f"attention={len(self.attention)} layers)"
        )

    def outputs_at(self, name: str, step: int) -> list[torch.Tensor]:
        try:
            return self.outputs[name][step]
        except KeyError:
            raise EditError(
                f"Patch {name}: the source run recorded no output at step {step} (recorded "
                f"steps: {sorted(self.outputs.get(name, {}))}): run it with as many steps"
            ) from None

    def attention_at(self, name: str, step: int) -> torch.Tensor:
        try:
            return self.attention[name][step]
        except KeyError:
            raise EditError(
                f"Replace {name}: the source run recorded no attention at step {step} "
                f"(recorded: {sorted(self.attention.get(name, {}))})"
            ) from None


class Intervention:
    """``with intervene(unet, edits, tokens=..., words=..., num_steps=...):`` see module doc.

    ``tokens`` / ``words``: the prompt's token labels and the word of each token (pipelines
    pass them) so ``Reweight("red", 0)`` finds its tokens; ``num_steps`` resolves step windows
    given as fractions; ``cfg`` says the batch is [uncond, cond] halves (None: any even batch);
    ``sources`` maps a Patch/Replace source prompt to its :class:`Recording` (pipelines run
    those). Every edit is checked here, before any forward.
    """

    def __init__(
        self,
        model: nn.Module,
        edits: Sequence[Edit] | Edit | None = None,
        *,
        tokens: Sequence[str] | None = None,
        words: Sequence[str | None] | None = None,
        num_steps: int | None = None,
        cfg: bool | None = None,
        sources: Mapping[str, Recording] | None = None,
        probes: Sequence[Probe] = (),
    ):
        if not isinstance(model, nn.Module):
            raise EditError(f"intervene needs a torch nn.Module (a UNet), got {type(model)!r}")
        self.model = model
        self.edits = check_edits(edits)
        self.tokens = _labels(tokens, "tokens", none_items=False)
        self.words = _labels(words, "words", none_items=True)
        if num_steps is not None:
            num_steps = as_int(num_steps, "num_steps", 1, MAX_STEPS, error=EditError)
        self.num_steps = num_steps
        self.cfg = cfg
        self.sources = dict(sources or {})
        self.map = ModelMap(model) if self.edits or probes else None  # no edit: no cost
        self.resolved: list[dict[str, Any]] = []
        self.probes: list[Probe] = list(probes)
        for edit in self.edits:
            self.probes.append(self._plan(edit))
        self.session = (
            ProbeSession(model, self.probes, cfg=cfg, error=EditError) if self.probes else None
        )
        self._entered = False

    # ------------------------------------------------------------------ planning
    def _plan(self, edit: Edit) -> Probe:
        what = repr(edit)
        if isinstance(edit, Reweight):
            layers = self.map.attention_layers(edit.layers, True, what)
            idx = token_indices(edit.token, self.tokens, self.words)
            self._note(edit, layer_count=len(layers), tokens=idx)
            return ReweightEdit(layers, idx, edit.scale, window(edit.steps, self.num_steps, what))
        if isinstance(edit, AblateSkip):
            skip = self.map.skip(edit.skip, what)
            self._note(edit, index=skip.index, source=skip.source, target=skip.target)
            w = window(edit.steps, self.num_steps, what)
            return SkipAblation(skip.source, skip.target, edit.mode, w)
        if isinstance(edit, AblateBlock):
            self.map.module(edit.name, what)
            self._note(edit)
            return OutputEdit(edit.name, window(edit.steps, self.num_steps, what), edit.mode)
        if isinstance(edit, ScaleTemb):
            resnets = self.map.resnets_under(edit.target, what)
            self._note(edit, resnets=resnets)
            return TembScale(resnets, edit.scale, window(edit.steps, self.num_steps, what))
        if isinstance(edit, Patch):
            self.map.module(edit.name, what)
            source = self._source(edit.source, what)
            self._note(edit)
            w = window(edit.steps, self.num_steps, what)
            return OutputEdit(edit.name, w, source=source, half=edit.half)
        if isinstance(edit, Replace):
            return self._plan_replace(edit, what)
        raise EditError(f"{what}: not an edit intervene knows")  # pragma: no cover

    def _plan_replace(self, edit: Replace, what: str) -> Probe:
        source = self._source(edit.source_prompt, what)
        cross = self.map.attention_layers(edit.layers, True, what)
        cw = window(edit.cross_steps, self.num_steps, what)
        sw = window(edit.self_steps, self.num_steps, what)
        layers: dict[str, tuple[int, int] | None] = {n: cw for n in cross}
        selfs = [n for n in self.map.attention_layers(edit.layers, False, what)]
        small = [n for n in selfs if self._queries(source, n) <= edit.self_max_queries]
        layers.update({n: sw for n in small})
        self._note(edit, cross_layers=len(cross), self_layers=small)
        return ReplaceEdit(layers, source)

    @staticmethod
    def _queries(source: Recording, name: str) -> int:
        maps = source.attention.get(name)
        return int(next(iter(maps.values())).shape[2]) if maps else 1 << 30

    def _source(self, source: Any, what: str) -> Recording:
        if isinstance(source, Recording):
            return source
        if isinstance(source, str) and source in self.sources:
            return self.sources[source]
        raise EditError(
            f"{what}: the source {source!r} has not been run; use a pipeline "
            "(pipe(prompt, edits=[...]) runs it with the same seed) or pass a Recording "
            "(unetviz.edits.record)"
        )

    def _note(self, edit: Edit, **resolved: Any) -> None:
        self.resolved.append({**edit.describe(), **resolved})

    # ------------------------------------------------------------------ runtime
    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready: each edit's fields plus what it resolved to in this model."""
        return [dict(r) for r in self.resolved]

    @property
    def meta(self) -> dict[str, Any]:
        """What a trace of this run records: ``{"edits": [...]}`` (nothing without edits)."""
        return {"edits": self.describe()} if self.edits else {}

    def __enter__(self) -> Intervention:
        if self._entered:
            raise EditError("an Intervention is entered once: call intervene(...) again")
        self._entered = True
        if self.session is not None:  # no edit: nothing hooked at all
            self.session.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.session is not None:
            self.session.close()


def _labels(value: Any, what: str, *, none_items: bool) -> list[Any] | None:
    """A prompt's token labels / words: a list of strings (words: or None), never a string."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise EditError(f"{what}={value!r}: expected a list of strings, one per token")
    items = list(value)
    if len(items) > MAX_TOKENS:
        raise EditError(f"{what} has {len(items)} items: expected at most {MAX_TOKENS}")
    for item in items:
        if not (isinstance(item, str) or (none_items and item is None)):
            raise EditError(f"{what}: item {item!r} is not a string")
    return items


#: ``intervene(unet, [edits...], ...)`` builds an :class:`Intervention`; one signature.
intervene = Intervention


class record:  # noqa: N801 - a context manager used like a function, as ``capture`` is
    """``with edits.record(unet, outputs=[names], attention=[attn names]) as rec:`` keeps, per
    forward (within ``steps``), only those module outputs and attention probabilities: the
    source of a Patch or Replace at the UNet level."""

    def __init__(
        self,
        model: nn.Module,
        outputs: Sequence[str] = (),
        attention: Sequence[str] = (),
        steps: Any = None,
        num_steps: int | None = None,
        cfg: bool | None = None,
    ):
        self.recording = Recording()
        mm = ModelMap(model)
        for name in list(outputs) + list(attention):
            mm.module(name, "record")
        w = window(check_steps(steps), num_steps, "record")
        probe = SourceRecorder(self.recording, list(outputs), list(attention), w)
        self.iv = Intervention(model, None, cfg=cfg, probes=[probe])

    def __enter__(self) -> Recording:
        self.iv.__enter__()
        return self.recording

    def __exit__(self, *exc: Any) -> None:
        self.iv.__exit__(*exc)

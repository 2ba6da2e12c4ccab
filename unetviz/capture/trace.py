"""The Trace: records of one capture, indexable like a cache, saved as one JSON + safetensors
bundle. It never holds a reference to the model (see docs/trace.md)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..outputs import atomic_file, write_folder
from ..presenters import present
from . import aggregate
from .aggregate import MapCache
from .bundle import (
    FORMAT,
    IMAGE_NAME,
    JSON_NAME,
    TENSORS_NAME,
    VERSION,
    check_state,
    image_png,
    read_bundle,
)
from .errors import MemoryBudgetError, TraceError
from .features import FeatureRecord, features_from_state, features_state
from .records import (
    AttentionRecord,
    BlockRecord,
    SelfAttentionRecord,
    SkipRecord,
    TembRecord,
    block_of,
    location_of,
)

_TENSOR_FIELDS = ("maps", "sum", "head_sum")


# ---------------------------------------------------------------------------------- trace
class Trace:
    """Everything one capture recorded. See docs/trace.md for the contract.

    ``trace[name]`` gives the AttentionRecord of an attn2 name, the SelfAttentionRecord of a
    captured attn1 name, else the BlockRecord.
    """

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.blocks: list[BlockRecord] = []
        self.skips: list[SkipRecord] = []
        self.timesteps: list[float | None] = []
        self.temb: list[TembRecord] = []
        self.temb_sources: list[dict[str, Any]] = []
        self.temb_vectors: dict[str, torch.Tensor] = {}
        self.attention: dict[str, AttentionRecord] = {}
        self.self_attention: dict[str, SelfAttentionRecord] = {}
        self.tokens: list[str] = []
        self.words: list[str | None] = []
        #: per block: output feature pictures per step (``capture(features=...)``)
        self.features: dict[str, FeatureRecord] = {}
        self._index: dict[str, BlockRecord] = {}
        #: stacked maps for re-aggregation (owned and keyed by ``aggregate.MapCache``)
        self.cache = MapCache()

    def clear_cache(self) -> None:
        """Forget stacked maps (after the records changed: the capture does this on exit)."""
        self.cache.clear()

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, name: str) -> BlockRecord | AttentionRecord | SelfAttentionRecord:
        if name in self.attention:
            return self.attention[name]
        if name in self.self_attention:
            return self.self_attention[name]
        if len(self._index) != len(self.blocks):
            self._index = {b.name: b for b in self.blocks}
        if name in self._index:
            return self._index[name]
        known = list(self._index) + list(self.attention) + list(self.self_attention)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"no record named {name!r} in this trace ({len(known)} names){hint}")

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def names(self) -> list[str]:
        """Block record names in first-call order."""
        return [b.name for b in self.blocks]

    @property
    def steps(self) -> int:
        """Number of captured forwards."""
        return len(self.timesteps)

    def temb_for(self, block: str) -> list[TembRecord]:
        """The temb records of one resnet, in step order."""
        return [r for r in self.temb if r.block == block]

    def __repr__(self) -> str:
        captured = sum(1 for a in self.attention.values() if a.captured)
        return (
            f"Trace(blocks={len(self.blocks)}, skips={len(self.skips)}, steps={self.steps}, "
            f"temb={len(self.temb)}, attention={captured}/{len(self.attention)} layers, "
            f"tokens={len(self.tokens)})"
        )

    def _repr_html_(self) -> str:
        """Notebook display hook (summary, inline SVG diagram, module table)."""
        return present("trace_html", self)

    def report(self, path: str | os.PathLike, image: Any = None, title: str | None = None) -> Path:
        """Write one self-contained HTML report of this trace (``unetviz.report``)."""
        return present("write_report", self, path, image=image, title=title)

    # ------------------------------------------------------------------ aggregation
    def heatmap(self, token: int | str | list[int], **options: Any) -> torch.Tensor:
        """One (H, W) float32 heatmap of ``token`` (index, word, or list of indices). The
        options (one home) are ``unetviz.capture.aggregate.heatmap``'s keywords."""
        from .heatmap import heatmap  # a Heatmap tensor: knows its word and recipe

        return heatmap(self, token, **options)

    heatmap.__signature__ = aggregate.heatmap_signature()  # type: ignore[attr-defined]

    def token_indices(self, token: int | str | list[int]) -> list[int]:
        """Token positions addressed by an index, a list of indices or a word."""
        return aggregate.token_indices(self, token)

    def layer_maps(self, token: int | str | list[int], **options: Any) -> dict[str, torch.Tensor]:
        """Per-layer (h, w) maps of ``token`` at native resolution (steps reduced like
        ``heatmap``); keys are attn2 names. Options: ``aggregate.layer_maps``'s keywords."""
        return aggregate.layer_maps(self, token, **options)

    # ------------------------------------------------------------------ save / load
    def nbytes(self) -> int:
        """Bytes held by the trace's tensors (attention maps, sums, per-head sums, temb
        vectors): what a session or a notebook summary reports as the trace's memory."""
        records = [*self.attention.values(), *self.self_attention.values()]
        tensors = [getattr(rec, name, None) for rec in records for name in ("sum", "head_sum")]
        tensors += [m for rec in records for m in rec.maps]
        tensors += [r.vector for r in self.temb] + list(self.temb_vectors.values())
        tensors += [t for f in self.features.values() for t in (*f.pca, *f.norm)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None and not t.is_meta)

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able structure, named tensors): what ``save`` writes."""
        tensors: dict[str, torch.Tensor] = {}
        temb = []
        for i, rec in enumerate(self.temb):
            d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
            d["vector"] = None
            if rec.vector is not None:
                key = f"temb/{i}"
                tensors[key] = rec.vector
                d["vector"] = key
            temb.append(d)

        for block, vec in self.temb_vectors.items():
            tensors[f"temb_vectors/{block}"] = vec

        def attn_state(rec: AttentionRecord | SelfAttentionRecord, kind: str) -> dict[str, Any]:
            d = {
                f.name: getattr(rec, f.name)
                for f in dataclasses.fields(rec)
                if f.name not in _TENSOR_FIELDS
            }
            d["maps"] = None
            if rec.maps:
                shapes = {tuple(m.shape) for m in rec.maps}
                if len(shapes) == 1:
                    key = f"{kind}/{rec.name}/maps"
                    tensors[key] = torch.stack(rec.maps)
                    d["maps"] = key
                else:  # resolution changed between forwards: keep one tensor per step
                    d["maps"] = []
                    for j, m in enumerate(rec.maps):
                        key = f"{kind}/{rec.name}/maps/{j}"
                        tensors[key] = m
                        d["maps"].append(key)
            for name in [f.name for f in dataclasses.fields(rec) if f.name in ("sum", "head_sum")]:
                value = getattr(rec, name)
                d[name] = None if value is None else f"{kind}/{rec.name}/{name}"
                if value is not None:
                    tensors[d[name]] = value
            return d

        state = {
            "format": FORMAT,
            "version": VERSION,
            "meta": _jsonable(self.meta),
            "tokens": list(self.tokens),
            "words": list(self.words),
            "timesteps": list(self.timesteps),
            "blocks": [dataclasses.asdict(b) for b in self.blocks],
            "skips": [dataclasses.asdict(s) for s in self.skips],
            "temb": temb,
            "temb_sources": _jsonable(self.temb_sources),
            "temb_vectors": list(self.temb_vectors),
            "attention": {n: attn_state(r, "attention") for n, r in self.attention.items()},
            "self_attention": {
                n: attn_state(r, "self_attention") for n, r in self.self_attention.items()
            },
        }
        if self.features:
            state["features"] = features_state(self.features, tensors)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        return _jsonable(state), tensors

    @classmethod
    def from_state(cls, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Trace:
        """Inverse of ``to_state``. The state is checked against its tensors and the limits of
        ``bundle.check_state`` first; anything malformed raises ``TraceError``."""
        check_state(state, tensors)
        try:
            return cls._from_checked_state(state, tensors)
        except TraceError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise TraceError(f"malformed trace: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_checked_state(cls, state: dict[str, Any], tensors: dict[str, torch.Tensor]):
        trace = cls()
        trace.meta = dict(state["meta"])
        trace.tokens = list(state["tokens"])
        trace.words = list(state["words"])
        trace.timesteps = list(state["timesteps"])
        trace.blocks = [BlockRecord(**b) for b in state["blocks"]]
        trace.skips = [SkipRecord(**s) for s in state["skips"]]
        for d in state["temb"]:
            d = dict(d)
            key = d.pop("vector")
            trace.temb.append(TembRecord(**d, vector=tensors[key] if key else None))
        trace.temb_sources = list(state["temb_sources"])
        trace.temb_vectors = {b: tensors[f"temb_vectors/{b}"] for b in state["temb_vectors"]}

        def attn(d: dict[str, Any], record_cls: type) -> Any:
            d = dict(d)
            maps_key = d.pop("maps")
            if isinstance(maps_key, str):
                maps = list(tensors[maps_key].unbind(0))
            elif isinstance(maps_key, list):
                maps = [tensors[k] for k in maps_key]
            else:
                maps = []
            for name in ("sum", "head_sum"):
                if name in d:
                    d[name] = tensors[d[name]] if d[name] else None
            if d.get("res") is not None:
                d["res"] = tuple(d["res"])
            if "points" in d:
                d["points"] = [tuple(p) for p in d["points"]]
            return record_cls(**d, maps=maps)

        trace.attention = {n: attn(d, AttentionRecord) for n, d in state["attention"].items()}
        trace.self_attention = {
            n: attn(d, SelfAttentionRecord) for n, d in state["self_attention"].items()
        }
        trace.features = features_from_state(state.get("features"), tensors, len(trace.timesteps))
        return trace

    def save(self, path: str | os.PathLike, folder: bool = False, image: Any = None) -> Path:
        """Write one zip (``trace.json`` + ``tensors.safetensors``), or a folder of those two
        files with ``folder=True``; with ``image`` (the generated PIL image) also ``image.png``
        (at most 512 px a side, ``bundle.image_png``), so a report of the file alone shows it.
        Written to a temporary name first: nothing half-written is left behind. Returns the
        path."""
        from safetensors.torch import save as st_save

        path = Path(path)
        png = None if image is None else image_png(image)
        state, tensors = self.to_state()
        blob = st_save(tensors, metadata={"format": FORMAT})
        text = json.dumps(state, indent=1, allow_nan=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:

            def fill(tmp: Path) -> None:
                (tmp / JSON_NAME).write_text(text)
                (tmp / TENSORS_NAME).write_bytes(blob)
                if png is not None:
                    (tmp / IMAGE_NAME).write_bytes(png)

            return write_folder(path, fill)
        with atomic_file(path) as fh, zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(JSON_NAME, text, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(TENSORS_NAME, blob, compress_type=zipfile.ZIP_STORED)
            if png is not None:
                zf.writestr(IMAGE_NAME, png, compress_type=zipfile.ZIP_STORED)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int | None = None) -> Trace:
        """Read what ``save`` wrote (zip or folder). Sizes are checked before anything is read
        and the tensors are streamed (``bundle.read_bundle``); the structure is checked against
        the tensors' header first (only tensors it references, of the shapes it implies, at
        most ``max_bytes`` together). A missing, corrupt, oversized or foreign file raises
        ``TraceError`` naming it."""
        state, tensors = read_bundle(path, max_bytes=max_bytes)
        try:
            return cls.from_state(state, tensors)
        except TraceError as exc:
            raise TraceError(f"{path} is a corrupt unetviz trace: {exc}") from None


def _jsonable(value: Any) -> Any:
    """Plain JSON data: tuples -> lists, tensors -> lists, NaN/inf -> None, other -> str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist()) if not value.is_meta else list(value.shape)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


__all__ = [
    "AttentionRecord",
    "BlockRecord",
    "MemoryBudgetError",
    "SelfAttentionRecord",
    "SkipRecord",
    "TembRecord",
    "Trace",
    "TraceError",
    "block_of",
    "location_of",
]

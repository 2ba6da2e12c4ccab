"""The Trace: records of one capture, indexable like a cache, saved as one JSON + safetensors
bundle. It never holds a reference to the model (see docs/trace.md)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..outputs import atomic_file, write_folder

FORMAT = "unetviz-trace"
VERSION = 1
_JSON_NAME = "trace.json"
_TENSORS_NAME = "tensors.safetensors"


class TraceError(ValueError):
    """A capture that cannot proceed, a query a trace cannot answer, or a bad trace file."""


class MemoryBudgetError(TraceError, MemoryError):
    """Per-step attention storage would exceed the capture's ``memory_budget``."""


# ---------------------------------------------------------------------------------- records
@dataclass
class BlockRecord:
    """One hooked module: shapes of its first call, parameters, MACs per call, calls, time."""

    name: str
    type: str
    level: str  # "block" | "layer" | "module"
    parent: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    params: int = 0
    macs: int = 0
    calls: int = 0
    time_ms: float = 0.0


@dataclass
class SkipRecord:
    """One skip tensor: pushed by ``source`` on the down path at stack position ``index``,
    concatenated on channels by the up-block resnet ``target``."""

    index: int
    source: str
    target: str
    shape: list[int]


@dataclass(slots=True)
class TembRecord:
    """The time-embedding contribution of one ResnetBlock2D in one forward (step)."""

    block: str
    step: int
    timestep: float | None
    temb_rms: float
    feature_rms: float
    ratio: float
    vector: torch.Tensor | None = field(
        default=None, repr=False
    )  # (C,) float32 CPU, kept-batch mean


@dataclass
class AttentionRecord:
    """One cross-attention layer (``...attn2``).

    ``maps[i]`` is the ``(heads_or_1, h, w, tokens)`` probability map of forward ``steps[i]``
    (per-step mode); in streaming mode ``sum`` holds the float32 sum over ``count`` forwards.
    ``q_shape`` / ``k_shape`` are per head: ``(batch, heads, queries, head_dim)``.
    """

    name: str
    block: str
    location: str  # "down" | "mid" | "up"
    res: tuple[int, int] | None
    heads: int
    per_head: bool = False
    q_shape: list[int] | None = None
    k_shape: list[int] | None = None
    tokens: int | None = None
    maps: list[torch.Tensor] = field(default_factory=list, repr=False)
    steps: list[int] = field(default_factory=list)
    sum: torch.Tensor | None = field(default=None, repr=False)
    count: int = 0

    @property
    def captured(self) -> bool:
        """Whether this layer holds probabilities (not just shapes)."""
        return bool(self.maps) or self.count > 0


@dataclass
class SelfAttentionRecord:
    """Self-attention (``...attn1``) rows of chosen query points: ``maps[i]`` is
    ``(heads_or_1, points, h, w)`` for forward ``steps[i]``; ``points`` are (row, col) on the
    layer's query grid."""

    name: str
    block: str
    location: str
    res: tuple[int, int]
    heads: int
    points: list[tuple[int, int]]
    per_head: bool = False
    maps: list[torch.Tensor] = field(default_factory=list, repr=False)
    steps: list[int] = field(default_factory=list)
    sum: torch.Tensor | None = field(default=None, repr=False)
    count: int = 0


def block_of(name: str) -> str:
    """``up_blocks.1.attentions.0...`` -> ``up_blocks.1``; ``mid_block...`` -> ``mid_block``."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def location_of(name: str) -> str:
    """``down`` / ``mid`` / ``up`` (or the top-level name for anything else)."""
    head = name.split(".")[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(head, head)


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
        self._index: dict[str, BlockRecord] = {}
        self._cache: dict[Any, Any] = {}

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

    # ------------------------------------------------------------------ aggregation
    def heatmap(
        self,
        token: int | str | list[int],
        layers: str | list[str] | None = None,
        resolutions: int | list[int] | None = None,
        steps: int | list[int] | range | slice | None = None,
        heads: int | list[int] | None = None,
        upsample: str | None = "bicubic",
        size: int | tuple[int, int] | None = None,
        normalize: str | None = "minmax",
        preset: str | None = None,
    ) -> torch.Tensor:
        """One (H, W) float32 heatmap of ``token`` (index, word, or list of indices).

        See ``unetviz.capture.aggregate.heatmap`` for every argument and the presets."""
        from .heatmap import heatmap  # a Heatmap tensor: knows its word and recipe

        return heatmap(
            self,
            token,
            layers=layers,
            resolutions=resolutions,
            steps=steps,
            heads=heads,
            upsample=upsample,
            size=size,
            normalize=normalize,
            preset=preset,
        )

    def token_indices(self, token: int | str | list[int]) -> list[int]:
        """Token positions addressed by an index, a list of indices or a word."""
        from .aggregate import token_indices

        return token_indices(self, token)

    def layer_maps(self, token: int | str | list[int], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Per-layer (h, w) maps of ``token`` at native resolution (steps reduced like
        ``heatmap``); keys are attn2 names."""
        from .aggregate import layer_maps

        return layer_maps(self, token, **kwargs)

    # ------------------------------------------------------------------ save / load
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
                if f.name not in ("maps", "sum")
            }
            d["maps"] = d["sum"] = None
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
            if rec.sum is not None:
                key = f"{kind}/{rec.name}/sum"
                tensors[key] = rec.sum
                d["sum"] = key
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
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        return _jsonable(state), tensors

    @classmethod
    def from_state(cls, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Trace:
        """Inverse of ``to_state``; raises KeyError/TypeError/ValueError on malformed input."""
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
            maps_key, sum_key = d.pop("maps"), d.pop("sum")
            if isinstance(maps_key, str):
                maps = list(tensors[maps_key].unbind(0))
            elif isinstance(maps_key, list):
                maps = [tensors[k] for k in maps_key]
            else:
                maps = []
            if d.get("res") is not None:
                d["res"] = tuple(d["res"])
            if "points" in d:
                d["points"] = [tuple(p) for p in d["points"]]
            return record_cls(**d, maps=maps, sum=tensors[sum_key] if sum_key else None)

        trace.attention = {n: attn(d, AttentionRecord) for n, d in state["attention"].items()}
        trace.self_attention = {
            n: attn(d, SelfAttentionRecord) for n, d in state["self_attention"].items()
        }
        return trace

    def save(self, path: str | os.PathLike, folder: bool = False) -> Path:
        """Write one zip (``trace.json`` + ``tensors.safetensors``), or a folder of those two
        files with ``folder=True``. Written to a temporary name first: nothing half-written is
        left behind. Returns the path."""
        from safetensors.torch import save as st_save

        path = Path(path)
        state, tensors = self.to_state()
        blob = st_save(tensors, metadata={"format": FORMAT})
        text = json.dumps(state, indent=1, allow_nan=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:

            def fill(tmp: Path) -> None:
                (tmp / _JSON_NAME).write_text(text)
                (tmp / _TENSORS_NAME).write_bytes(blob)

            return write_folder(path, fill)
        with atomic_file(path) as fh, zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_JSON_NAME, text, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(_TENSORS_NAME, blob, compress_type=zipfile.ZIP_STORED)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read what ``save`` wrote (zip or folder). A missing, corrupt or foreign file raises
        ``TraceError`` naming it."""
        from safetensors.torch import load as st_load

        path = Path(path)
        if not path.exists():
            raise TraceError(f"trace file not found: {path}")
        try:
            if path.is_dir():
                if not (path / _JSON_NAME).is_file():
                    raise TraceError(
                        f"{path} is a folder without {_JSON_NAME}: not a unetviz trace folder"
                    )
                text = (path / _JSON_NAME).read_text()
                blob = (path / _TENSORS_NAME).read_bytes()
            else:
                if not zipfile.is_zipfile(path):
                    raise TraceError(
                        f"{path} is not a unetviz trace: expected a zip bundle with "
                        f"{_JSON_NAME} and {_TENSORS_NAME} (written by Trace.save)"
                    )
                with zipfile.ZipFile(path) as zf:
                    names = set(zf.namelist())
                    if _JSON_NAME not in names or _TENSORS_NAME not in names:
                        raise TraceError(
                            f"{path} is a zip file but not a unetviz trace: it lacks "
                            f"{sorted({_JSON_NAME, _TENSORS_NAME} - names)}"
                        )
                    text = zf.read(_JSON_NAME).decode("utf-8")
                    blob = zf.read(_TENSORS_NAME)
            state = json.loads(text)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise TraceError(f"{path} is not a unetviz trace (no '{FORMAT}' format marker)")
            if state.get("version") != VERSION:
                raise TraceError(
                    f"{path} is a unetviz trace of version {state.get('version')!r}; this "
                    f"unetviz reads version {VERSION}"
                )
            tensors = st_load(blob)
            return cls.from_state(state, tensors)
        except TraceError:
            raise
        except Exception as exc:  # zip, JSON, safetensors, schema: all mean a bad file
            raise TraceError(
                f"{path} is a corrupt unetviz trace: {type(exc).__name__}: {exc}"
            ) from None


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

"""What each block sees: a compact picture of its output feature map at every step.

``capture(unet, features="blocks")`` (or ``True``; ``"layers"`` adds every resnet, transformer
and resampler) records, per block and per forward, of the first image of the kept batch half:

- ``pca``: the first three principal components of the output channels, one (3, h, w) map per
  step (the Plug-and-Play / DIFT feature picture; :func:`feature_rgb` maps them to colours);
- ``norm``: the per-pixel channel RMS (the L2 norm over channels / sqrt(channels)), (h, w);
- ``rms``: the RMS of the whole output (all channels, all pixels), one float per step.

How the PCA basis is fitted, once per block for the whole run, with memory that does not grow
with the channel count: at the first forward the probe takes the top ``SKETCH`` (16) principal
directions of the block's channels (a C x 16 sketch, channel mean removed) and from then on
stores each step's output projected onto them (16 float16 numbers per pixel, whatever C is).
When the capture ends, the three components are fitted on the *last* step's sketch (the
features of the (nearly) denoised image, where objects and background separate) and every step
is rotated onto that one basis: colours mean the same thing at every step, and the early steps
show the noise from which the final structure emerges. Where C <= 16 this is exact PCA of the
last step. The sketch is freed at the end; a trace keeps 3 float16 components and a float16
norm per pixel: 8 bytes per pixel per step (SD 1.5 at 512 px: 213.5 KiB a step at blocks
detail, 690 KiB at layers; :func:`bytes_per_step`), 32 bytes per pixel per step while
capturing.

Cost: the sketch once per block at the first forward (:func:`top_directions`: exact up to 64
channels, else subspace iteration; one device sync there for the small eigendecompositions),
then one (h*w, C) x (C, 16) product per block and step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import TraceError
from .probe import Probe, ProbeSession
from .shapes import first_tensor

#: feature detail levels (a subset of the capture's ``DETAILS``)
FEATURE_DETAILS = ("blocks", "layers")
#: principal directions kept per block while capturing (16 float16 numbers per pixel)
SKETCH = 16
#: components kept in a trace (mapped to R, G, B)
COMPONENTS = 3
MAX_FEATURE_SIDE = 1024  # a bundle's feature map may be at most this many pixels a side


@dataclass
class FeatureRecord:
    """What one block's output looked like at each captured step (see the module docstring).

    ``pca[i]``: (3, h, w) float16, ``norm[i]``: (h, w) float16, ``rms[i]``: float, for the
    forward ``steps[i]``; ``explained``: the share of the last step's variance (within the
    sketch) each component carries."""

    name: str
    level: str  # "block" | "layer"
    channels: int
    res: tuple[int, int]
    steps: list[int] = field(default_factory=list)
    pca: list[torch.Tensor] = field(default_factory=list, repr=False)
    norm: list[torch.Tensor] = field(default_factory=list, repr=False)
    rms: list[float] = field(default_factory=list)
    explained: list[float] = field(default_factory=list)

    def index(self, step: int) -> int:
        """Position of forward ``step`` (negative: from the end) in this record's lists."""
        if not self.steps:
            raise TraceError(f"features of {self.name}: no step was recorded")
        if step < 0:
            step = self.steps[step] if -len(self.steps) <= step else self.steps[0]
        if step not in self.steps:
            raise TraceError(
                f"features of {self.name}: step {step} was not recorded (steps "
                f"{self.steps[0]}..{self.steps[-1]})"
            )
        return self.steps.index(step)

    def rgb(self, step: int = -1) -> torch.Tensor:
        """(h, w, 3) uint8 picture of the three components at ``step`` (see
        :func:`feature_rgb`)."""
        return feature_rgb(self, step)

    def norm_map(self, step: int = -1) -> torch.Tensor:
        """(h, w) float32 channel RMS per pixel at ``step``, scaled to [0, 1] by the largest
        value over every step (comparable across steps)."""
        top = max((float(n.float().max()) for n in self.norm), default=0.0)
        n = self.norm[self.index(step)].float()
        return (n / top).clamp(0, 1) if top > 0 else torch.zeros_like(n)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.pca, *self.norm])


def feature_rgb(record: FeatureRecord, step: int = -1) -> torch.Tensor:
    """The three components at ``step`` as (h, w, 3) uint8 R, G, B. Each component is scaled
    by its 1st..99th percentile over *every* step of the record, so one colour means one
    direction in feature space at every step."""
    lo, hi = _ranges(record)
    x = record.pca[record.index(step)].float()
    x = (x - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def _ranges(record: FeatureRecord) -> tuple[torch.Tensor, torch.Tensor]:
    allv = torch.stack([p.float() for p in record.pca]).transpose(0, 1).reshape(COMPONENTS, -1)
    if allv.shape[1] > 1_000_000:  # quantile's input limit; a strided sample is enough
        allv = allv[:, :: math.ceil(allv.shape[1] / 1_000_000)]
    q = torch.quantile(allv, torch.tensor([0.01, 0.99]), dim=1)
    return q[0], q[1]


def features_level(value: Any) -> str | None:
    """The ``features=`` capture option as None (off), "blocks" or "layers"."""
    if value is None or value is False:
        return None
    if value is True:
        return "blocks"
    if value in FEATURE_DETAILS:
        return value
    raise TraceError(f"features={value!r}: expected True, False, 'blocks' or 'layers'")


def bytes_per_step(shapes: Sequence[Sequence[int]]) -> int:
    """Bytes a trace keeps per step for feature maps of these (..., h, w) output shapes: 3
    float16 components and a float16 norm per pixel."""
    return sum((COMPONENTS + 1) * 2 * int(s[-2]) * int(s[-1]) for s in shapes)


class _Slot:
    """Per module, while capturing: the sketch and the per-step sketched maps."""

    __slots__ = ("basis", "mean", "sketched", "pending", "record")

    def __init__(self, record: FeatureRecord) -> None:
        self.record = record
        self.basis: torch.Tensor | None = None  # (C, K) on the model's device, its dtype
        self.mean: torch.Tensor | None = None  # (C,)
        self.sketched: list[torch.Tensor] = []  # per step (K, h, w) float16 CPU
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []


class FeatureProbe(Probe):
    """Records :class:`FeatureRecord`s into ``trace.features`` (module docstring)."""

    def __init__(self, trace: Any, detail: str, steps: Any) -> None:
        self.trace, self.detail, self.steps = trace, detail, steps
        self.slots: dict[str, _Slot] = {}
        self.first: dict[str, torch.Tensor] = {}  # first forward: the activations to fit on

    def install(self, session: ProbeSession) -> None:
        blocks, layers = session.plan.blocks, session.plan.layers
        names = [(n, "block") for n in blocks]
        if self.detail == "layers":
            names += [(n, "layer") for n in layers]
        for name, level in names:
            session.hook(session.modules[name], post=self._post(session, name, level))

    def _post(self, session: ProbeSession, name: str, level: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            t = first_tensor(output)
            if t is None or t.ndim != 4 or t.is_meta or t.shape[0] == 0:
                return
            fwd = session.forward
            with torch.no_grad():
                x = t.detach()
                x = (x[fwd.keep] if x.shape[0] == fwd.batch else x)[:1]
                if x.shape[0] == 0:
                    return
                self._record(name, level, fwd.step, x[0])

        return post

    def _record(self, name: str, level: str, step: int, x: torch.Tensor) -> None:
        c, h, w = x.shape
        slot = self.slots.get(name)
        if slot is None:
            rec = FeatureRecord(name=name, level=level, channels=int(c), res=(int(h), int(w)))
            slot = self.slots[name] = _Slot(rec)
        if (c, h, w) != (slot.record.channels, *slot.record.res):
            return  # a later forward at another size: the run's basis does not apply
        xf = x.float()
        norm = torch.linalg.vector_norm(xf, dim=0) / math.sqrt(c)
        rms = torch.linalg.vector_norm(xf) / math.sqrt(xf.numel())
        if slot.basis is None:  # a copy, projected once the basis is fitted (end of forward)
            self.first[name] = xf = x.to(torch.float32, copy=True)
            slot.pending.append((step, xf, norm, rms))
            return
        y = torch.einsum("chw,ck->khw", xf - slot.mean[:, None, None], slot.basis)
        slot.pending.append((step, y, norm, rms))

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        if self.first:
            self._fit()
        for slot in self.slots.values():
            for step, y, norm, rms in slot.pending:
                slot.sketched.append(y.to("cpu", torch.float16))
                slot.record.steps.append(step)
                slot.record.norm.append(norm.to("cpu", torch.float16))
                slot.record.rms.append(math.nan)
                self.steps.defer(_setter(slot.record.rms, len(slot.record.rms) - 1), rms)
            slot.pending.clear()

    def _fit(self) -> None:
        """The sketch of each block first seen in this forward: its top principal directions
        (:func:`top_directions`), then the pending maps projected onto it."""
        for name, xf in self.first.items():
            slot = self.slots[name]
            c = xf.shape[0]
            flat = xf.reshape(c, -1)
            mean = flat.mean(1)
            slot.basis = top_directions(flat - mean[:, None], min(SKETCH, c))
            slot.mean = mean
            slot.pending = [
                (s, torch.einsum("chw,ck->khw", y - mean[:, None, None], slot.basis), n, r)
                for s, y, n, r in slot.pending
            ]
        self.first.clear()

    def finalize(self, session: ProbeSession) -> None:
        self.steps.flush()
        for name, slot in self.slots.items():
            rec = slot.record
            if not slot.sketched:
                continue
            rec.pca, rec.explained = _rotate(slot.sketched)
            self.trace.features[name] = rec
            slot.sketched = []
        self.slots.clear()


#: channels up to which the sketch is an exact eigendecomposition (above: subspace iteration)
EXACT_CHANNELS = 64


def top_directions(centred: torch.Tensor, k: int, iterations: int = 4) -> torch.Tensor:
    """(C, k) float32 on ``centred``'s device: the top-``k`` principal directions of the
    columns of ``centred`` (C channels x N pixels, channel mean removed). Exact (float64
    eigendecomposition) up to :data:`EXACT_CHANNELS` channels; above, a few rounds of subspace
    iteration from a fixed-seed start (Halko et al.), which costs O(C N k) instead of O(C^2 N +
    C^3) and leaves the global random state alone."""
    c = centred.shape[0]
    if c <= EXACT_CHANNELS:
        cov = (centred @ centred.T).to("cpu", torch.float64)
        vecs = torch.linalg.eigh(cov)[1][:, -k:].flip(1)
        return vecs.to(centred.device, torch.float32)
    g = torch.Generator(device=centred.device).manual_seed(0)
    q = torch.randn(c, k + 8, generator=g, device=centred.device, dtype=centred.dtype)
    for _ in range(iterations):
        q = torch.linalg.qr(centred @ (centred.T @ q))[0]
    small = q.T @ (centred @ (centred.T @ q))
    vals, vecs = torch.linalg.eigh(small.double())
    return (q.double() @ vecs[:, -k:].flip(1)).to(torch.float32)


def _setter(values: list[float], i: int):
    def fill(v: float) -> None:
        values[i] = v

    return fill


def _rotate(sketched: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """Fit the three components on the last step's sketched map; every step onto them."""
    last = sketched[-1].double().reshape(sketched[-1].shape[0], -1)
    centre = last.mean(1)
    centred = last - centre[:, None]
    vals, vecs = torch.linalg.eigh(centred @ centred.T)
    k = min(COMPONENTS, last.shape[0])
    basis = vecs[:, -k:].flip(1)
    total = float(vals.clamp_min(0).sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in vals.flip(0)[:k]]
    # a component's sign is arbitrary: orient each so its largest loading is positive
    signs = torch.sign(basis[basis.abs().argmax(0), torch.arange(k)])
    basis = basis * torch.where(signs == 0, 1.0, signs).to(basis.dtype)
    out = []
    for y in sketched:
        kk, h, w = y.shape
        z = basis.T @ (y.double().reshape(kk, -1) - centre[:, None])
        if k < COMPONENTS:
            z = torch.cat([z, z.new_zeros(COMPONENTS - k, z.shape[1])])
        out.append(z.reshape(COMPONENTS, h, w).to(torch.float16))
    explained += [0.0] * (COMPONENTS - k)
    return out, explained


# ---------------------------------------------------------------------------- save / load
def features_state(
    features: dict[str, FeatureRecord], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The JSON part of ``trace.features``; the maps go into ``tensors`` (stacked per step)."""
    state: dict[str, Any] = {}
    for name, rec in features.items():
        d = {
            "level": rec.level,
            "channels": rec.channels,
            "res": list(rec.res),
            "steps": list(rec.steps),
            "rms": [v if math.isfinite(v) else None for v in rec.rms],
            "explained": list(rec.explained),
        }
        if rec.steps:
            tensors[f"features/{name}/pca"] = torch.stack(rec.pca)
            tensors[f"features/{name}/norm"] = torch.stack(rec.norm)
        state[name] = d
    return state


def features_from_state(
    state: Any, tensors: dict[str, torch.Tensor], max_steps: int
) -> dict[str, FeatureRecord]:
    """Inverse of :func:`features_state`, checked: shapes agree with ``res`` and ``steps``,
    sizes are bounded; anything else raises ``TraceError``."""
    if state is None:
        return {}
    if not isinstance(state, dict) or len(state) > 10_000:
        raise TraceError("trace features must be an object of at most 10000 records")
    out: dict[str, FeatureRecord] = {}
    for name, d in state.items():
        if not isinstance(d, dict):
            raise TraceError(f"trace features {name!r} is not an object")
        level, channels, res = d.get("level"), d.get("channels"), d.get("res")
        steps, rms, explained = d.get("steps"), d.get("rms"), d.get("explained", [])
        if level not in ("block", "layer"):
            raise TraceError(f"trace features {name!r}: level={level!r}, expected block/layer")
        if not _ints(res, 1, MAX_FEATURE_SIDE) or len(res) != 2:
            raise TraceError(f"trace features {name!r}: res={res!r}, expected [h, w]")
        if not _ints([channels], 1, 1 << 16):
            raise TraceError(f"trace features {name!r}: channels={channels!r}")
        if not _ints(steps, 0, max_steps) or len(steps) > max_steps:
            raise TraceError(f"trace features {name!r}: steps must be at most {max_steps} ints")
        if not isinstance(rms, list) or len(rms) != len(steps):
            raise TraceError(f"trace features {name!r}: one rms per step expected")
        if not isinstance(explained, list) or len(explained) > COMPONENTS:
            raise TraceError(f"trace features {name!r}: explained must be <= 3 numbers")
        nums = [*rms, *explained]
        if not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in nums
        ):
            raise TraceError(f"trace features {name!r}: rms / explained must be numbers")
        h, w = res
        pca, norm = [], []
        if steps:
            pca = _stacked(tensors, f"features/{name}/pca", (len(steps), COMPONENTS, h, w))
            norm = _stacked(tensors, f"features/{name}/norm", (len(steps), h, w))
        out[name] = FeatureRecord(
            name=name,
            level=level,
            channels=channels,
            res=(h, w),
            steps=list(steps),
            pca=pca,
            norm=norm,
            rms=[math.nan if v is None else float(v) for v in rms],
            explained=[float(v) for v in explained],
        )
    return out


def _ints(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value
    )


def _stacked(tensors: dict[str, torch.Tensor], key: str, shape: tuple) -> list[torch.Tensor]:
    if key not in tensors:
        raise TraceError(f"trace features name tensor {key!r}, which the bundle lacks")
    t = tensors[key]
    if not t.dtype.is_floating_point or tuple(t.shape) != shape:
        raise TraceError(
            f"trace tensor {key!r}: {t.dtype} of shape {list(t.shape)}, expected floating point "
            f"of shape {list(shape)}"
        )
    return list(t.unbind(0))


__all__ = [
    "COMPONENTS",
    "FEATURE_DETAILS",
    "SKETCH",
    "FeatureProbe",
    "FeatureRecord",
    "bytes_per_step",
    "feature_rgb",
    "features_from_state",
    "features_level",
    "features_state",
]

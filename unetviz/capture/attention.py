"""Attention probes: cross-attention maps per token, self-attention rows of chosen points.

Probabilities are recomputed from the outputs of ``to_q`` / ``to_k`` (``softmax(Q K^T *
scale)`` in float32) while the model keeps its own kernel (SDPA): no processor is replaced.
Fused projections (diffusers' ``fuse_qkv_projections()``: ``to_kv`` on cross-attention,
``to_qkv`` on self-attention) are read by slicing the fused output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .aggregate import DAAM_LOCATIONS
from .errors import MemoryBudgetError, TraceError
from .options import CaptureOptions
from .probe import Probe, ProbeSession, declared_edits
from .records import SelfAttentionRecord, block_of, location_of
from .shapes import grid, transformer_of
from .trace import Trace


def taps(attention: nn.Module) -> list[tuple[nn.Module, Callable[[torch.Tensor], dict]]]:
    """The modules whose outputs give Q and K, each with the function that takes them out:
    ``to_q`` / ``to_k``, or the fused ``to_kv`` / ``to_qkv`` sliced."""
    fused = bool(getattr(attention, "fused_projections", False))
    to_kv, to_qkv = getattr(attention, "to_kv", None), getattr(attention, "to_qkv", None)
    if fused and isinstance(to_kv, nn.Module):
        return [
            (attention.to_q, lambda out: {"q": out}),
            (to_kv, lambda out: {"k": out[..., : out.shape[-1] // 2]}),
        ]
    if fused and isinstance(to_qkv, nn.Module):
        return [(to_qkv, _split_qkv)]
    if fused:
        raise TraceError(
            f"{type(attention).__name__} has fused projections this capture cannot read; call "
            "unet.unfuse_qkv_projections() before capturing"
        )
    return [(attention.to_q, lambda out: {"q": out}), (attention.to_k, lambda out: {"k": out})]


def _split_qkv(out: torch.Tensor) -> dict[str, torch.Tensor]:
    third = out.shape[-1] // 3
    return {"q": out[..., :third], "k": out[..., third : 2 * third]}


def softmax_scores(attention: nn.Module, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(b, n, inner), (b, t, inner) -> ``softmax(Q K^T * scale)`` as (b, heads, n, t), in the
    inputs' dtype and differentiable: the one home of the attention-probability recompute
    (captures, edits, and the demo's grounding loss and evaluation read it)."""
    heads = attention.heads
    b, n, inner = q.shape
    d = inner // heads
    scale = getattr(attention, "scale", None)
    scale = float(scale) if isinstance(scale, (int, float)) else d**-0.5
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(k.shape[0], -1, heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)


def probabilities(
    attention: nn.Module, q: torch.Tensor, k: torch.Tensor, batch: int, keep: slice
) -> torch.Tensor:
    """(b, n, inner), (b, t, inner) -> ``softmax(Q K^T * scale)`` of the kept batch rows as
    (b_kept, heads, n, t) float32 (:func:`softmax_scores`), with any declared probability
    edits applied."""
    edits = declared_edits(attention)
    whole = any(not rows for _, rows in edits)  # an edit that needs every row
    if not whole:  # slice first: cheaper
        q = q[keep] if q.shape[0] == batch else q
        k = k[keep] if k.shape[0] == batch else k
    b = q.shape[0]
    probs = softmax_scores(attention, q.detach().float(), k.detach().float())
    held = slice(None) if whole or b != len(range(batch)[keep]) else keep
    for edit, rows in edits:
        probs = edit(probs, held) if rows else edit(probs)
    if whole:
        probs = probs[keep] if probs.shape[0] == batch else probs
    return probs


class MapStore:
    """Where maps go: per step (``attention_dtype`` on CPU, within ``memory_budget``) or a
    float32 running sum (stream mode). Shared by the attention probes: one budget."""

    def __init__(self, options: CaptureOptions) -> None:
        self.options = options
        self.stored_bytes = 0

    def charge(
        self, nbytes: int, step: int, name: str, what: str = "per-step attention maps"
    ) -> None:
        """Count ``nbytes`` against ``memory_budget``, or raise MemoryBudgetError."""
        budget = self.options.memory_budget
        if budget is not None and self.stored_bytes + nbytes > budget:
            mib = 1024**2
            raise MemoryBudgetError(
                f"{what} would exceed memory_budget={budget / mib:.1f} MiB at step {step} "
                f"(layer {name}, {self.stored_bytes / mib:.1f} MiB kept so far); use "
                "mode='stream' (sum over steps, constant memory), a larger memory_budget, fewer "
                "layers (attention=[...]) or per_head=False"
            )
        self.stored_bytes += nbytes

    def add(self, rec: Any, probs: torch.Tensor, step: int) -> None:
        if self.options.mode == "stream":
            rec.sum = probs if rec.sum is None else rec.sum + probs
            rec.count += 1
            return
        dtype = self.options.attention_dtype
        self.charge(probs.numel() * torch.finfo(dtype).bits // 8, step, rec.name)
        # no sync here: the end-of-forward flush (one blocking transfer) completes the copy
        rec.maps.append(probs.to("cpu", dtype, non_blocking=True))
        rec.steps.append(step)

    def add_many(self, recs: list[Any], maps: torch.Tensor, step: int) -> None:
        """``maps[j]`` for ``recs[j]``: one transfer for all of them in per-step mode."""
        if self.options.mode == "stream" or len(recs) == 1:
            for rec, m in zip(recs, maps, strict=True):
                self.add(rec, m, step)
            return
        dtype = self.options.attention_dtype
        nbytes = maps[0].numel() * torch.finfo(dtype).bits // 8
        for rec in recs:
            self.charge(nbytes, step, rec.name)
        for rec, m in zip(recs, maps.to("cpu", dtype, non_blocking=True).unbind(0), strict=True):
            rec.maps.append(m)
            rec.steps.append(step)


class GridProbe(Probe):
    """The (h, w) query grid of every attention layer, from its Transformer2DModel's input;
    written on every cross-attention record (even those whose maps are not captured).

    The grids depend only on the sample's spatial shape, so they are read once per shape:
    the transformers are hooked (for one forward) on the first forward of a capture, unless
    the plan's first-pass facts hold them, and again only when maps are taken (``steady``)
    and a forward brings a spatial shape not seen yet."""

    def __init__(self, trace: Trace, names: list[str], steps: Any, steady: bool) -> None:
        self.trace, self.names, self.steps, self.steady = trace, names, steps, steady
        self.res: dict[str, tuple[int, int]] = {}
        self.transformer: dict[str, str | None] = {}
        self.known: dict[Any, dict[str, tuple[int, int]]] = {}  # spatial shape -> grids
        self.reading: Any = None  # the spatial shape whose grids this forward's hooks read

    def install(self, session: ProbeSession) -> None:
        self.grid_of: dict[str, list[str]] = {}
        self.name_of: dict[int, str] = {}
        self.transformer = session.plan.transformers
        for name in self.names:
            t = session.plan.transformers.get(name)
            if t is not None and t in session.modules:
                self.grid_of.setdefault(t, []).append(name)
                self.name_of[id(session.modules[t])] = t

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        first = session.forward.step == 0
        if not (first or self.steady):
            return
        sample = args[0] if args else kwargs.get("sample")
        key = tuple(sample.shape[2:]) if isinstance(sample, torch.Tensor) else None
        facts = self.steps.facts
        if first and facts is not None:
            for name, res in facts["res"].items():
                rec = self.trace.attention.get(name)
                if rec is not None and rec.res is None:
                    rec.res = tuple(res)
            grids = {t: tuple(r) for t, r in facts.get("grids", {}).items()}
            if key is not None and all(t in grids for t in self.grid_of):
                self.known[key] = grids
        found = self.known.get(key) if key is not None else None
        if found is not None:
            self.res = found
            return
        if first and facts is not None and not self.steady:
            return
        self.res, self.reading = {}, key
        for t in self.grid_of:
            session.hook(session.modules[t], pre=self._pre, first_pass=True)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            name = self.name_of[id(module)]
            res = self.res[name] = (int(x.shape[2]), int(x.shape[3]))
            for attn in self.grid_of[name]:
                rec = self.trace.attention.get(attn)
                if rec is not None and rec.res is None:
                    rec.res = res

    def of(self, attention: str) -> tuple[int, int] | None:
        t = self.transformer.get(attention) or transformer_of(attention)
        return self.res.get(t) if t else None

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        if self.reading is not None and output is not None and len(self.res) == len(self.grid_of):
            self.known[self.reading] = self.res
        self.reading = None
        fresh = self.steps.fresh
        if session.forward.step == 0 and fresh is not None:
            fresh["res"] = {n: r.res for n, r in self.trace.attention.items() if r.res}
            fresh["grids"] = dict(self.res)
        self.res = {}


_ALL = slice(None)


def _full(raw: list[Any]) -> bool:
    """Every tap of a layer seen (``is`` tests: ``None in`` would compare tensors)."""
    for r in raw:
        if r is None:
            return False
    return True


class _QKProbe(Probe):
    """Keeps the Q and K projections of each chosen attention layer during a forward (a
    reference per tap: no tensor op in the hooks), then recomputes every layer's
    probabilities at the end of the forward, layers of one shape together (a few batched
    ops per shape instead of a few per layer), and hands them to ``record``."""

    #: recompute layers of one shape together (cross-attention); else one by one
    batched: ClassVar[bool] = True

    def __init__(
        self,
        trace: Trace,
        options: CaptureOptions,
        names: list[str],
        grids: GridProbe,
        store: MapStore,
    ):
        self.trace, self.options = trace, options
        self.names, self.grids, self.store = names, grids, store

    def install(self, session: ProbeSession) -> None:
        self.forward = session.forward  # not the session: no reference cycle
        self.modules = session.modules
        self.slot: dict[int, tuple[int, int]] = {}
        self.takes: list[list[Callable]] = []
        for i, name in enumerate(self.names):
            read = session.plan.taps(name, taps)
            self.takes.append([take for _, take in read])
            for j, (module, _) in enumerate(read):
                self.slot[id(module)] = (i, j)
                session.hook(module, post=self._tap)
        self.raw: list[list[Any]] = [[None] * len(t) for t in self.takes]

    def _tap(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not output.is_meta:
            i, j = self.slot[id(module)]
            raw = self.raw[i]
            if raw[j] is not None and _full(raw):  # a layer called twice in a forward
                self._compute([i])
            raw[j] = output

    def prepare(self, session: ProbeSession, name: str, out: dict) -> dict:
        """Hook for subclasses: adjust the tapped ``{"q": ..., "k": ...}`` before use."""
        return out

    def record(self, session: Any, names: list[str], probs: torch.Tensor) -> None:
        """Store ``probs``, (layers, heads, queries, tokens) float32 averaged over the kept
        batch, of the attention layers ``names``."""
        raise NotImplementedError

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        if output is not None:  # a forward that raised records no maps
            ready = [i for i, raw in enumerate(self.raw) if _full(raw)]
            if ready:
                self._compute(ready, session)
        for raw in self.raw:
            raw[:] = [None] * len(raw)

    def _compute(self, layers: list[int], session: Any = None) -> None:
        groups: dict[tuple, list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]] = {}
        with torch.no_grad():
            for i in layers:
                name, raw = self.names[i], self.raw[i]
                got: dict[str, torch.Tensor] = {}
                for take, out in zip(self.takes[i], raw, strict=True):
                    got.update(take(out))
                raw[:] = [None] * len(raw)
                got = self.prepare(session, name, got)
                q, k, attention = got["q"], got["k"], self.modules[name]
                key: tuple = (i,)  # alone: declared edits, unbatched probes, odd shapes
                if self.batched and not declared_edits(attention) and q.shape[0] == k.shape[0]:
                    scale = getattr(attention, "scale", None)
                    key = (q.shape, k.shape, q.dtype, k.dtype, q.device, attention.heads, scale)
                groups.setdefault(key, []).append((name, attention, q, k))
            for members in groups.values():
                self._group(session, members)

    def _group(self, session: Any, members: list) -> None:
        """One softmax recompute for layers of one shape: (layers, heads, queries, tokens)."""
        fwd = self.forward
        names = [m[0] for m in members]
        if len(members) == 1:
            _, attention, q, k = members[0]
            probs = probabilities(attention, q, k, fwd.batch, fwd.keep)
            probs = (probs[0] if probs.shape[0] == 1 else probs.mean(0)).unsqueeze(0)
            self.record(session, names, probs)
            return
        attention = members[0][1]
        q = torch.stack([m[2] for m in members], 1)  # (batch, layers, queries, inner)
        k = torch.stack([m[3] for m in members], 1)
        if q.shape[0] == fwd.batch and fwd.keep != _ALL:
            q, k = q[fwd.keep], k[fwd.keep]  # leading rows: views
        rows, layers = q.shape[:2]
        q = q.reshape(rows * layers, *q.shape[2:])
        k = k.reshape(rows * layers, *k.shape[2:])
        if q.dtype != torch.float32:
            q, k = q.float(), k.float()
        probs = softmax_scores(attention, q, k)
        probs = probs.view(rows, layers, *probs.shape[1:])
        self.record(session, names, probs[0] if rows == 1 else probs.mean(0))


class CrossAttentionProbe(_QKProbe):
    """Cross-attention maps ``(heads_or_1, h, w, tokens)`` of the chosen layers, per step or
    summed; with ``daam=True`` also the float32 per-head sum over steps of the down / up
    layers (what DAAM aggregates), in either mode."""

    def record(self, session: Any, names: list[str], probs: torch.Tensor) -> None:
        step, tokens = self.forward.step, probs.shape[-1]
        recs = [self.trace.attention[name] for name in names]
        grids = [grid(probs.shape[2], self.grids.of(name), name) for name in names]
        for rec, res in zip(recs, grids, strict=True):
            rec.res, rec.tokens = res, tokens
        if self.options.daam:
            for j, (rec, (h, w)) in enumerate(zip(recs, grids, strict=True)):
                if rec.location not in DAAM_LOCATIONS:
                    continue
                per_head = probs[j].reshape(probs.shape[1], h, w, tokens)
                if rec.head_sum is None:
                    self.store.charge(per_head.numel() * 4, step, rec.name, "DAAM per-head sums")
                    rec.head_sum = per_head.clone()
                else:
                    rec.head_sum += per_head
                rec.head_count += 1
        if not self.options.per_head:
            probs = probs.mean(1, keepdim=True)
        if all(res == grids[0] for res in grids):
            h, w = grids[0]
            self.store.add_many(recs, probs.reshape(*probs.shape[:2], h, w, tokens), step)
            return
        for j, (rec, (h, w)) in enumerate(zip(recs, grids, strict=True)):
            self.store.add(rec, probs[j].reshape(probs.shape[1], h, w, tokens), step)

    def finalize(self, session: ProbeSession) -> None:
        for rec in self.trace.attention.values():
            if rec.sum is not None:
                rec.sum = rec.sum.to("cpu", torch.float32)
            if rec.head_sum is not None:
                rec.head_sum = rec.head_sum.to("cpu", torch.float32)


class SelfAttentionProbe(_QKProbe):
    """Self-attention rows of chosen query points: ``(heads_or_1, points, h, w)`` per step."""

    batched = False  # queries differ per layer (the chosen points): one layer at a time

    def prepare(self, session: Any, name: str, out: dict) -> dict:
        """Queries restricted to the chosen points before the softmax: rows of (n x n) only."""
        if "q" in out:
            q = out["q"]
            h, w = grid(q.shape[1], self.grids.of(name), name)
            idx = torch.tensor([r * w + c for r, c in self._points(h, w)], device=q.device)
            out["q"] = q.index_select(1, idx)
            self.forward.scratch[f"self_grid/{name}"] = (h, w)
        return out

    def _points(self, h: int, w: int) -> list[tuple[int, int]]:
        points = self.options.self_attention_points or ()
        return [(min(int(y * h), h - 1), min(int(x * w), w - 1)) for y, x in points]

    def record(self, session: Any, names: list[str], probs: torch.Tensor) -> None:
        (name,) = names
        probs = probs[0]
        h, w = self.forward.scratch[f"self_grid/{name}"]
        points = self._points(h, w)
        rec = self.trace.self_attention.get(name)
        if rec is None:
            rec = self.trace.self_attention[name] = SelfAttentionRecord(
                name=name,
                block=block_of(name),
                location=location_of(name),
                res=(h, w),
                heads=self.modules[name].heads,
                points=points,
                per_head=self.options.per_head,
            )
        if not self.options.per_head:
            probs = probs.mean(0, keepdim=True)
        self.store.add(rec, probs.reshape(probs.shape[0], len(points), h, w), self.forward.step)

    def finalize(self, session: ProbeSession) -> None:
        for rec in self.trace.self_attention.values():
            if rec.sum is not None:
                rec.sum = rec.sum.to("cpu", torch.float32)

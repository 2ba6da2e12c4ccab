"""Attention probes: cross-attention maps per token, self-attention rows of chosen points.

Probabilities are recomputed from the outputs of ``to_q`` / ``to_k`` (``softmax(Q K^T *
scale)`` in float32) while the model keeps its own kernel (SDPA): no processor is replaced.
Fused projections (diffusers' ``fuse_qkv_projections()``: ``to_kv`` on cross-attention,
``to_qkv`` on self-attention) are read by slicing the fused output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class GridProbe(Probe):
    """The (h, w) query grid of every attention layer, from its Transformer2DModel's input;
    written on every cross-attention record (even those whose maps are not captured). Hooked
    on every forward only when maps are taken (``steady``); else on the first forward, or
    replayed from the plan's first-pass facts."""

    def __init__(self, trace: Trace, names: list[str], steps: Any, steady: bool) -> None:
        self.trace, self.names, self.steps, self.steady = trace, names, steps, steady
        self.res: dict[str, tuple[int, int]] = {}
        self.transformer: dict[str, str | None] = {}

    def install(self, session: ProbeSession) -> None:
        self.grid_of: dict[str, list[str]] = {}
        self.name_of: dict[int, str] = {}
        self.transformer = session.plan.transformers
        for name in self.names:
            t = session.plan.transformers.get(name)
            if t is not None and t in session.modules:
                self.grid_of.setdefault(t, []).append(name)
                self.name_of[id(session.modules[t])] = t
        if self.steady:
            for t in self.grid_of:
                session.hook(session.modules[t], pre=self._pre)

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        if session.forward.step != 0 or self.steady:
            return
        facts = self.steps.facts
        if facts is None:
            for t in self.grid_of:
                session.hook(session.modules[t], pre=self._pre, first_pass=True)
            return
        for name, res in facts["res"].items():
            rec = self.trace.attention.get(name)
            if rec is not None and rec.res is None:
                rec.res = tuple(res)

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
        self.res.clear()
        fresh = self.steps.fresh
        if session.forward.step == 0 and fresh is not None:
            fresh["res"] = {n: r.res for n, r in self.trace.attention.items() if r.res}


class _QKProbe(Probe):
    """Collects Q and K of each chosen attention layer, then calls ``self.record``."""

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
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def install(self, session: ProbeSession) -> None:
        for name in self.names:
            for module, take in taps(session.modules[name]):
                session.hook(module, post=self._tap(session, name, take))

    def _tap(self, session: ProbeSession, name: str, take: Callable):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.is_meta:
                return
            slot = self.pending.setdefault(name, {})
            slot.update(self.prepare(session, name, take(output)))
            if "q" in slot and "k" in slot:
                del self.pending[name]
                attention = session.modules[name]
                fwd = session.forward
                with torch.no_grad():
                    probs = probabilities(attention, slot["q"], slot["k"], fwd.batch, fwd.keep)
                    # the mean over the kept rows (one row: itself, no copy)
                    probs = probs[0] if probs.shape[0] == 1 else probs.mean(0)
                    self.record(session, name, attention, probs)

        return post

    def prepare(self, session: ProbeSession, name: str, out: dict) -> dict:
        """Hook for subclasses: adjust the tapped ``{"q": ..., "k": ...}`` before use."""
        return out

    def record(
        self, session: ProbeSession, name: str, module: nn.Module, probs: torch.Tensor
    ) -> None:
        """Store ``probs``, (heads, queries, tokens) float32 averaged over the kept batch."""
        raise NotImplementedError

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self.pending.clear()


class CrossAttentionProbe(_QKProbe):
    """Cross-attention maps ``(heads_or_1, h, w, tokens)`` of the chosen layers, per step or
    summed; with ``daam=True`` also the float32 per-head sum over steps of the down / up
    layers (what DAAM aggregates), in either mode."""

    def record(
        self, session: ProbeSession, name: str, module: nn.Module, probs: torch.Tensor
    ) -> None:
        rec = self.trace.attention[name]
        h, w = grid(probs.shape[1], self.grids.of(name), name)
        step = session.forward.step
        rec.res, rec.tokens = (h, w), probs.shape[-1]
        if self.options.daam and rec.location in DAAM_LOCATIONS:
            per_head = probs.reshape(probs.shape[0], h, w, probs.shape[-1])
            if rec.head_sum is None:
                self.store.charge(per_head.numel() * 4, step, name, "DAAM per-head sums")
                rec.head_sum = per_head.clone()
            else:
                rec.head_sum += per_head
            rec.head_count += 1
        if not self.options.per_head:
            probs = probs.mean(0, keepdim=True)
        self.store.add(rec, probs.reshape(probs.shape[0], h, w, probs.shape[-1]), step)

    def finalize(self, session: ProbeSession) -> None:
        for rec in self.trace.attention.values():
            if rec.sum is not None:
                rec.sum = rec.sum.to("cpu", torch.float32)
            if rec.head_sum is not None:
                rec.head_sum = rec.head_sum.to("cpu", torch.float32)


class SelfAttentionProbe(_QKProbe):
    """Self-attention rows of chosen query points: ``(heads_or_1, points, h, w)`` per step."""

    def prepare(self, session: ProbeSession, name: str, out: dict) -> dict:
        """Queries restricted to the chosen points before the softmax: rows of (n x n) only."""
        if "q" in out:
            q = out["q"]
            h, w = grid(q.shape[1], self.grids.of(name), name)
            idx = torch.tensor([r * w + c for r, c in self._points(h, w)], device=q.device)
            out["q"] = q.index_select(1, idx)
            session.forward.scratch[f"self_grid/{name}"] = (h, w)
        return out

    def _points(self, h: int, w: int) -> list[tuple[int, int]]:
        points = self.options.self_attention_points or ()
        return [(min(int(y * h), h - 1), min(int(x * w), w - 1)) for y, x in points]

    def record(
        self, session: ProbeSession, name: str, module: nn.Module, probs: torch.Tensor
    ) -> None:
        h, w = session.forward.scratch[f"self_grid/{name}"]
        points = self._points(h, w)
        rec = self.trace.self_attention.get(name)
        if rec is None:
            rec = self.trace.self_attention[name] = SelfAttentionRecord(
                name=name,
                block=block_of(name),
                location=location_of(name),
                res=(h, w),
                heads=module.heads,
                points=points,
                per_head=self.options.per_head,
            )
        if not self.options.per_head:
            probs = probs.mean(0, keepdim=True)
        self.store.add(rec, probs.reshape(probs.shape[0], len(points), h, w), session.forward.step)

    def finalize(self, session: ProbeSession) -> None:
        for rec in self.trace.self_attention.values():
            if rec.sum is not None:
                rec.sum = rec.sum.to("cpu", torch.float32)

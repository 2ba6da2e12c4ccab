"""The recording probes of a capture, one per concern: steps, blocks, skips, MACs, temb.
(Attention probes live in ``attention.py``.) Each fills its part of the ``Trace``."""

from __future__ import annotations

import dataclasses
import json
import math
from threading import get_ident
from time import perf_counter
from typing import Any

import torch
from torch import nn

from .options import CaptureOptions
from .probe import Probe, ProbeSession
from .records import BlockRecord, SkipRecord, TembRecord
from .shapes import (
    bound_arguments,
    dtype_of,
    first_tensor,
    macs_of,
    named_inputs,
    named_outputs,
)
from .trace import Trace


class StepProbe(Probe):
    """Per forward: the timestep, which CFG rows are kept; the model's inputs and outputs on
    the first. Holds the pending tensors (timestep, temb RMS) that are turned into floats
    once per forward (:meth:`flush`: the capture's only host-device sync).

    Also the capture's first-pass facts: at step 0 it looks up the plan's facts for these
    input shapes (``facts``: a hit, the first-pass probes replay it; else ``fresh``: the
    first-pass probes hook the model and fill it, kept on the plan after the forward)."""

    def __init__(self, trace: Trace, options: CaptureOptions) -> None:
        self.trace, self.options = trace, options
        self.pending: list[tuple[Any, tuple[torch.Tensor, ...]]] = []
        self.facts: dict[str, Any] | None = None
        self.fresh: dict[str, Any] | None = None
        self._key: Any = None

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        fwd, trace = session.forward, self.trace
        if "timestep" in kwargs or "timesteps" in kwargs:
            t = kwargs.get("timestep", kwargs.get("timesteps"))
        elif len(args) > 1:
            t = args[1]
        else:
            bound = bound_arguments(session.model, args, kwargs)
            t = bound.get("timestep", bound.get("timesteps"))
        trace.timesteps.append(self._timestep(t, fwd.step))
        half = self.options.half
        if half == "both" or not fwd.cfg:
            fwd.keep = slice(None)
        elif half == "uncond":
            fwd.keep = slice(0, fwd.batch // 2)
        if fwd.step == 0:
            self._first(session, args, kwargs)

    def _first(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        trace, fwd = self.trace, session.forward
        trace.meta.setdefault("cfg", fwd.cfg)
        trace.meta.setdefault("batch", fwd.batch)
        inputs = trace.meta["inputs"] = named_inputs(session.model, args, kwargs)
        sample = args[0] if args else kwargs.get("sample")
        signature = None
        if isinstance(sample, torch.Tensor):
            signature = (str(sample.dtype), str(sample.device))
            if sample.ndim == 4:
                trace.meta["latent"] = [int(sample.shape[2]), int(sample.shape[3])]
        self._key = (self.options.detail, repr(sorted(inputs.items())), signature)
        self.facts = session.plan.facts(self._key)
        self.fresh = {} if self.facts is None else None

    def _timestep(self, t: Any, step: int) -> float | None:
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
        if isinstance(t, torch.Tensor) and not t.is_meta and t.numel() > 0:

            def fill(v: Any) -> None:
                self.trace.timesteps[step] = float(v[0] if isinstance(v, list) else v)

            self.pending.append((fill, (t,)))
        return None

    def defer(self, callback: Any, *values: torch.Tensor) -> None:
        """Call ``callback(*values)`` at the end of this forward, each value turned into a
        float (0-d tensors) or a list of floats."""
        self.pending.append((callback, values))

    def flush(self) -> None:
        """Every pending tensor of this forward to floats, with one device sync (none on
        the CPU, where each is read in place)."""
        if not self.pending:
            return
        values = [v for _, vs in self.pending for v in vs]
        if all(v.is_cpu for v in values):
            floats = [v.tolist() for v in values]
        else:
            floats = _to_floats(values)
        i = 0
        for callback, vs in self.pending:
            callback(*floats[i : i + len(vs)])
            i += len(vs)
        self.pending.clear()

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        if session.forward.step == 0:
            self.trace.meta["outputs"] = named_outputs(output)
            if self.fresh is not None and output is not None:
                session.plan.keep_facts(self._key, self.fresh)
        self.flush()

    def finalize(self, session: ProbeSession) -> None:
        self.flush()
        self.trace.meta.setdefault("steps", len(self.trace.timesteps))


def _to_floats(values: list[torch.Tensor]) -> list[Any]:
    """Tensors -> a float each (0-d) or a list of floats, one transfer per device (float64
    where the device has it)."""
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    out: list[Any] = [0.0] * len(values)
    for device, idx in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64
        flat = torch.cat([values[i].reshape(-1).to(dtype) for i in idx]).cpu().tolist()
        at = 0
        for i in idx:
            n = values[i].numel()
            out[i] = flat[at] if values[i].ndim == 0 else flat[at : at + n]
            at += n
    return out


class BlockProbe(Probe):
    """Block records at the chosen detail: shapes of the first call, params, calls, time.

    After a module's first call its hooks only read the clock: the pre hook pushes the start
    on one stack (calls nest, so the post hook pops its own start), the post hook adds the
    time and counts the call on the record it finds by the module's id."""

    def __init__(self, trace: Trace, detail: str, steps: StepProbe) -> None:
        self.trace, self.detail, self.steps = trace, detail, steps
        self.records: dict[str, BlockRecord] = {}
        self.by_id: dict[int, BlockRecord] = {}
        self.unshaped: set[int] = set()  # modules whose output shapes are not recorded yet
        self.stack: list[float] = []

    def install(self, session: ProbeSession) -> None:
        plan = session.plan
        if self.detail == "blocks":
            recorded = plan.blocks
        elif self.detail == "layers":
            recorded = plan.blocks + plan.layers
        else:
            recorded = [n for n in plan.modules if n not in plan.containers]
        self.plan = plan
        self.recorded = set(recorded)
        self.name_of = {id(plan.modules[n]): n for n in recorded}
        self.thread = session.thread
        pre, post = self._pre, self._post
        for name in recorded:
            session.hook(plan.modules[name], pre, post, filtered=True)

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        if session.forward.step != 0 or self.steps.facts is None:
            return
        # replay the first calls' shapes (kept as JSON: facts are shared, records are not)
        modules = self.plan.modules
        for fields in json.loads(self.steps.facts["blocks"]):
            rec = BlockRecord(**fields)
            self.records[rec.name] = rec
            self.trace.blocks.append(rec)
            self.by_id[id(modules[rec.name])] = rec

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if get_ident() != self.thread:
            return
        if id(module) not in self.by_id:
            self._first_call(module, args, kwargs)
        self.stack.append(perf_counter())

    def _first_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name, plan = self.name_of[id(module)], self.plan
        rec = self.records[name] = BlockRecord(
            name=name,
            type=type(module).__name__,
            level="block" if name in plan.blocks else "layer" if name in plan.layers else "module",
            parent=self._parent(name),
            inputs=named_inputs(module, args, kwargs),
            params=plan.params(name),
        )
        self.trace.blocks.append(rec)
        self.by_id[id(module)] = rec
        self.unshaped.add(id(module))

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if get_ident() != self.thread:
            return
        rec = self.by_id[id(module)]
        if self.stack:
            rec.time_ms += (perf_counter() - self.stack.pop()) * 1000.0
        rec.calls += 1
        if self.unshaped and id(module) in self.unshaped:
            self.unshaped.discard(id(module))
            rec.outputs = named_outputs(output)
            rec.dtype = dtype_of(output)

    def _parent(self, name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            cand = ".".join(parts[:i])
            if cand in self.recorded:
                return cand
        return None

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self.stack.clear()
        fresh = self.steps.fresh
        if session.forward.step == 0 and fresh is not None:
            fresh["blocks"] = json.dumps(
                [
                    {k: v for k, v in dataclasses.asdict(r).items() if k not in _COUNTED}
                    for r in self.trace.blocks
                ]
            )


_COUNTED = ("calls", "time_ms", "macs")
_ALL = slice(None)
#: the dims of a per-row (per batch item) reduction, by rank
_ROW_DIMS = {n: tuple(range(1, n)) for n in range(2, 9)}


class SkipProbe(Probe):
    """Skip connections, first forward only (the wiring does not change): which module's
    output each up-block resnet concatenates."""

    def __init__(self, trace: Trace, steps: StepProbe) -> None:
        self.trace, self.steps = trace, steps
        self.stack: list[tuple[str, torch.Tensor]] = []
        self.child_out: dict[int, tuple[str, torch.Tensor]] = {}

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        if session.forward.step != 0:
            return
        if self.steps.facts is not None:
            self.trace.skips = [SkipRecord(*f) for f in json.loads(self.steps.facts["skips"])]
            return
        mods, plan = session.modules, session.plan
        blocks = plan.blocks
        if "conv_in" not in mods or not any(n.startswith("down_blocks.") for n in blocks):
            return
        session.hook(mods["conv_in"], post=self._conv_in, first_pass=True)
        for b in blocks:
            if b.startswith("down_blocks."):
                session.hook(mods[b], post=self._down(b, mods[b]), first_pass=True)
                for lname in plan.layers:
                    if lname.startswith(b + "."):
                        session.hook(mods[lname], post=self._child(lname), first_pass=True)
            elif b.startswith("up_blocks."):
                session.hook(mods[b], pre=self._up(b), first_pass=True)

    def _conv_in(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.stack = [("conv_in", output)]

    def _child(self, name: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            t = first_tensor(output)
            if t is not None:
                self.child_out[id(t)] = (name, t)

        return post

    def _down(self, block: str, mod: nn.Module):
        def fallback(k: int) -> str:
            # structural order: per layer the transformer's output if any, else the resnet's;
            # then the downsampler
            resnets = getattr(mod, "resnets", None) or []
            attns = getattr(mod, "attentions", None) or []
            names = [
                f"{block}.attentions.{j}" if j < len(attns) else f"{block}.resnets.{j}"
                for j in range(len(resnets))
            ]
            if getattr(mod, "downsamplers", None):
                names.append(f"{block}.downsamplers.0")
            return names[k] if k < len(names) else f"{block}[{k}]"

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            res = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else ()
            for k, t in enumerate(res):
                src = self.child_out.get(id(t))
                self.stack.append((src[0] if src else fallback(k), t))
            self.child_out.clear()

        return post

    def _up(self, block: str):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            res = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            if not isinstance(res, (tuple, list)) or not res:
                return
            n, stack = len(res), self.stack
            top = len(stack) - n
            for k, t in enumerate(res):
                index = next(
                    (i for i in range(max(top, 0), len(stack)) if stack[i][1] is t), top + k
                )
                source = stack[index][0] if 0 <= index < len(stack) else "?"
                self.trace.skips.append(
                    SkipRecord(index, source, f"{block}.resnets.{n - 1 - k}", list(t.shape))
                )
            self.stack = stack[: max(top, 0)]

        return pre

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self.stack, self.child_out = [], {}
        fresh = self.steps.fresh
        if session.forward.step == 0 and fresh is not None:
            fresh["skips"] = json.dumps(
                [[s.index, s.source, s.target, list(s.shape)] for s in self.trace.skips]
            )

    def finalize(self, session: ProbeSession) -> None:
        """Sort by stack position; put each skip's shape on its target resnet's record."""
        self.trace.skips.sort(key=lambda s: s.index)
        records = {b.name: b for b in self.trace.blocks}
        for s in self.trace.skips:
            rec = records.get(s.target)
            if rec is not None:
                rec.inputs["skip"] = list(s.shape)


class MacsProbe(Probe):
    """MACs per call (first forward): conv / linear leaves and attention matmuls, summed into
    every recorded ancestor; per-head q/k shapes on the attention records."""

    def __init__(self, trace: Trace, steps: StepProbe) -> None:
        self.trace, self.steps = trace, steps
        self.leaf_macs: dict[str, int] = {}
        self.qk_shapes: dict[str, dict[str, list[int]]] = {}
        self.totals: dict[str, int] = {}

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        if session.forward.step != 0:
            return
        facts = self.steps.facts
        if facts is not None:
            self.totals = facts["macs"]
            for name, (q, k, tokens) in facts["qk"].items():
                rec = self.trace.attention.get(name)
                if rec is not None:
                    rec.q_shape, rec.k_shape, rec.tokens = list(q), list(k), tokens
            return
        mods = session.modules
        for name in session.plan.leaves:
            session.hook(mods[name], post=self._leaf(name), first_pass=True)
        for name in session.plan.attention:
            session.hook(mods[name], post=self._attention(name), first_pass=True)

    def _leaf(self, name: str):
        parent, _, leaf = name.rpartition(".")

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self.leaf_macs[name] = self.leaf_macs.get(name, 0) + macs_of(module, output)
            if leaf in ("to_q", "to_k") and isinstance(output, torch.Tensor):
                self.qk_shapes.setdefault(parent, {})[leaf] = list(output.shape)

        return post

    def _attention(self, name: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            shapes = self.qk_shapes.get(name, {})
            q, k = shapes.get("to_q"), shapes.get("to_k")
            if q is None or k is None or len(q) != 3 or len(k) != 3:
                return
            b, n, inner = q
            t = k[1]
            # Q K^T and P V: two (n x t x inner) matmuls per batch item
            self.leaf_macs[name] = self.leaf_macs.get(name, 0) + 2 * b * n * t * inner
            heads = module.heads
            rec = self.trace.attention.get(name)
            if rec is not None and rec.q_shape is None:
                rec.q_shape = [b, heads, n, inner // heads]
                rec.k_shape = [k[0], heads, t, k[2] // heads]
                rec.tokens = t

        return post

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        fresh = self.steps.fresh
        if session.forward.step != 0 or fresh is None:
            return
        totals: dict[str, int] = {}
        for leaf, value in self.leaf_macs.items():
            parts = leaf.split(".")
            for i in range(1, len(parts) + 1):
                key = ".".join(parts[:i])
                totals[key] = totals.get(key, 0) + value
        self.totals = fresh["macs"] = totals
        fresh["qk"] = {
            n: (r.q_shape, r.k_shape, r.tokens)
            for n, r in self.trace.attention.items()
            if r.q_shape is not None
        }

    def finalize(self, session: ProbeSession) -> None:
        if not self.totals:
            return
        for rec in self.trace.blocks:
            rec.macs = self.totals.get(rec.name, 0)


class TembProbe(Probe):
    """The time embedding in every ResnetBlock2D: RMS of ``time_emb_proj``'s output vs the
    conv1 feature map it is added to, the mean projected vector; the sources' RMS
    (``time_embedding``, SDXL's ``add_embedding``, ``class_embedding``).

    Per resnet one tensor op: the per-row norms of the feature map (the model adds temb into
    it in place, so they are taken in conv1's hook); ``time_emb_proj``'s output and the
    sources are only kept. Everything else runs batched at the end of the forward (a few
    tensor ops per forward, not a few per resnet), into one tensor read with the flush."""

    SOURCES = (
        ("time_embedding", "time_rms"),
        ("add_embedding", "text_time_rms"),
        ("class_embedding", "class_rms"),
    )

    def __init__(self, trace: Trace, steps: StepProbe, stream: bool) -> None:
        self.trace, self.steps, self.stream = trace, steps, stream
        self.sources: list[tuple[str, torch.Tensor]] = []
        # per layout (the resnets seen in a forward): summed mean vectors, count, widths
        self.vector_sum: dict[tuple[str, ...], torch.Tensor] = {}
        self.vector_count: dict[tuple[str, ...], int] = {}
        self.vector_steps: dict[tuple[str, ...], list[torch.Tensor]] = {}  # per-step mode
        self.widths: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._segments: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def install(self, session: ProbeSession) -> None:
        parts = session.plan.resnet_parts
        self.names = [name for name, _, _ in parts]
        self.index_of: dict[int, int] = {}
        self.source_of: dict[int, str] = {}
        feature, temb = self._feature, self._temb
        for i, (_, conv1, proj) in enumerate(parts):
            self.index_of[id(conv1)] = self.index_of[id(proj)] = i
            session.hook(conv1, post=feature, filtered=True)
            session.hook(proj, post=temb, filtered=True)
        modules = session.modules
        for name, key in self.SOURCES:
            if name in modules:
                self.source_of[id(modules[name])] = key
                session.hook(modules[name], post=self._source)
        self.norms: list[Any] = [None] * len(parts)  # per resnet: (row norms, numel per row)
        self.tembs: list[Any] = [None] * len(parts)
        self.forward = session.forward  # not the session: no reference cycle
        self.thread = session.thread

    def _feature(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if get_ident() != self.thread:
            return
        if isinstance(output, torch.Tensor) and not output.is_meta and output.ndim > 1:
            x = output.detach() if output.requires_grad else output
            dtype = None if x.dtype == torch.float32 else torch.float32
            self.norms[self.index_of[id(module)]] = (
                torch.linalg.vector_norm(x, dim=_ROW_DIMS[x.ndim], dtype=dtype),
                x.numel() // max(x.shape[0], 1),
            )

    def _temb(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if get_ident() != self.thread:
            return
        if isinstance(output, torch.Tensor) and not output.is_meta:
            self.tembs[self.index_of[id(module)]] = output

    def _source(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        t = first_tensor(output)
        if t is not None and not t.is_meta and t.ndim > 1:
            self.sources.append((self.source_of[id(module)], t))

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        norms, tembs, sources = self.norms, self.tembs, self.sources
        n = len(norms)
        self.norms, self.tembs, self.sources = [None] * n, [None] * n, []
        if output is None:  # a forward that raised records nothing
            return
        pairs = [i for i in range(n) if norms[i] is not None and tembs[i] is not None]
        if not pairs and not sources:
            return
        with torch.no_grad():
            self._record(session.forward, pairs, norms, tembs, sources)

    def _record(self, fwd: Any, pairs: list[int], norms: list, tembs: list, sources: list) -> None:
        """One forward's temb of every resnet: a few batched ops into one deferred tensor
        (sums of squares per resnet, per-row norms), turned into RMS values on the host. The
        mean vectors go to the host without a sync (the end-of-forward flush syncs once)."""
        step, batch, keep = fwd.step, fwd.batch, fwd.keep
        kept_rows = list(range(batch)[keep])
        names = tuple(self.names[i] for i in pairs)
        values: list[torch.Tensor] = []
        counts: list[float] = []  # elements behind each sum of squares
        vectors: Any = [None] * len(names)
        if pairs:
            outs = [tembs[i] for i in pairs]
            outs = [t if t.ndim == 2 else t.reshape(t.shape[0], -1) for t in outs]
            widths = tuple(t.shape[1] for t in outs)
            rows = torch.cat(outs, dim=1)  # (batch, sum of channels)
            if rows.shape[0] == batch and keep != _ALL:
                rows = rows[keep]
            rows = rows if rows.dtype == torch.float32 else rows.float()
            segment, zeros = self._segment(widths, rows.device)
            values.append(zeros.index_add(0, segment, rows.square().sum(0)))  # per resnet
            counts += [float(w * rows.shape[0]) for w in widths]
            mean = rows.mean(0)
            if self.stream:  # memory independent of the steps
                acc = self.vector_sum.get(names)
                if acc is None:
                    self.vector_sum[names] = mean
                else:
                    acc.add_(mean)
            else:  # the host copies are the records' vectors and, at the end, their mean
                host = mean.to("cpu", non_blocking=True)
                self.vector_steps.setdefault(names, []).append(host)
                vectors = host.split(widths)
            self.vector_count[names] = self.vector_count.get(names, 0) + 1
            self.widths[names] = widths
        # per-row norms, the kept rows combined on the host: one cat for everything
        rows_of = [norms[i] for i in pairs]
        for _, t in sources:
            dtype = None if t.dtype == torch.float32 else torch.float32
            norm = torch.linalg.vector_norm(t, dim=_ROW_DIMS[t.ndim], dtype=dtype)
            rows_of.append((norm, t.numel() // max(t.shape[0], 1)))
        values += [r for r, _ in rows_of]
        sizes = [(r.shape[0], per_row) for r, per_row in rows_of]
        keys, r = [k for k, _ in sources], len(names)

        def fill(floats: list[float]) -> None:
            rms = [math.sqrt(v / c) if c else 0.0 for v, c in zip(floats, counts, strict=False)]
            at, found = len(counts), []
            for b, per_row in sizes:
                got = floats[at : at + b]
                held = kept_rows if b == batch else range(b)
                norm = got[held[0]] if len(held) == 1 else math.sqrt(sum(got[j] ** 2 for j in held))
                found.append(norm / math.sqrt(max(per_row * len(held), 1)))
                at += b
            ts = self.trace.timesteps[step]
            for name, t, f, v in zip(names, rms, found, vectors, strict=False):
                self.trace.temb.append(
                    TembRecord(name, step, ts, t, f, t / f if f > 0 else None, v)
                )
            if keys:
                self.trace.temb_sources.append(
                    {"step": step, **dict(zip(keys, found[r:], strict=True))}
                )

        self.steps.defer(fill, values[0] if len(values) == 1 else torch.cat(values))

    def _segment(self, widths: tuple, device: torch.device):
        """(index of the resnet of every channel, zeros per resnet), cached per layout."""
        key = (widths, device)
        found = self._segments.get(key)
        if found is None:
            index = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
            zeros = torch.zeros(len(widths))
            found = self._segments[key] = (index.to(device), zeros.to(device))
        return found

    def finalize(self, session: ProbeSession) -> None:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for names, means in self.vector_steps.items():
            self.vector_sum[names] = torch.stack(means).sum(0)
        for names, acc in self.vector_sum.items():
            n = self.vector_count[names]
            for name, vector in zip(names, acc.to("cpu").split(self.widths[names]), strict=True):
                sums[name] = vector.clone() if name not in sums else sums[name].add_(vector)
                counts[name] = counts.get(name, 0) + n
        self.trace.temb_vectors = {b: v / counts[b] for b, v in sums.items()}

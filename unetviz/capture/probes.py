"""The recording probes of a capture, one per concern: steps, blocks, skips, MACs, temb.
(Attention probes live in ``attention.py``.) Each fills its part of the ``Trace``."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .errors import TraceError
from .options import CaptureOptions
from .probe import Probe, ProbeSession
from .records import BlockRecord, SkipRecord, TembRecord
from .shapes import (
    bound_arguments,
    dtype_of,
    first_tensor,
    is_attention,
    is_resnet,
    macs_of,
    named_inputs,
    named_outputs,
    rms,
)
from .trace import Trace


class StepProbe(Probe):
    """Per forward: the timestep, the batch, which CFG half is kept; the model's inputs and
    outputs on the first. Holds the pending 0-d tensors (timestep, temb RMS) that are turned
    into floats once per forward (:meth:`flush`: the capture's only host-device sync)."""

    def __init__(self, trace: Trace, options: CaptureOptions) -> None:
        self.trace, self.options = trace, options
        self.pending: list[tuple[Any, torch.Tensor]] = []  # (callback, 0-d tensor)

    def install(self, session: ProbeSession) -> None:
        """Nothing to hook: the session's root hooks call begin/end_forward."""

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        fwd, trace = session.forward, self.trace
        bound = bound_arguments(session.model, args, kwargs)
        t = bound.get("timestep", bound.get("timesteps", args[1] if len(args) > 1 else None))
        trace.timesteps.append(self._timestep(t, fwd.step))
        batch = fwd.batch
        cfg = self.options.cfg if self.options.cfg is not None else (batch >= 2 and batch % 2 == 0)
        if fwd.step == 0:
            sample = bound.get("sample", args[0] if args else None)
            trace.meta.setdefault("cfg", bool(cfg))
            trace.meta.setdefault("batch", batch)
            trace.meta["inputs"] = named_inputs(session.model, args, kwargs)
            if isinstance(sample, torch.Tensor) and sample.ndim == 4:
                trace.meta["latent"] = [int(sample.shape[2]), int(sample.shape[3])]
        if cfg and batch % 2:
            raise TraceError(
                f"cfg=True but the UNet batch is {batch} (odd): a classifier-free-guidance batch "
                "is [uncond, cond] halves of equal size"
            )
        half = self.options.half
        if not cfg or half == "both":
            fwd.keep = slice(None)
        elif half == "cond":
            fwd.keep = slice(batch // 2, batch)
        else:
            fwd.keep = slice(0, batch // 2)

    def _timestep(self, t: Any, step: int) -> float | None:
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
        if isinstance(t, torch.Tensor) and not t.is_meta and t.numel() > 0:
            value = t.detach().reshape(-1)[0]

            def fill(v: float) -> None:
                self.trace.timesteps[step] = v

            self.pending.append((fill, value))
        return None

    def defer(self, callback: Any, *values: torch.Tensor) -> None:
        """Call ``callback(*floats)`` at the end of this forward, with ``values`` as floats."""
        self.pending.append((callback, *values))

    def flush(self) -> None:
        """Every pending 0-d tensor of this forward to a float, with one device sync."""
        if not self.pending:
            return
        flat = [v for _, *vs in self.pending for v in vs]
        floats = _to_floats(flat)
        i = 0
        for callback, *vs in self.pending:
            callback(*floats[i : i + len(vs)])
            i += len(vs)
        self.pending.clear()

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        if session.forward.step == 0:
            self.trace.meta["outputs"] = named_outputs(output)
        self.flush()

    def finalize(self, session: ProbeSession) -> None:
        self.flush()
        self.trace.meta.setdefault("steps", len(self.trace.timesteps))


def _to_floats(values: list[torch.Tensor]) -> list[float]:
    """0-d tensors -> floats, one transfer per device (float64 where the device has it)."""
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    out = [0.0] * len(values)
    for device, idx in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64
        floats = torch.stack([values[i].to(dtype) for i in idx]).cpu().tolist()
        for i, f in zip(idx, floats, strict=True):
            out[i] = f
    return out


def block_levels(model: nn.Module) -> tuple[list[str], list[str]]:
    """(blocks, layers): the model's top-level blocks (``down_blocks.0``, ``mid_block``,
    ``conv_in``...) and their layers (``down_blocks.0.resnets.1``...)."""
    blocks: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            blocks += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            blocks.append(name)
    modules = dict(model.named_modules())
    layers: list[str] = []
    for b in blocks:
        for lname, lst in modules[b].named_children():
            if isinstance(lst, nn.ModuleList):
                layers += [f"{b}.{lname}.{j}" for j, _ in lst.named_children()]
    return blocks, layers


class BlockProbe(Probe):
    """Block records at the chosen detail: shapes of the first call, params, calls, time."""

    def __init__(self, trace: Trace, detail: str) -> None:
        self.trace, self.detail = trace, detail
        self.records: dict[str, BlockRecord] = {}
        self.starts: dict[str, list[float]] = {}

    def install(self, session: ProbeSession) -> None:
        blocks, layers = block_levels(session.model)
        self.levels = {n: "block" for n in blocks} | {n: "layer" for n in layers}
        if self.detail == "blocks":
            recorded = blocks
        elif self.detail == "layers":
            recorded = blocks + layers
        else:
            recorded = [
                n
                for n, m in session.modules.items()
                if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
            ]
        self.recorded = set(recorded)
        for name in recorded:
            session.hook(session.modules[name], self._pre(name), self._post(name))

    def _pre(self, name: str):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = self.records.get(name)
            if rec is None:
                rec = self.records[name] = BlockRecord(
                    name=name,
                    type=type(module).__name__,
                    level=self.levels.get(name, "module"),
                    parent=self._parent(name),
                    inputs=named_inputs(module, args, kwargs),
                    params=sum(p.numel() for p in module.parameters()),
                )
                self.trace.blocks.append(rec)
            self.starts.setdefault(name, []).append(time.perf_counter())

        return pre

    def _post(self, name: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            rec = self.records[name]
            stack = self.starts.get(name)
            if stack:
                rec.time_ms += (time.perf_counter() - stack.pop()) * 1000.0
            if rec.calls == 0:
                rec.outputs = named_outputs(output)
                rec.dtype = dtype_of(output)
            rec.calls += 1

        return post

    def _parent(self, name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            cand = ".".join(parts[:i])
            if cand in self.recorded:
                return cand
        return None

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self.starts.clear()


class SkipProbe(Probe):
    """Skip connections, first forward only (the wiring does not change): which module's
    output each up-block resnet concatenates."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.stack: list[tuple[str, torch.Tensor]] = []
        self.child_out: dict[int, tuple[str, torch.Tensor]] = {}

    def install(self, session: ProbeSession) -> None:
        mods = session.modules
        blocks, layers = block_levels(session.model)
        if "conv_in" not in mods or not any(n.startswith("down_blocks.") for n in blocks):
            return
        session.hook(mods["conv_in"], post=self._conv_in, first_pass=True)
        for b in blocks:
            if b.startswith("down_blocks."):
                session.hook(mods[b], post=self._down(b, mods[b]), first_pass=True)
                for lname in layers:
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

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.leaf_macs: dict[str, int] = {}
        self.qk_shapes: dict[str, dict[str, list[int]]] = {}

    def install(self, session: ProbeSession) -> None:
        for name, m in session.modules.items():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                session.hook(m, post=self._leaf(name), first_pass=True)
            if is_attention(m):
                session.hook(m, post=self._attention(name), first_pass=True)

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

    def finalize(self, session: ProbeSession) -> None:
        if not self.leaf_macs:
            return
        totals: dict[str, int] = {}
        for leaf, value in self.leaf_macs.items():
            parts = leaf.split(".")
            for i in range(1, len(parts) + 1):
                key = ".".join(parts[:i])
                totals[key] = totals.get(key, 0) + value
        for rec in self.trace.blocks:
            rec.macs = totals.get(rec.name, 0)


class TembProbe(Probe):
    """The time embedding in every ResnetBlock2D: RMS of ``time_emb_proj``'s output vs the
    conv1 feature map it is added to, the mean projected vector; the sources' RMS
    (``time_embedding``, SDXL's ``add_embedding``, ``class_embedding``)."""

    SOURCES = (
        ("time_embedding", "time_rms"),
        ("add_embedding", "text_time_rms"),
        ("class_embedding", "class_rms"),
    )

    def __init__(self, trace: Trace, steps: StepProbe, stream: bool) -> None:
        self.trace, self.steps, self.stream = trace, steps, stream
        self.slots: dict[str, dict[str, torch.Tensor]] = {}
        self.vector_sum: dict[str, torch.Tensor] = {}
        self.vector_count: dict[str, int] = {}

    def install(self, session: ProbeSession) -> None:
        for name, m in session.modules.items():
            if is_resnet(m):
                session.hook(m.conv1, post=self._part(session, name, "feature"))
                session.hook(m.time_emb_proj, post=self._part(session, name, "temb"))
        for name, key in self.SOURCES:
            if name in session.modules:
                session.hook(session.modules[name], post=self._source(session, key))

    def _kept(self, session: ProbeSession, x: torch.Tensor) -> torch.Tensor:
        fwd = session.forward
        return x[fwd.keep] if x.shape[0] == fwd.batch else x

    def _part(self, session: ProbeSession, resnet: str, kind: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.is_meta:
                return
            slot = self.slots.setdefault(resnet, {})
            with torch.no_grad():
                x = self._kept(session, output.detach())
                if kind == "temb":
                    x = x.reshape(x.shape[0], -1)
                    slot["vector"] = x.float().mean(0)
                slot[kind] = rms(x)
            if "temb" in slot and "feature" in slot:
                del self.slots[resnet]
                self._record(resnet, session.forward.step, slot)

        return post

    def _record(self, resnet: str, step: int, slot: dict[str, torch.Tensor]) -> None:
        vector = slot["vector"].to("cpu")
        acc = self.vector_sum.get(resnet)
        self.vector_sum[resnet] = vector.clone() if acc is None else acc.add_(vector)
        self.vector_count[resnet] = self.vector_count.get(resnet, 0) + 1
        kept = None if self.stream else vector  # stream: memory independent of the steps

        def fill(trms: float, frms: float) -> None:
            ratio = trms / frms if frms > 0 else None
            ts = self.trace.timesteps[step]
            self.trace.temb.append(TembRecord(resnet, step, ts, trms, frms, ratio, kept))

        self.steps.defer(fill, slot["temb"], slot["feature"])

    def _source(self, session: ProbeSession, key: str):
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            t = first_tensor(output)
            if t is None or t.is_meta:
                return
            step = session.forward.step
            with torch.no_grad():
                value = rms(self._kept(session, t.detach()))

            def fill(v: float) -> None:
                rows = self.trace.temb_sources
                if not rows or rows[-1].get("step") != step:
                    rows.append({"step": step})
                rows[-1][key] = v

            self.steps.defer(fill, value)

        return post

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self.slots.clear()

    def finalize(self, session: ProbeSession) -> None:
        self.trace.temb_vectors = {b: v / self.vector_count[b] for b, v in self.vector_sum.items()}

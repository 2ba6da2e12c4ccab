"""``capture(unet)``: forward hooks that fill a Trace while any number of forwards run.

Works on any module tree with diffusers' names (unetviz's UNet or diffusers'
``UNet2DConditionModel``): no model code is imported, no attention processor is replaced.
Cross-attention probabilities are recomputed from the outputs of ``attn2.to_q`` / ``attn2.to_k``
(softmax(Q K^T * scale) over tokens) while the real forward keeps its own (SDPA) kernel.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .trace import (
    AttentionRecord,
    BlockRecord,
    MemoryBudgetError,
    SelfAttentionRecord,
    SkipRecord,
    TembRecord,
    Trace,
    TraceError,
    block_of,
    location_of,
)

DETAILS = ("blocks", "layers", "modules")
MODES = ("steps", "stream")
HALVES = ("cond", "uncond", "both")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of per-step attention maps kept on CPU
MAX_SELF_ATTENTION_POINTS = 64

_ALIASES = {
    "hidden_states": "sample",
    "input_tensor": "sample",
    "sample": "sample",
    "x": "sample",
    "input": "sample",
    "res_hidden_states_tuple": "skips",
    "timesteps": "timestep",
    "timestep": "timestep",
    "emb": "temb",
    "temb": "temb",
}

_LOCKS_GUARD = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_OWNERS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_SIGNATURES: dict[type, inspect.Signature | None] = {}


def _model_lock(model: nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


# ---------------------------------------------------------------------------------- helpers
def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):  # diffusers BaseOutput is an OrderedDict
        for v in x.values():
            if isinstance(v, torch.Tensor):
                return v
        return None
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def _shape(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return [list(t.shape) for t in x]
    return None


def _dtype(x: Any) -> str | None:
    t = _first_tensor(x)
    if t is None and isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                break
    return str(t.dtype).removeprefix("torch.") if t is not None else None


def _signature(module: nn.Module) -> inspect.Signature | None:
    cls = type(module)
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(module.forward)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    return _SIGNATURES[cls]


def _named_inputs(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Input shapes keyed by role (``sample``, ``temb``, ``encoder_hidden_states``, ``skips``,
    ``timestep``...); tensors inside dict arguments (``added_cond_kwargs``) by their keys."""
    sig = _signature(module)
    bound: dict[str, Any]
    try:
        bound = dict(sig.bind_partial(*args, **kwargs).arguments) if sig else {}
    except TypeError:
        bound = {}
    if not bound:
        bound = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    out: dict[str, Any] = {}
    for key, value in bound.items():
        if isinstance(value, dict) and key != "kwargs":
            for k, v in value.items():
                s = _shape(v)
                if s is not None:
                    out[k] = s
            continue
        if key == "kwargs" and isinstance(value, dict):
            for k, v in value.items():
                s = _shape(v)
                if s is not None:
                    out[_ALIASES.get(k, k)] = s
            continue
        s = _shape(value)
        if s is not None:
            out.setdefault(_ALIASES.get(key, key), s)
    return out


def _named_outputs(output: Any) -> dict[str, Any]:
    if isinstance(output, torch.Tensor):
        return {"sample": list(output.shape)}
    if isinstance(output, dict):
        out = {}
        for k, v in output.items():
            s = _shape(v)
            if s is not None:
                out["sample" if not out else k] = s
        return out
    if isinstance(output, (tuple, list)):
        out: dict[str, Any] = {}
        for i, item in enumerate(output):
            s = _shape(item)
            if s is None:
                continue
            if i == 0 and isinstance(item, torch.Tensor):
                out["sample"] = s
            elif i == 1 and isinstance(item, (tuple, list)):
                out["skips"] = s
            else:
                out[f"output{i}"] = s
        return out
    return {}


def _macs(module: nn.Module, output: Any) -> int:
    out = _first_tensor(output)
    if out is None:
        return 0
    if isinstance(module, nn.Conv2d) or isinstance(module, nn.Conv1d):
        k = math.prod(module.kernel_size)
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def _is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, a, None), nn.Module) for a in ("to_q", "to_k")) and (
        isinstance(getattr(module, "heads", None), int)
    )


def _is_cross(name: str, module: nn.Module) -> bool:
    flag = getattr(module, "is_cross_attention", None)
    if isinstance(flag, bool):
        return flag
    return name.endswith("attn2")


def _is_resnet(module: nn.Module) -> bool:
    return isinstance(getattr(module, "conv1", None), nn.Module) and isinstance(
        getattr(module, "time_emb_proj", None), nn.Module
    )


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.float()) / math.sqrt(max(x.numel(), 1))


def _transformer_of(name: str) -> str | None:
    """``...attentions.0.transformer_blocks.0.attn2`` -> ``...attentions.0``."""
    marker = ".transformer_blocks."
    return name.split(marker)[0] if marker in name else None


def _select(kind: str, wanted: Iterable[str], available: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for w in wanted:
        hits = [n for n in available if n == w or n.startswith(w + ".")]
        if not hits:
            raise TraceError(
                f"{kind} layer {w!r} matches no layer of this model; expected a name or prefix "
                f"of: {', '.join(available[:6])}{' ...' if len(available) > 6 else ''}"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


# ---------------------------------------------------------------------------------- capture
class Capture:
    """``capture(model, ...)``: hook ``model`` (a UNet2DConditionModel, unetviz's or
    diffusers') for the ``with`` block; ``__enter__`` gives the Trace being filled.

    ``with capture(unet) as trace: unet(sample, t, encoder_hidden_states)`` records, per
    forward: block shapes/params/MACs/time down to ``detail`` ("blocks", "layers", "modules"),
    skip connections, temb contributions (``temb``), and cross-attention probabilities of the
    layers chosen by ``attention`` (True, False, or attn2 names / prefixes such as
    ``"up_blocks.1"``). ``mode="steps"`` keeps every forward's maps (``attention_dtype`` on CPU,
    at most ``memory_budget`` bytes, else MemoryBudgetError); ``mode="stream"`` keeps a float32
    sum and a count. ``cfg`` says the batch is [uncond, cond] halves (None: any even batch);
    ``half`` picks "cond", "uncond" or "both". ``per_head`` keeps heads apart. Self-attention
    rows are captured only for ``self_attention_layers`` (attn1 names / prefixes) at
    ``self_attention_points`` ((y, x) fractions). ``meta`` is merged into ``trace.meta``.

    Every hook is removed on exit (normal or exception); outputs are unchanged bit for bit.
    Captures of one model are serialised by a per-model lock; forwards of the model in other
    threads are not recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        detail: str = "layers",
        attention: bool | str | Sequence[str] = True,
        temb: bool = True,
        mode: str = "steps",
        half: str = "cond",
        cfg: bool | None = None,
        per_head: bool = False,
        attention_dtype: torch.dtype = torch.float16,
        memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
        self_attention_layers: Sequence[str] | None = None,
        self_attention_points: Sequence[tuple[float, float]] | None = None,
        meta: dict[str, Any] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TraceError(f"capture needs a torch nn.Module (a UNet), got {type(model)!r}")
        if detail not in DETAILS:
            raise TraceError(f"detail={detail!r}: expected one of {list(DETAILS)}")
        if mode not in MODES:
            raise TraceError(
                f"mode={mode!r}: expected 'steps' (keep every step's maps) or 'stream' "
                "(sum over steps, constant memory)"
            )
        if half not in HALVES:
            raise TraceError(f"half={half!r}: expected one of {list(HALVES)}")
        if attention_dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TraceError(
                f"attention_dtype={attention_dtype}: expected torch.float16, bfloat16 or float32"
            )
        if memory_budget is not None and memory_budget <= 0:
            raise TraceError(f"memory_budget={memory_budget}: expected bytes > 0 or None")
        self.model = model
        self.detail = detail
        self.temb_enabled = bool(temb)
        self.mode = mode
        self.half = half
        self.cfg = cfg
        self.per_head = per_head
        self.attention_dtype = attention_dtype
        self.memory_budget = memory_budget
        self.user_meta = dict(meta or {})

        modules = dict(model.named_modules())
        modules.pop("", None)
        self.modules = modules
        attn = [n for n, m in modules.items() if _is_attention(m)]
        self.cross = [n for n in attn if _is_cross(n, modules[n])]
        self_names = [n for n in attn if n not in self.cross]
        if attention is True:
            self.attn_selected = list(self.cross)
        elif attention is False or attention is None:
            self.attn_selected = []
        else:
            wanted = [attention] if isinstance(attention, str) else list(attention)
            self.attn_selected = _select("cross-attention", wanted, self.cross)

        self.self_points: list[tuple[float, float]] = []
        self.self_selected: list[str] = []
        if (self_attention_layers is None) != (self_attention_points is None):
            raise TraceError(
                "self-attention capture needs both self_attention_layers (attn1 names or "
                "prefixes) and self_attention_points ((y, x) fractions in [0, 1])"
            )
        if self_attention_layers is not None:
            wanted = (
                [self_attention_layers]
                if isinstance(self_attention_layers, str)
                else list(self_attention_layers)
            )
            self.self_selected = _select("self-attention", wanted, self_names)
            points = list(self_attention_points or [])
            if not points or len(points) > MAX_SELF_ATTENTION_POINTS:
                raise TraceError(
                    f"self_attention_points has {len(points)} points: expected 1 to "
                    f"{MAX_SELF_ATTENTION_POINTS} (y, x) query points"
                )
            for p in points:
                if (
                    not isinstance(p, (tuple, list))
                    or len(p) != 2
                    or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in p)
                ):
                    raise TraceError(
                        f"self-attention point {p!r}: expected (y, x) fractions in [0, 1] of the "
                        "image height and width"
                    )
            self.self_points = [(float(p[0]), float(p[1])) for p in points]

        self.trace = Trace()
        self.handles: list[Any] = []
        self.first_pass_handles: list[Any] = []
        self.thread: int | None = None
        self._lock: threading.Lock | None = None
        self._reset_forward()
        self.stored_bytes = 0
        self.leaf_macs: dict[str, int] = {}
        self.qk_shapes: dict[str, dict[str, list[int]]] = {}
        self.records: dict[str, BlockRecord] = {}
        self.pending_temb: list[tuple[str, int, float | None, torch.Tensor, Any, Any]] = []
        self.pending_sources: list[tuple[int, str, torch.Tensor]] = []
        self.temb_sum: dict[str, torch.Tensor] = {}
        self.temb_count: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Trace:
        if self.thread is not None:
            raise TraceError("a Capture is entered once: call capture(model, ...) again")
        ident = threading.get_ident()
        with _LOCKS_GUARD:
            nested = _OWNERS.get(self.model) == ident
        if nested:
            raise TraceError(
                "this model is already being captured in this thread: nested captures of one "
                "model are not supported (use one capture with the options you need)"
            )
        self._lock = _model_lock(self.model)
        self._lock.acquire()
        with _LOCKS_GUARD:
            _OWNERS[self.model] = ident
        self.thread = ident
        try:
            self._fill_meta()
            self._install()
        except BaseException:
            self._remove()
            self._release()
            raise
        return self.trace

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._remove()
            self._finalize()
        finally:
            self._release()

    def _release(self) -> None:
        with _LOCKS_GUARD:
            _OWNERS.pop(self.model, None)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _remove(self) -> None:
        for h in self.handles + self.first_pass_handles:
            h.remove()
        self.handles.clear()
        self.first_pass_handles.clear()

    def _reset_forward(self) -> None:
        self.step = -1
        self.keep: slice = slice(None)
        self.batch = 0
        self.starts: dict[str, list[float]] = {}
        self.skip_stack: list[tuple[str, torch.Tensor]] = []
        self.child_out: dict[int, tuple[str, torch.Tensor]] = {}
        self.res: dict[str, tuple[int, int]] = {}
        self.qk_pending: dict[str, dict[str, torch.Tensor]] = {}
        self.temb_pending: dict[str, dict[str, torch.Tensor]] = {}

    def _fill_meta(self) -> None:
        model = self.model
        cls = type(model)
        config = getattr(model, "config", None)
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        elif config is not None:
            try:
                config = dict(config)
            except (TypeError, ValueError):
                config = None
        try:
            p = next(model.parameters())
            device, dtype = str(p.device), str(p.dtype).removeprefix("torch.")
        except StopIteration:
            device, dtype = "cpu", None
        meta = {
            "model": f"{cls.__module__}.{cls.__name__}",
            "detail": self.detail,
            "config": {k: v for k, v in (config or {}).items() if not str(k).startswith("_")}
            or None,
            "device": device,
            "model_dtype": dtype,
            "attention_mode": self.mode,
            "half": self.half,
            "per_head": self.per_head,
        }
        meta.update(self.user_meta)
        self.trace.meta.update(meta)

    # ------------------------------------------------------------------ installation
    def _hook(self, module: nn.Module, pre=None, post=None, first_pass=False, always=False):
        target = self.first_pass_handles if first_pass else self.handles
        if pre is not None:
            target.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if post is not None:
            target.append(module.register_forward_hook(post, with_kwargs=True, always_call=always))

    def _install(self) -> None:
        model, mods = self.model, self.modules
        self._hook(model, self._root_pre, self._root_post, always=True)

        # block records at the chosen detail
        blocks: list[str] = []
        for name, child in model.named_children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                blocks += [f"{name}.{sub}" for sub, _ in child.named_children()]
            else:
                blocks.append(name)
        layers: list[str] = []
        for b in blocks:
            for lname, lst in mods[b].named_children():
                if isinstance(lst, nn.ModuleList):
                    layers += [f"{b}.{lname}.{j}" for j, _ in lst.named_children()]
        self.levels = {n: "block" for n in blocks} | {n: "layer" for n in layers}
        if self.detail == "blocks":
            recorded = blocks
        elif self.detail == "layers":
            recorded = blocks + layers
        else:
            recorded = [
                n for n, m in mods.items() if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
            ]
        self.recorded = set(recorded)
        for name in recorded:
            self._hook(mods[name], self._make_block_pre(name), self._make_block_post(name))

        # skip connections (first forward only: the wiring does not change)
        if "conv_in" in mods and any(n.startswith("down_blocks.") for n in blocks):
            self._hook(mods["conv_in"], post=self._conv_in_post, first_pass=True)
            for b in blocks:
                if b.startswith("down_blocks."):
                    self._hook(mods[b], post=self._make_down_post(b), first_pass=True)
                    for lname in layers:
                        if lname.startswith(b + "."):
                            self._hook(
                                mods[lname], post=self._make_child_post(lname), first_pass=True
                            )
                elif b.startswith("up_blocks."):
                    self._hook(mods[b], pre=self._make_up_pre(b), first_pass=True)

        # MACs and per-head q/k shapes (first forward only)
        for name, m in mods.items():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                self._hook(m, post=self._make_leaf_post(name), first_pass=True)
            if _is_attention(m):
                self._hook(m, post=self._make_attn_macs_post(name), first_pass=True)

        # time embedding
        if self.temb_enabled:
            for name, m in mods.items():
                if _is_resnet(m):
                    self._hook(m.conv1, post=self._make_temb_post(name, "feature"))
                    self._hook(m.time_emb_proj, post=self._make_temb_post(name, "temb"))
            for name, key in (
                ("time_embedding", "time_rms"),
                ("add_embedding", "text_time_rms"),
                ("class_embedding", "class_rms"),
            ):
                if name in mods:
                    self._hook(mods[name], post=self._make_source_post(key))

        # attention: records for every cross-attention layer (shapes), maps for the chosen ones
        for name in self.cross:
            m = mods[name]
            self.trace.attention[name] = AttentionRecord(
                name=name,
                block=block_of(name),
                location=location_of(name),
                res=None,
                heads=m.heads,
                per_head=self.per_head,
            )
        for name in self.attn_selected + self.self_selected:
            m = mods[name]
            self._hook(m.to_q, post=self._make_qk_post(name, "q"))
            self._hook(m.to_k, post=self._make_qk_post(name, "k"))
        # query grids (h, w) from each Transformer2DModel's input
        self.grid_of: dict[str, list[str]] = {}
        for name in self.cross + self.self_selected:
            t = _transformer_of(name)
            if t is not None and t in mods:
                self.grid_of.setdefault(t, []).append(name)
        for t in self.grid_of:
            self._hook(mods[t], pre=self._make_res_pre(t))

    # ------------------------------------------------------------------ root
    def _root_pre(self, module, args, kwargs):
        if threading.get_ident() != self.thread:
            return
        inputs = _named_inputs(module, args, kwargs)
        sig = _signature(module)
        try:
            bound = sig.bind_partial(*args, **kwargs).arguments if sig else {}
        except TypeError:
            bound = {}
        sample = bound.get("sample", args[0] if args else None)
        t = bound.get("timestep", bound.get("timesteps", args[1] if len(args) > 1 else None))
        self.step = len(self.trace.timesteps)
        self.trace.timesteps.append(self._timestep_value(t))
        batch = sample.shape[0] if isinstance(sample, torch.Tensor) else 0
        self.batch = batch
        cfg = self.cfg if self.cfg is not None else (batch >= 2 and batch % 2 == 0)
        if self.step == 0:
            self.trace.meta.setdefault("cfg", bool(cfg))
            self.trace.meta.setdefault("batch", batch)
            self.trace.meta["inputs"] = inputs
            if isinstance(sample, torch.Tensor) and sample.ndim == 4:
                self.trace.meta["latent"] = [int(sample.shape[2]), int(sample.shape[3])]
        if cfg and batch % 2:
            raise TraceError(
                f"cfg=True but the UNet batch is {batch} (odd): a classifier-free-guidance batch "
                "is [uncond, cond] halves of equal size"
            )
        if not cfg or self.half == "both":
            self.keep = slice(None)
        elif self.half == "cond":
            self.keep = slice(batch // 2, batch)
        else:
            self.keep = slice(0, batch // 2)

    @staticmethod
    def _timestep_value(t: Any) -> float | None:
        if isinstance(t, (int, float)):
            return float(t)
        if isinstance(t, torch.Tensor) and not t.is_meta and t.numel() > 0:
            return float(t.detach().reshape(-1)[0].item())
        return None

    def _root_post(self, module, args, kwargs, output):
        if threading.get_ident() != self.thread:
            return
        if self.step == 0:
            self.trace.meta["outputs"] = _named_outputs(output)
            for h in self.first_pass_handles:
                h.remove()
            self.first_pass_handles.clear()
        self._flush_scalars()
        step = self.step
        self._reset_forward()
        self.step = step

    def _flush_scalars(self) -> None:
        """Turn this forward's pending 0-d tensors into floats with one device sync."""
        if self.pending_temb:
            values = torch.stack([torch.stack([a, b]) for *_, a, b in self.pending_temb])
            for (block, step, ts, vector, _, _), (trms, frms) in zip(
                self.pending_temb, values.tolist(), strict=True
            ):
                ratio = trms / frms if frms > 0 else None
                acc = self.temb_sum.get(block)
                self.temb_sum[block] = vector.clone() if acc is None else acc.add_(vector)
                self.temb_count[block] = self.temb_count.get(block, 0) + 1
                if self.mode == "stream":  # memory independent of the step count
                    vector = None
                self.trace.temb.append(TembRecord(block, step, ts, trms, frms, ratio, vector))
            self.pending_temb.clear()
        if self.pending_sources:
            values = torch.stack([v for *_, v in self.pending_sources]).tolist()
            by_step: dict[int, dict[str, Any]] = {}
            for (step, key, _), value in zip(self.pending_sources, values, strict=True):
                by_step.setdefault(step, {"step": step})[key] = value
            self.trace.temb_sources += list(by_step.values())
            self.pending_sources.clear()

    # ------------------------------------------------------------------ block records
    def _make_block_pre(self, name: str):
        def pre(module, args, kwargs):
            if threading.get_ident() != self.thread:
                return
            rec = self.records.get(name)
            if rec is None:
                rec = BlockRecord(
                    name=name,
                    type=type(module).__name__,
                    level=self.levels.get(name, "module"),
                    parent=self._parent(name),
                    inputs=_named_inputs(module, args, kwargs),
                    params=sum(p.numel() for p in module.parameters()),
                )
                self.records[name] = rec
                self.trace.blocks.append(rec)
            self.starts.setdefault(name, []).append(time.perf_counter())

        return pre

    def _make_block_post(self, name: str):
        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
            rec = self.records[name]
            stack = self.starts.get(name)
            if stack:
                rec.time_ms += (time.perf_counter() - stack.pop()) * 1000.0
            if rec.calls == 0:
                rec.outputs = _named_outputs(output)
                rec.dtype = _dtype(output)
            rec.calls += 1

        return post

    def _parent(self, name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            cand = ".".join(parts[:i])
            if cand in self.recorded:
                return cand
        return None

    # ------------------------------------------------------------------ skips
    def _conv_in_post(self, module, args, kwargs, output):
        if threading.get_ident() != self.thread:
            return
        self.skip_stack = [("conv_in", output)]

    def _make_child_post(self, name: str):
        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
            t = _first_tensor(output)
            if t is not None:
                self.child_out[id(t)] = (name, t)

        return post

    def _make_down_post(self, block: str):
        mod = self.modules[block]

        def fallback(k: int) -> str:
            # structural order: per layer the transformer's output if any, else the resnet's;
            # then the downsampler
            names = []
            resnets = getattr(mod, "resnets", None) or []
            attns = getattr(mod, "attentions", None) or []
            for j in range(len(resnets)):
                names.append(
                    f"{block}.attentions.{j}" if j < len(attns) else f"{block}.resnets.{j}"
                )
            if getattr(mod, "downsamplers", None):
                names.append(f"{block}.downsamplers.0")
            return names[k] if k < len(names) else f"{block}[{k}]"

        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
            res = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else ()
            for k, t in enumerate(res):
                src = self.child_out.get(id(t))
                self.skip_stack.append((src[0] if src else fallback(k), t))
            self.child_out.clear()

        return post

    def _make_up_pre(self, block: str):
        def pre(module, args, kwargs):
            if threading.get_ident() != self.thread:
                return
            res = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            if not isinstance(res, (tuple, list)) or not res:
                return
            n = len(res)
            stack = self.skip_stack
            top = len(stack) - n
            for k, t in enumerate(res):
                index = next(
                    (i for i in range(max(top, 0), len(stack)) if stack[i][1] is t),
                    top + k,
                )
                source = stack[index][0] if 0 <= index < len(stack) else "?"
                self.trace.skips.append(
                    SkipRecord(
                        index=index,
                        source=source,
                        target=f"{block}.resnets.{n - 1 - k}",
                        shape=list(t.shape),
                    )
                )
            self.skip_stack = stack[: max(top, 0)]

        return pre

    # ------------------------------------------------------------------ MACs
    def _make_leaf_post(self, name: str):
        parent, _, leaf = name.rpartition(".")

        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
            self.leaf_macs[name] = self.leaf_macs.get(name, 0) + _macs(module, output)
            if leaf in ("to_q", "to_k") and isinstance(output, torch.Tensor):
                self.qk_shapes.setdefault(parent, {})[leaf] = list(output.shape)

        return post

    def _make_attn_macs_post(self, name: str):
        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
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

    # ------------------------------------------------------------------ temb
    def _make_temb_post(self, resnet: str, kind: str):
        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread or not isinstance(output, torch.Tensor):
                return
            if output.is_meta:
                return
            slot = self.temb_pending.setdefault(resnet, {})
            with torch.no_grad():
                x = output.detach()
                if x.shape[0] == self.batch:
                    x = x[self.keep]
                if kind == "temb":
                    x = x.reshape(x.shape[0], -1)
                    slot["vector"] = x.float().mean(0)
                slot[kind] = _rms(x)
            if "temb" in slot and "feature" in slot:
                self.pending_temb.append(
                    (
                        resnet,
                        self.step,
                        self.trace.timesteps[self.step],
                        slot["vector"].to("cpu"),
                        slot["temb"],
                        slot["feature"],
                    )
                )
                del self.temb_pending[resnet]

        return post

    def _make_source_post(self, key: str):
        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread:
                return
            t = _first_tensor(output)
            if t is None or t.is_meta:
                return
            with torch.no_grad():
                x = t.detach()
                if x.shape[0] == self.batch:
                    x = x[self.keep]
                self.pending_sources.append((self.step, key, _rms(x)))

        return post

    # ------------------------------------------------------------------ attention
    def _make_res_pre(self, name: str):
        def pre(module, args, kwargs):
            if threading.get_ident() != self.thread:
                return
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor) and x.ndim == 4:
                res = self.res[name] = (int(x.shape[2]), int(x.shape[3]))
                for attn in self.grid_of[name]:
                    rec = self.trace.attention.get(attn)
                    if rec is not None and rec.res is None:
                        rec.res = res

        return pre

    def _make_qk_post(self, name: str, kind: str):
        transformer = _transformer_of(name)
        is_self = name in self.self_selected and name not in self.attn_selected

        def post(module, args, kwargs, output):
            if threading.get_ident() != self.thread or not isinstance(output, torch.Tensor):
                return
            if output.is_meta:
                return
            slot = self.qk_pending.setdefault(name, {})
            slot[kind] = output
            if "q" in slot and "k" in slot:
                del self.qk_pending[name]
                res = self.res.get(transformer) if transformer else None
                if is_self:
                    self._self_attention(name, slot["q"], slot["k"], res)
                else:
                    self._cross_attention(name, slot["q"], slot["k"], res)

        return post

    def _probs(self, name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(b, n, inner), (b, t, inner) -> softmax(Q K^T * scale) as (b, heads, n, t) float32."""
        module = self.modules[name]
        heads = module.heads
        if q.shape[0] == self.batch:
            q = q[self.keep]
        if k.shape[0] == self.batch:
            k = k[self.keep]
        b, n, inner = q.shape
        d = inner // heads
        scale = getattr(module, "scale", None)
        scale = float(scale) if isinstance(scale, (int, float)) else d**-0.5
        q = q.detach().float().reshape(b, n, heads, d).transpose(1, 2)
        k = k.detach().float().reshape(k.shape[0], -1, heads, d).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)

    def _grid(self, n: int, res: tuple[int, int] | None, name: str) -> tuple[int, int]:
        if res is not None and res[0] * res[1] == n:
            return res
        side = math.isqrt(n)
        if side * side == n:
            return (side, side)
        raise TraceError(
            f"cannot fold {n} attention queries of {name} into an (h, w) grid: the enclosing "
            "Transformer2DModel input was not seen"
        )

    def _cross_attention(self, name: str, q: torch.Tensor, k: torch.Tensor, res) -> None:
        rec = self.trace.attention[name]
        with torch.no_grad():
            probs = self._probs(name, q, k).mean(0)  # (heads, n, t)
            if not self.per_head:
                probs = probs.mean(0, keepdim=True)
            h, w = self._grid(probs.shape[1], res, name)
            probs = probs.reshape(probs.shape[0], h, w, probs.shape[-1])
            rec.res = (h, w)
            rec.tokens = probs.shape[-1]
            self._store(rec, probs, name)

    def _self_attention(self, name: str, q: torch.Tensor, k: torch.Tensor, res) -> None:
        module = self.modules[name]
        n = q.shape[1]
        h, w = self._grid(n, res, name)
        points = [(min(int(y * h), h - 1), min(int(x * w), w - 1)) for y, x in self.self_points]
        idx = torch.tensor([r * w + c for r, c in points], device=q.device)
        rec = self.trace.self_attention.get(name)
        if rec is None:
            rec = self.trace.self_attention[name] = SelfAttentionRecord(
                name=name,
                block=block_of(name),
                location=location_of(name),
                res=(h, w),
                heads=module.heads,
                points=points,
                per_head=self.per_head,
            )
        with torch.no_grad():
            probs = self._probs(name, q.index_select(1, idx), k).mean(0)  # (heads, P, n)
            if not self.per_head:
                probs = probs.mean(0, keepdim=True)
            probs = probs.reshape(probs.shape[0], len(points), h, w)
            self._store(rec, probs, name)

    def _store(self, rec, probs: torch.Tensor, name: str) -> None:
        if self.mode == "stream":
            rec.sum = probs if rec.sum is None else rec.sum + probs
            rec.count += 1
            return
        nbytes = probs.numel() * torch.finfo(self.attention_dtype).bits // 8
        if self.memory_budget is not None and self.stored_bytes + nbytes > self.memory_budget:
            mib = 1024**2
            raise MemoryBudgetError(
                f"per-step attention maps would exceed memory_budget="
                f"{self.memory_budget / mib:.1f} MiB at step {self.step} (layer {name}, "
                f"{self.stored_bytes / mib:.1f} MiB kept so far); use mode='stream' "
                "(sum over steps, constant memory), a larger memory_budget, fewer layers "
                "(attention=[...]) or per_head=False"
            )
        self.stored_bytes += nbytes
        rec.maps.append(probs.to("cpu", self.attention_dtype))
        rec.steps.append(self.step)

    # ------------------------------------------------------------------ finalize
    def _finalize(self) -> None:
        self._flush_scalars()
        for rec in list(self.trace.attention.values()) + list(self.trace.self_attention.values()):
            if rec.sum is not None:
                rec.sum = rec.sum.to("cpu", torch.float32)
        # MACs: leaves summed into every recorded ancestor (per call of the first forward)
        if self.leaf_macs:
            totals: dict[str, int] = {}
            for leaf, value in self.leaf_macs.items():
                parts = leaf.split(".")
                for i in range(1, len(parts) + 1):
                    key = ".".join(parts[:i])
                    totals[key] = totals.get(key, 0) + value
            for rec in self.trace.blocks:
                rec.macs = totals.get(rec.name, 0)
        # the skip each up-block resnet concatenated, on that resnet's record
        self.trace.skips.sort(key=lambda s: s.index)
        for s in self.trace.skips:
            rec = self.records.get(s.target)
            if rec is not None:
                rec.inputs["skip"] = list(s.shape)
        self.trace.temb_vectors = {b: v / self.temb_count[b] for b, v in self.temb_sum.items()}
        self.trace.meta.setdefault("steps", len(self.trace.timesteps))
        self.trace._cache.clear()


#: ``capture(unet, ...)`` builds a :class:`Capture`; one signature, one set of defaults.
capture = Capture

"""Edit probes: one :class:`~unetviz.capture.probe.Probe` (``edits = True``) per edit, hooked
onto named modules by the intervention's :class:`~unetviz.capture.probe.ProbeSession` for the
length of a ``with``.

``edits = True`` makes the session prepend their hooks, so on each module they run before any
capture hook and a capture records what the edit produced. They act only in the thread that
entered the ``with`` (the session's thread filter) and only at the forwards their step window
covers (``session.forward.active(window)``); "the conditional half" is
``session.forward.cond`` (one rule, :func:`~unetviz.capture.probe.cfg_halves`).

How each edit is computed:
- Reweight: ``(P * w) V == P (w * V)`` for a per-token weight ``w`` (P2P's equalizer is per
  token, the same for every head and query). Scaling the rows of ``to_v``'s output by ``w``
  in the conditional half therefore equals multiplying the post-softmax probabilities, with
  no renormalisation, while the layer keeps its fast fused attention kernel.
- Replace: explicit attention for the edited layers only: ``to_out(P_source @ V)`` for the
  conditional rows, other rows as computed.
- AblateSkip: the skip is the last channels of its up-block resnet's input (``cat([h, skip])``).
- AblateBlock / Patch: the module's output tensors (a down block's pushed skips included).
- ScaleTemb: ``time_emb_proj``'s output, which the resnet adds to the conv1 features.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..capture.attention import probabilities
from ..capture.probe import Forward, Probe, ProbeSession, add_probability_edit
from .spec import EditError

if TYPE_CHECKING:
    from .intervene import Recording

Window = tuple[int, int] | None


def map_output(output: Any, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> Any:
    """``output`` with every tensor ``t`` (the i-th, depth first) replaced by ``fn(i, t)``:
    tensors, tuples (a down block's ``(hidden, skips)``), lists and diffusers' output classes."""
    counter = iter(range(1 << 30))

    def go(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return fn(next(counter), x)
        if isinstance(x, tuple):
            return tuple(go(v) for v in x)
        if isinstance(x, list):
            return [go(v) for v in x]
        if isinstance(x, dict):  # diffusers' BaseOutput is an OrderedDict dataclass
            return type(x)(**{k: go(v) for k, v in x.items()})
        return x

    return go(output)


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors :func:`map_output` visits, in its order."""
    found: list[torch.Tensor] = []

    def keep(i: int, t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    map_output(output, keep)
    return found


def ablate(x: torch.Tensor, mode: str | float) -> torch.Tensor:
    """A new tensor: zeros, the spatial mean per channel (feature maps (B, C, H, W) over H, W;
    token sequences (B, N, C) over N), or ``x * mode``."""
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "mean":
        dims = (2, 3) if x.ndim == 4 else (1,) if x.ndim == 3 else None
        if dims is None:
            return x.clone()
        return x.mean(dims, keepdim=True).expand_as(x).contiguous()
    return x * mode


def _first(output: Any) -> torch.Tensor | None:
    found = tensors_of(output)
    return found[0] if found else None


def _overlap(rows: slice, cond: slice, batch: int) -> tuple[slice, slice] | None:
    """Where the conditional rows ``cond`` fall in a tensor holding the batch rows ``rows``:
    (its slice, the slice of a conditional-half tensor), or None when they do not meet."""
    held, want = range(batch)[rows], range(batch)[cond]
    start, stop = max(held.start, want.start), min(held.stop, want.stop)
    if start >= stop:
        return None
    return slice(start - held.start, stop - held.start), slice(
        start - want.start, stop - want.start
    )


class EditProbe(Probe):
    """Base of the edit probes: ``window`` is a half-open range of forward indices (None:
    all); the probability edits it declares are withdrawn on exit."""

    edits = True
    window: Window = None

    def install(self, session: ProbeSession) -> None:
        self.forward: Forward = session.forward
        self.thread = session.thread
        self._withdraw: list[Callable[[], None]] = []
        self.hook(session)

    def hook(self, session: ProbeSession) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def active(self, window: Window = None) -> bool:
        return self.forward.active(window if window is not None else self.window)

    def declare(self, attention: nn.Module, edit: Callable) -> None:
        """Tell a capture how this edit changes ``attention``'s softmax probabilities (an
        ``edit(probs, rows)``), so the maps it records are the ones the model used."""
        self._withdraw.append(add_probability_edit(attention, edit, rows=True))

    def finalize(self, session: ProbeSession) -> None:
        for withdraw in self._withdraw:
            withdraw()
        self._withdraw.clear()


class ReweightEdit(EditProbe):
    """Scale the value rows of ``indices`` by ``scale`` in the conditional half."""

    def __init__(self, layers: list[str], indices: list[int], scale: float, window: Window):
        self.layers, self.indices, self.scale, self.window = layers, indices, scale, window
        self._index: dict[torch.device, torch.Tensor] = {}
        # consecutive token indices (the usual case: one word): scaled in place through a
        # narrow view, one op instead of a gather, a multiply and a scatter
        first = min(indices) if indices else 0
        span = sorted(set(indices)) == list(range(first, first + len(indices)))
        self._span = (first, len(indices)) if indices and span else None

    def hook(self, session: ProbeSession) -> None:
        for name in self.layers:
            module = session.modules[name]
            session.hook(module.to_v, post=self._post)
            self.declare(module, self._probs)

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        if session.forward.step != 0:
            return
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if isinstance(context, torch.Tensor):
            bad = [i for i in self.indices if i >= context.shape[1]]
            if bad:
                raise EditError(
                    f"Reweight token index {bad[0]}: encoder_hidden_states has "
                    f"{context.shape[1]} tokens"
                )

    def _probs(self, probs: torch.Tensor, rows: slice) -> torch.Tensor:
        """The same equalizer on the probabilities a capture recomputes (rows ``rows``)."""
        fwd = self.forward
        if get_ident() != self.thread or not self.active():
            return probs
        where = _overlap(rows, fwd.cond, fwd.batch)
        if where is None or probs.shape[0] != len(range(fwd.batch)[rows]):
            return probs
        rows = probs[where[0]]  # a view; the token index lives on the device: no host copy
        self._scale(rows, 3)
        return probs

    def _scale(self, rows: torch.Tensor, dim: int) -> None:
        """Multiply the chosen tokens (along ``dim``) of ``rows``, a view, in place."""
        if self._span is not None:
            rows.narrow(dim, *self._span).mul_(self.scale)
            return
        idx = self._device_index(rows.device)
        rows.index_copy_(dim, idx, rows.index_select(dim, idx) * self.scale)

    def _device_index(self, device: torch.device) -> torch.Tensor:
        idx = self._index.get(device)
        if idx is None:
            idx = self._index[device] = torch.tensor(self.indices, device=device)
        return idx

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self.active() or not isinstance(output, torch.Tensor):
            return None
        v = output.clone() if torch.is_grad_enabled() else output
        self._scale(v[self.forward.cond], 1)  # a view: cond is a slice
        return v


class ReplaceEdit(EditProbe):
    """Attention probabilities of the conditional half taken from a recorded source run."""

    def __init__(self, layers: dict[str, Window], recording: Recording):
        self.layers = layers  # name -> window (cross and self layers alike)
        self.recording = recording
        self._v: dict[str, torch.Tensor] = {}

    def hook(self, session: ProbeSession) -> None:
        self.name_of: dict[int, str] = {}
        for name in self.layers:
            module = session.modules[name]
            self.name_of[id(module)] = self.name_of[id(module.to_v)] = name
            session.hook(module.to_v, post=self._keep_v)
            session.hook(module, post=self._replace)
            self.declare(module, self._probs(name))

    def _probs(self, name: str):
        """The source's probabilities in the conditional rows a capture recomputes."""

        def edit(probs: torch.Tensor, rows: slice) -> torch.Tensor:
            fwd = self.forward
            if get_ident() != self.thread or not self.active(self.layers[name]):
                return probs
            where = _overlap(rows, fwd.cond, fwd.batch)
            if where is None or probs.shape[0] != len(range(fwd.batch)[rows]):
                return probs
            source = self.recording.attention_at(name, fwd.step)
            probs[where[0]] = source[where[1]].to(probs.device, probs.dtype)
            return probs

        return edit

    def _keep_v(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        name = self.name_of[id(module)]
        if self.active(self.layers[name]):
            self._v[name] = output

    def _replace(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        name = self.name_of[id(module)]
        v = self._v.pop(name, None)
        if v is None or not self.active(self.layers[name]):
            return None
        cond = self.forward.cond
        probs = self.recording.attention_at(name, self.forward.step)
        b = v[cond].shape[0]
        v = v[cond].reshape(b, v.shape[1], module.heads, -1).transpose(1, 2)
        if probs.shape[0] != b or probs.shape[-1] != v.shape[2]:
            raise EditError(
                f"Replace: the source maps of {name} have shape {tuple(probs.shape)} but "
                f"this run needs ({b}, heads, queries, {v.shape[2]}): the source must be run "
                "with the same size, guidance and token count"
            )
        rows = probs.to(device=v.device, dtype=torch.float32) @ v.float()
        rows = rows.transpose(1, 2).reshape(b, rows.shape[2], -1).to(v.dtype)
        rows = module.to_out[1](module.to_out[0](rows))
        if getattr(module, "residual_connection", False):
            rows = rows + args[0][cond]
        rows = rows / getattr(module, "rescale_output_factor", 1.0)
        out = output.clone()
        out[cond] = rows.to(out.dtype)
        return out

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self._v.clear()

    def finalize(self, session: ProbeSession) -> None:
        super().finalize(session)
        self._v.clear()


class SkipAblation(EditProbe):
    """Edit the last ``channels`` of the target resnet's input: the concatenated skip."""

    def __init__(self, source: str, target: str, mode: str | float, window: Window):
        self.source, self.target, self.mode, self.window = source, target, mode, window
        self.channels: int | None = None

    def hook(self, session: ProbeSession) -> None:
        session.hook(session.modules[self.source], post=self._seen)
        session.hook(session.modules[self.target], pre=self._edit)

    def _seen(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        t = _first(output)
        if t is not None and t.ndim == 4:
            self.channels = int(t.shape[1])

    def _edit(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if not self.active() or not self.channels:
            return None
        key = None if args else next(k for k in ("input_tensor", "hidden_states") if k in kwargs)
        x = args[0] if args else kwargs[key]
        c = self.channels
        x = torch.cat([x[:, :-c], ablate(x[:, -c:], self.mode)], dim=1)
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, key: x}


class OutputEdit(EditProbe):
    """Replace a module's output tensors: ablated (``mode``, AblateBlock) or from a recording
    (``source``, Patch)."""

    def __init__(
        self,
        name: str,
        window: Window,
        mode: str | float | None = None,
        source: Recording | None = None,
        half: str = "both",
    ):
        self.name, self.window, self.mode = name, window, mode
        self.source = source
        self.half = half

    def hook(self, session: ProbeSession) -> None:
        session.hook(session.modules[self.name], post=self._post)

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self.active():
            return None
        if self.source is None:
            return map_output(output, lambda i, t: ablate(t, self.mode))
        fwd = self.forward
        recorded = self.source.outputs_at(self.name, fwd.step)

        def patch(i: int, t: torch.Tensor) -> torch.Tensor:
            src = recorded[i].to(device=t.device, dtype=t.dtype)
            if src.shape != t.shape:
                raise EditError(
                    f"Patch {self.name}: the source output has shape {tuple(src.shape)}, "
                    f"this run {tuple(t.shape)}: run the source with the same size and guidance"
                )
            if self.half == "both":
                return src.clone()  # a fresh tensor: the model may add into it in place
            out = t.clone()
            out[fwd.cond] = src[fwd.cond]
            return out

        return map_output(output, patch)


class TembScale(EditProbe):
    """Scale ``time_emb_proj``'s output of the given resnets."""

    def __init__(self, resnets: list[str], scale: float, window: Window):
        self.resnets, self.scale, self.window = resnets, scale, window

    def hook(self, session: ProbeSession) -> None:
        for name in self.resnets:
            session.hook(session.modules[name].time_emb_proj, post=self._post)

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.active() and isinstance(output, torch.Tensor):
            return output * self.scale
        return None


class SourceRecorder(Probe):
    """Keep, per forward in ``window``, module outputs (cloned: the model adds into some in
    place) and the post-softmax attention probabilities (conditional half) of chosen layers:
    what a Patch or Replace takes from its source run."""

    def __init__(
        self,
        recording: Recording,
        outputs: list[str],
        attention: list[str],
        window: Window,
        max_queries: int | None = None,
    ):
        self.recording, self.outputs, self.attention = recording, outputs, attention
        self.window, self.max_queries = window, max_queries
        self._q: dict[str, torch.Tensor] = {}

    def install(self, session: ProbeSession) -> None:
        self.forward = session.forward
        self.output_of: dict[int, str] = {}
        self.name_of: dict[int, str] = {}
        for name in self.outputs:
            self.output_of[id(session.modules[name])] = name
            session.hook(session.modules[name], post=self._output)
        for name in self.attention:
            module = session.modules[name]
            self.name_of[id(module.to_q)] = self.name_of[id(module.to_k)] = name
            session.hook(module.to_q, post=self._q_post)
            session.hook(module.to_k, post=self._k_post)
        self.modules = session.modules

    def _output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.forward.active(self.window):
            kept = [t.detach().clone() for t in tensors_of(output)]
            name = self.output_of[id(module)]
            self.recording.outputs.setdefault(name, {})[self.forward.step] = kept

    def _q_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.forward.active(self.window):
            self._q[self.name_of[id(module)]] = output

    def _k_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        name = self.name_of[id(module)]
        q = self._q.pop(name, None)
        fwd = self.forward
        if q is None or not fwd.active(self.window):
            return
        if self.max_queries is not None and q.shape[1] > self.max_queries:
            return  # P2P replaces self-attention only in small maps: keep no more
        probs = probabilities(self.modules[name], q, output, fwd.batch, fwd.cond)
        self.recording.attention.setdefault(name, {})[fwd.step] = probs

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        self._q.clear()

"""Probes: one small object per edit, hooked onto named modules for the length of a ``with``.

Each probe's ``install(iv)`` registers its hooks through the :class:`Intervention` ``iv``
(``prepend=True``: they run before any capture hook on the same module, so a capture records
what the edit produced). A probe acts only in the thread that entered the ``with`` and only at
the forwards its step window covers.

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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..capture.attention import probabilities
from .spec import EditError

if TYPE_CHECKING:
    from .intervene import Intervention, Recording


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


class Probe:
    """Base: ``window`` is a half-open range of forward indices (None: all)."""

    window: tuple[int, int] | None = None

    def install(self, iv: Intervention) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ReweightProbe(Probe):
    """Scale the value rows of ``indices`` by ``scale`` in the conditional half."""

    def __init__(self, layers: list[str], indices: list[int], scale: float, window):
        self.layers, self.indices, self.scale, self.window = layers, indices, scale, window
        self._index: dict[torch.device, torch.Tensor] = {}

    def install(self, iv: Intervention) -> None:
        for name in self.layers:
            module = iv.map.modules[name]
            iv.hook(module.to_v, post=self._post(iv))
            iv.declare_probabilities(module, self._probs(iv))

    def _probs(self, iv: Intervention):
        """The same equalizer on the probabilities a capture recomputes (full batch)."""

        def edit(probs: torch.Tensor) -> torch.Tensor:
            if not iv.active(self.window) or probs.shape[0] != iv.batch:
                return probs
            probs = probs.clone()
            probs[iv.keep, :, :, self.indices] *= self.scale
            return probs

        return edit

    def _post(self, iv: Intervention):
        def post(module, args, kwargs, output):
            if not iv.active(self.window) or not isinstance(output, torch.Tensor):
                return None
            idx = self._index.get(output.device)
            if idx is None:
                idx = self._index[output.device] = torch.tensor(self.indices, device=output.device)
            v = output.clone() if torch.is_grad_enabled() else output
            rows = v[iv.keep]  # a view: keep is a slice
            rows.index_copy_(1, idx, rows.index_select(1, idx) * self.scale)
            return v

        return post


class ReplaceProbe(Probe):
    """Attention probabilities of the conditional half taken from a recorded source run."""

    def __init__(self, layers: dict[str, tuple[int, int] | None], recording: Recording):
        self.layers = layers  # name -> window (cross and self layers alike)
        self.recording = recording
        self._v: dict[str, torch.Tensor] = {}

    def install(self, iv: Intervention) -> None:
        for name in self.layers:
            module = iv.map.modules[name]
            iv.hook(module.to_v, post=self._keep_v(iv, name))
            iv.hook(module, post=self._replace(iv, name))
            iv.declare_probabilities(module, self._probs(iv, name))
        iv.on_forward_end.append(self._v.clear)

    def _probs(self, iv: Intervention, name: str):
        """The source's probabilities in the conditional rows a capture recomputes."""

        def edit(probs: torch.Tensor) -> torch.Tensor:
            if not iv.active(self.layers[name]) or probs.shape[0] != iv.batch:
                return probs
            source = self.recording.attention_at(name, iv.step)
            probs = probs.clone()
            probs[iv.keep] = source.to(probs.device, probs.dtype)
            return probs

        return edit

    def _keep_v(self, iv: Intervention, name: str):
        def post(module, args, kwargs, output):
            if iv.active(self.layers[name]):
                self._v[name] = output

        return post

    def _replace(self, iv: Intervention, name: str):
        def post(module, args, kwargs, output):
            v = self._v.pop(name, None)
            if v is None or not iv.active(self.layers[name]):
                return None
            probs = self.recording.attention_at(name, iv.step)
            b = v[iv.keep].shape[0]
            v = v[iv.keep].reshape(b, v.shape[1], module.heads, -1).transpose(1, 2)
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
                rows = rows + args[0][iv.keep]
            rows = rows / getattr(module, "rescale_output_factor", 1.0)
            out = output.clone()
            out[iv.keep] = rows.to(out.dtype)
            return out

        return post


class SkipProbe(Probe):
    """Edit the last ``channels`` of the target resnet's input: the concatenated skip."""

    def __init__(self, source: str, target: str, mode: str | float, window):
        self.source, self.target, self.mode, self.window = source, target, mode, window
        self.channels: int | None = None

    def install(self, iv: Intervention) -> None:
        iv.hook(iv.map.modules[self.source], post=self._seen(iv))
        iv.hook(iv.map.modules[self.target], pre=self._edit(iv))

    def _seen(self, iv: Intervention):
        def post(module, args, kwargs, output):
            t = _first(output)
            if iv.live() and t is not None and t.ndim == 4:
                self.channels = int(t.shape[1])

        return post

    def _edit(self, iv: Intervention):
        def pre(module, args, kwargs):
            if not iv.active(self.window) or not self.channels:
                return None
            key = (
                None if args else next(k for k in ("input_tensor", "hidden_states") if k in kwargs)
            )
            x = args[0] if args else kwargs[key]
            c = self.channels
            x = torch.cat([x[:, :-c], ablate(x[:, -c:], self.mode)], dim=1)
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, key: x}

        return pre


class OutputProbe(Probe):
    """Replace a module's output tensors: ablated (``mode``) or from a recording (Patch)."""

    def __init__(
        self, name: str, window, mode: str | float | None = None, source=None, half="both"
    ):
        self.name, self.window, self.mode = name, window, mode
        self.source: Recording | None = source
        self.half = half

    def install(self, iv: Intervention) -> None:
        iv.hook(iv.map.modules[self.name], post=self._post(iv))

    def _post(self, iv: Intervention):
        def post(module, args, kwargs, output):
            if not iv.active(self.window):
                return None
            if self.source is None:
                return map_output(output, lambda i, t: ablate(t, self.mode))
            recorded = self.source.outputs_at(self.name, iv.step)

            def patch(i: int, t: torch.Tensor) -> torch.Tensor:
                src = recorded[i].to(device=t.device, dtype=t.dtype)
                if src.shape != t.shape:
                    raise EditError(
                        f"Patch {self.name}: the source output has shape {tuple(src.shape)}, "
                        f"this run {tuple(t.shape)}: run the source with the same size and "
                        "guidance"
                    )
                if self.half == "both":
                    return src.clone()  # a fresh tensor: the model may add into it in place
                out = t.clone()
                out[iv.keep] = src[iv.keep]
                return out

            return map_output(output, patch)

        return post


class TembProbe(Probe):
    """Scale ``time_emb_proj``'s output of the given resnets."""

    def __init__(self, resnets: list[str], scale: float, window):
        self.resnets, self.scale, self.window = resnets, scale, window

    def install(self, iv: Intervention) -> None:
        for name in self.resnets:
            iv.hook(iv.map.modules[name].time_emb_proj, post=self._post(iv))

    def _post(self, iv: Intervention):
        def post(module, args, kwargs, output):
            if iv.active(self.window) and isinstance(output, torch.Tensor):
                return output * self.scale
            return None

        return post


class RecordProbe(Probe):
    """Keep, per forward in ``window``, module outputs (cloned: the model adds into some in
    place) and the post-softmax attention probabilities (conditional half) of chosen layers."""

    def __init__(
        self,
        recording: Recording,
        outputs: list[str],
        attention: list[str],
        window,
        max_queries: int | None = None,
    ):
        self.recording, self.outputs, self.attention = recording, outputs, attention
        self.window, self.max_queries = window, max_queries
        self._q: dict[str, torch.Tensor] = {}

    def install(self, iv: Intervention) -> None:
        for name in self.outputs:
            iv.hook(iv.map.modules[name], post=self._output(iv, name))
        for name in self.attention:
            module = iv.map.modules[name]
            iv.hook(module.to_q, post=self._q_post(iv, name))
            iv.hook(module.to_k, post=self._k_post(iv, name, module))
        iv.on_forward_end.append(self._q.clear)

    def _output(self, iv: Intervention, name: str):
        def post(module, args, kwargs, output):
            if iv.active(self.window):
                kept = [t.detach().clone() for t in tensors_of(output)]
                self.recording.outputs.setdefault(name, {})[iv.step] = kept

        return post

    def _q_post(self, iv: Intervention, name: str):
        def post(module, args, kwargs, output):
            if iv.active(self.window):
                self._q[name] = output

        return post

    def _k_post(self, iv: Intervention, name: str, attn: nn.Module):
        def post(module, args, kwargs, output):
            q = self._q.pop(name, None)
            if q is None or not iv.active(self.window):
                return
            if self.max_queries is not None and q.shape[1] > self.max_queries:
                return  # P2P replaces self-attention only in small maps: keep no more
            probs = probabilities(attn, q, output, iv.batch, iv.keep)
            self.recording.attention.setdefault(name, {})[iv.step] = probs

        return post

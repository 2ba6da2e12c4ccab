"""Reading a module tree with diffusers' names: what a module is (attention, resnet), and the
shapes, dtypes and MACs of a call. Pure functions; no hooks, no state."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from .errors import TraceError

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
_SIGNATURES: dict[type, inspect.Signature | None] = {}


def first_tensor(x: Any) -> torch.Tensor | None:
    """The tensor a module returned (a tensor, a diffusers output dict, or a tuple's first)."""
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


def shape_of(x: Any) -> Any:
    """``list`` shape of a tensor, list of shapes of a tuple of tensors, else None."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return [list(t.shape) for t in x]
    return None


def dtype_of(x: Any) -> str | None:
    """``"float32"``-style name of the first tensor found in ``x``."""
    t = first_tensor(x)
    if t is None and isinstance(x, (tuple, list)):
        for item in x:
            t = first_tensor(item)
            if t is not None:
                break
    return str(t.dtype).removeprefix("torch.") if t is not None else None


def signature_of(module: nn.Module) -> inspect.Signature | None:
    """``module.forward``'s signature, cached per class."""
    cls = type(module)
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(module.forward)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    return _SIGNATURES[cls]


def bound_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by parameter name ({} when they do not bind)."""
    sig = signature_of(module)
    try:
        return dict(sig.bind_partial(*args, **kwargs).arguments) if sig else {}
    except TypeError:
        return {}


def named_inputs(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Input shapes keyed by role (``sample``, ``temb``, ``encoder_hidden_states``, ``skips``,
    ``timestep``...); tensors inside dict arguments (``added_cond_kwargs``) by their keys."""
    bound = bound_arguments(module, args, kwargs)
    if not bound:
        bound = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    out: dict[str, Any] = {}
    for key, value in bound.items():
        if isinstance(value, dict):
            for k, v in value.items():
                s = shape_of(v)
                if s is not None:
                    out[_ALIASES.get(k, k) if key == "kwargs" else k] = s
            continue
        s = shape_of(value)
        if s is not None:
            out.setdefault(_ALIASES.get(key, key), s)
    return out


def named_outputs(output: Any) -> dict[str, Any]:
    """Output shapes: ``sample`` (first tensor), ``skips`` (a down block's tuple), others."""
    if isinstance(output, torch.Tensor):
        return {"sample": list(output.shape)}
    out: dict[str, Any] = {}
    if isinstance(output, dict):
        for k, v in output.items():
            s = shape_of(v)
            if s is not None:
                out["sample" if not out else k] = s
        return out
    if isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            s = shape_of(item)
            if s is None:
                continue
            if i == 0 and isinstance(item, torch.Tensor):
                out["sample"] = s
            elif i == 1 and isinstance(item, (tuple, list)):
                out["skips"] = s
            else:
                out[f"output{i}"] = s
    return out


def macs_of(module: nn.Module, output: Any) -> int:
    """Multiply-accumulates of one call of a conv or linear leaf (0 for anything else)."""
    out = first_tensor(output)
    if out is None:
        return 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        k = math.prod(module.kernel_size)
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def is_attention(module: nn.Module) -> bool:
    """An attention layer: ``to_q``, ``to_k`` submodules and an int ``heads``."""
    return all(isinstance(getattr(module, a, None), nn.Module) for a in ("to_q", "to_k")) and (
        isinstance(getattr(module, "heads", None), int)
    )


def is_cross(name: str, module: nn.Module) -> bool:
    """Cross-attention (``attn2``): diffusers' flag where it has one, else the name."""
    flag = getattr(module, "is_cross_attention", None)
    if isinstance(flag, bool):
        return flag
    return name.endswith("attn2")


def is_resnet(module: nn.Module) -> bool:
    """A ResnetBlock2D: ``conv1`` and ``time_emb_proj`` submodules."""
    return isinstance(getattr(module, "conv1", None), nn.Module) and isinstance(
        getattr(module, "time_emb_proj", None), nn.Module
    )


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square as a 0-d float32 tensor (no host sync)."""
    return torch.linalg.vector_norm(x.float()) / math.sqrt(max(x.numel(), 1))


def transformer_of(name: str) -> str | None:
    """``...attentions.0.transformer_blocks.0.attn2`` -> ``...attentions.0``."""
    marker = ".transformer_blocks."
    return name.split(marker)[0] if marker in name else None


def grid(n: int, res: tuple[int, int] | None, name: str) -> tuple[int, int]:
    """The (h, w) query grid of ``n`` queries: the enclosing transformer's input, else square."""
    if res is not None and res[0] * res[1] == n:
        return res
    side = math.isqrt(n)
    if side * side == n:
        return (side, side)
    raise TraceError(
        f"cannot fold {n} attention queries of {name} into an (h, w) grid: the enclosing "
        "Transformer2DModel input was not seen"
    )

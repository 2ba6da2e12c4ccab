"""The module plan of a model: every name a probe may hook, read from the module tree once.

Walking a UNet's tree (``named_modules()``, ``isinstance`` / ``getattr`` tests on ~700
modules) costs milliseconds; a capture inside a sampling loop or a batch job would pay it on
every ``with``. :func:`plan_of` keeps one :class:`ModelPlan` per model (weakly: it goes with
the model) and checks it against the tree in one cheap pass (the same module objects in the
same order); a changed tree (``fuse_qkv_projections()``, a swapped submodule) gets a new plan.

The plan also keeps the *first-pass facts* of a capture (block shapes, skips, MACs, q/k shapes:
what the first forward of a capture records and later forwards do not change), keyed by the
shapes and dtypes of the model's inputs, so a capture of the same model with the same input
shapes installs no first-pass hooks at all.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from itertools import chain
from typing import Any

from torch import nn

from ..names import layer_order
from .shapes import is_attention, is_cross, is_resnet, transformer_of

#: first-pass facts kept per plan (distinct input shapes); the oldest go first
MAX_FACTS = 8
_GUARD = threading.Lock()
_PLANS: weakref.WeakKeyDictionary[nn.Module, ModelPlan] = weakref.WeakKeyDictionary()


def _children(dicts: list[dict]) -> list[Any]:
    """Every child of every ``_modules`` dict in ``dicts``, in one C-level pass: the cheap
    check that a cached plan still describes the tree (no Python loop over ~700 modules)."""
    return list(chain.from_iterable(map(dict.values, dicts)))


def _tree(model: nn.Module) -> list[nn.Module]:
    """Every module object under ``model`` (breadth first, the root left out so the cache
    holds no reference to its key): the plan's fingerprint."""
    out = [model]
    try:
        for module in out:  # the list grows while it is read: breadth first
            out.extend(module._modules.values())
    except AttributeError:  # a child registered as None
        out = [model]
        for module in out:
            out.extend(m for m in module._modules.values() if m is not None)
    return out[1:]


class ModelPlan:
    """Names of one model's modules by role, in ``named_modules()`` order.

    ``modules``: name -> module (the root excluded; read-only for probes); ``blocks`` /
    ``layers``: top-level blocks (``down_blocks.0``, ``mid_block``, ``conv_in``...) and their
    layers (``down_blocks.0.resnets.1``...); ``attention`` / ``cross`` / ``selfs``: attention
    layers, cross-attention (attn2) among them and the others; ``resnets``; ``leaves``: conv and
    linear modules (MACs); ``transformers``: attention name -> its Transformer2DModel name."""

    def __init__(self, model: nn.Module, tree: list[nn.Module]) -> None:
        self.tree = tree
        #: every module's ``_modules`` dict (the root's included) and their children: the
        #: fingerprint :func:`plan_of` compares (the same child objects, in the same order)
        self.dicts = [model._modules] + [m._modules for m in tree]
        self.children = _children(self.dicts)
        self.modules: dict[str, nn.Module] = {n: m for n, m in model.named_modules() if n}
        mods = self.modules
        self.blocks, self.layers = _levels(model, mods)
        self.attention = [n for n, m in mods.items() if is_attention(m)]
        self.cross = [n for n in self.attention if is_cross(n, mods[n])]
        cross = set(self.cross)
        self.selfs = [n for n in self.attention if n not in cross]
        self.resnets = [n for n, m in mods.items() if is_resnet(m)]
        self.leaves = [
            n for n, m in mods.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
        ]
        self.containers = {
            n for n, m in mods.items() if isinstance(m, (nn.ModuleList, nn.ModuleDict))
        }
        self.transformers = {n: transformer_of(n) for n in self.attention}
        #: per resnet in forward order (down, mid, up: diffusers registers up_blocks before
        #: mid_block): (name, conv1, time_emb_proj), the two modules the temb probe hooks
        self.resnet_parts = [
            (n, mods[n].conv1, mods[n].time_emb_proj) for n in layer_order(self.resnets)
        ]
        self._params: dict[str, int] = {}
        self._taps: dict[str, Any] = {}
        self._facts: OrderedDict[Any, Any] = OrderedDict()

    def params(self, name: str) -> int:
        """Parameter count of module ``name`` (counted once)."""
        n = self._params.get(name)
        if n is None:
            n = self._params[name] = sum(p.numel() for p in self.modules[name].parameters())
        return n

    def taps(self, name: str, read: Any) -> Any:
        """``read(module)`` of attention layer ``name`` (``attention.taps``), once per plan."""
        found = self._taps.get(name)
        if found is None:
            found = self._taps[name] = read(self.modules[name])
        return found

    def parameter(self, model: nn.Module) -> Any:
        """The first parameter of ``model`` (its device and dtype), or None."""
        for module in (model, *self.tree):
            for p in module._parameters.values():
                if p is not None:
                    return p
        return None

    def facts(self, key: Any) -> Any:
        """First-pass facts stored under ``key`` (None if none)."""
        with _GUARD:
            value = self._facts.get(key)
            if value is not None:
                self._facts.move_to_end(key)
            return value

    def keep_facts(self, key: Any, value: Any) -> None:
        """Store first-pass facts under ``key`` (at most ``MAX_FACTS`` keys)."""
        with _GUARD:
            self._facts[key] = value
            while len(self._facts) > MAX_FACTS:
                self._facts.popitem(last=False)


def _levels(model: nn.Module, mods: dict[str, nn.Module]) -> tuple[list[str], list[str]]:
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
    return blocks, layers


def plan_of(model: nn.Module) -> ModelPlan:
    """The (cached) plan of ``model``, rebuilt when its module tree changed."""
    with _GUARD:
        plan = _PLANS.get(model)
    if (
        plan is not None
        and plan.dicts[0] is model._modules
        and _children(plan.dicts) == plan.children  # modules compare by identity, in C
    ):
        return plan
    plan = ModelPlan(model, _tree(model))
    with _GUARD:
        _PLANS[model] = plan
    return plan


__all__ = ["MAX_FACTS", "ModelPlan", "plan_of"]

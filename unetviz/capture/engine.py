"""``capture(unet)``: the recording probes hooked onto a model for the length of a ``with``;
``__enter__`` gives the Trace they fill (docs/trace.md)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .attention import CrossAttentionProbe, GridProbe, MapStore, SelfAttentionProbe, taps
from .errors import TraceError
from .options import DEFAULT_MEMORY_BUDGET, CaptureOptions, select
from .plan import ModelPlan
from .probe import Probe, ProbeSession
from .probes import BlockProbe, MacsProbe, SkipProbe, StepProbe, TembProbe
from .records import AttentionRecord, block_of, location_of
from .trace import Trace


def _feature_probe(
    trace: Trace, opts: CaptureOptions, plan: ModelPlan, steps: StepProbe
) -> Probe | None:
    """``features=``: per-block feature PCA (capture/features.py, imported only when asked)."""
    if not opts.features:
        return None
    from .features import FeatureProbe

    return FeatureProbe(trace, opts.features, steps)


#: Further recording probes: each ``make(trace, options, plan, steps)`` returns a Probe, or
#: None when its option is off. A new recorded quantity registers its factory here (one line);
#: its hooks run after the built-in probes' on a shared module. ``steps`` is the capture's
#: :class:`~unetviz.capture.probes.StepProbe` (``steps.defer`` for end-of-forward floats,
#: ``steps.facts`` / ``steps.fresh`` for first-pass facts).
RECORDERS: list[Callable[[Trace, CaptureOptions, ModelPlan, StepProbe], Probe | None]] = [
    _feature_probe
]


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
    ``half`` picks "cond", "uncond" or "both". ``per_head`` keeps heads apart. ``daam`` also
    keeps the float32 per-head sums over steps of the down / up layers that
    ``trace.heatmap(..., preset="daam")`` needs (bounded: SD 1.5 at 512 px 63 MiB, SDXL at
    1024 px 421 MiB). Self-attention rows are captured only for ``self_attention_layers``
    (attn1 names / prefixes) at ``self_attention_points`` ((y, x) fractions). ``meta`` is
    merged into ``trace.meta``. ``features`` ("blocks" or True, "layers") records per block and
    step the output's first three principal components, channel norm and RMS
    (``trace.features``, ``unetviz.capture.features``).

    Every hook is removed on exit (normal or exception); outputs are unchanged bit for bit.
    Captures of one model are serialised by a per-model lock; forwards of the model in other
    threads are not recorded. One host-device sync per forward (the end-of-forward flush of
    the timestep and temb scalars); none inside a forward.
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
        daam: bool = False,
        attention_dtype: torch.dtype = torch.float16,
        memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
        self_attention_layers: Sequence[str] | None = None,
        self_attention_points: Sequence[tuple[float, float]] | None = None,
        meta: dict[str, Any] | None = None,
        features: bool | str = False,
    ):
        if not isinstance(model, nn.Module):
            raise TraceError(f"capture needs a torch nn.Module (a UNet), got {type(model)!r}")
        self.options = CaptureOptions(
            detail=detail,
            attention=attention,  # type: ignore[arg-type]
            temb=temb,
            mode=mode,
            half=half,
            cfg=cfg,
            per_head=per_head,
            daam=daam,
            attention_dtype=attention_dtype,
            memory_budget=memory_budget,
            self_attention_layers=self_attention_layers,  # type: ignore[arg-type]
            self_attention_points=self_attention_points,  # type: ignore[arg-type]
            meta=dict(meta or {}),
            features=features,
        )
        self.model = model
        self.trace = Trace()
        self.session = ProbeSession(model, [], lock=True, cfg=self.options.cfg)
        self.session.probes = self._probes(self.session.plan)

    def _probes(self, plan: ModelPlan) -> list[Probe]:
        """The recording probes, in the order their hooks run on a shared module."""
        opts, trace = self.options, self.trace
        modules, cross = plan.modules, plan.cross
        chosen = cross if opts.attention is True else []
        if isinstance(opts.attention, tuple):
            chosen = select("cross-attention", opts.attention, cross)
        self_chosen: list[str] = []
        if opts.self_attention_layers is not None:
            self_chosen = select("self-attention", opts.self_attention_layers, plan.selfs)
        for name in chosen + self_chosen:
            plan.taps(name, taps)  # refuses fused projections it cannot read, before any hook
        for name in cross:  # every cross-attention layer gets a record (shapes, res, heads)
            trace.attention[name] = AttentionRecord(
                name=name,
                block=block_of(name),
                location=location_of(name),
                res=None,
                heads=modules[name].heads,
                per_head=opts.per_head,
            )
        steps, store = StepProbe(trace, opts), MapStore(opts)
        grids = GridProbe(trace, cross + self_chosen, steps, steady=bool(chosen or self_chosen))
        probes: list[Probe] = [steps, BlockProbe(trace, opts.detail, steps)]
        probes += [SkipProbe(trace, steps), MacsProbe(trace, steps)]
        if opts.temb:
            probes.append(TembProbe(trace, steps, stream=opts.mode == "stream"))
        probes.append(grids)
        if chosen:
            probes.append(CrossAttentionProbe(trace, opts, chosen, grids, store))
        if self_chosen:
            probes.append(SelfAttentionProbe(trace, opts, self_chosen, grids, store))
        for make in RECORDERS:
            probe = make(trace, opts, plan, steps)
            if probe is not None:
                probes.append(probe)
        return probes

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Trace:
        self.session.open()
        try:
            self._fill_meta()
        except BaseException:
            self.session.close()
            raise
        return self.trace

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.session.close()
        self.trace.clear_cache()

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
        p = self.session.plan.parameter(model)
        device, dtype = "cpu", None
        if p is not None:
            device, dtype = str(p.device), str(p.dtype).removeprefix("torch.")
        meta = {
            "model": f"{cls.__module__}.{cls.__name__}",
            "config": {k: v for k, v in (config or {}).items() if not str(k).startswith("_")}
            or None,
            "device": device,
            "model_dtype": dtype,
        }
        meta |= self.options.trace_meta()
        meta.update(self.options.meta)
        self.trace.meta.update(meta)


def capture(model: nn.Module, **options: Any) -> Capture:
    """``with capture(unet, **options) as trace:`` -- the options (one home) are
    :class:`Capture`'s keywords; ``help(capture)`` and ``inspect.signature`` show them."""
    return Capture(model, **options)


capture.__signature__ = inspect.signature(Capture)  # type: ignore[attr-defined]

"""Probes: small objects hooked onto named modules for the length of a ``with``.

A :class:`Probe` handles one concern (block shapes, skips, MACs, temb, cross-attention, ...).
A :class:`ProbeSession` hooks a list of probes onto one model: it owns every hook handle (all
removed on exit, normal or exception), the thread filter (only forwards run by the thread that
entered are seen), the per-forward state (:class:`Forward`: step counter, batch, the
conditional rows of a classifier-free-guidance batch) it hands to each probe, and the model's
cached module plan (``session.plan``, ``session.modules``). Captures and interventions are both
sessions: one lifecycle for recording and for changing what flows.

Lifecycle of a probe: ``install(session)`` registers hooks with ``session.hook(...)``;
``begin_forward(session, args, kwargs)`` / ``end_forward(session, output)`` run around every
forward of the model (root pre / post hook); ``finalize(session)`` runs once on exit. What only
the first forward records is hooked from ``begin_forward`` at step 0 with ``first_pass=True``
(or taken from the plan's cached first-pass facts, see ``plan.py``).

Interventions (probes that change what flows) set ``edits = True``. Their hooks are
*prepended* (``register_forward_hook(prepend=True)``), so on any module an edit runs before
every recording hook, whatever the order the ``with`` blocks were entered in: a capture always
records the edited activations. A hook's return value is passed through, so an edit's post hook
returns the replaced output and its pre hook ``(args, kwargs)``, as in plain PyTorch.

Cross-attention probabilities are never materialised by the model (SDPA): an edit that
reweights them registers a transform with :func:`add_probability_edit`; the capture applies the
same transforms to the probabilities it recomputes, so recorded maps are what the model used.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from threading import get_ident
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import TraceError
from .plan import plan_of

_LOCKS_GUARD = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_OWNERS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_PROB_EDITS: weakref.WeakKeyDictionary[nn.Module, list[tuple[Callable, bool]]] = (
    weakref.WeakKeyDictionary()
)


def cfg_halves(batch: int, cfg: bool | None, error: type[Exception] = TraceError) -> slice:
    """The conditional rows of a UNet batch: the second half of a classifier-free-guidance
    batch ``[uncond, cond]`` (``cfg`` None: any even batch of 2 or more is one), else every
    row. The one home of this rule, for captures and edits alike; an odd CFG batch raises
    ``error``."""
    if cfg is None:
        cfg = batch >= 2 and batch % 2 == 0
    if not cfg:
        return slice(None)
    if batch % 2:
        raise error(
            f"cfg=True but the UNet batch is {batch} (odd): a classifier-free-guidance batch "
            "is [uncond, cond] halves of equal size"
        )
    return slice(batch // 2, batch)


@dataclass
class Forward:
    """State of the forward in progress, shared by every probe of a session.

    ``step``: index of this forward in the session (-1 before the first); ``batch``: the UNet
    batch size; ``cfg``: whether the batch is [uncond, cond] halves; ``cond``: the conditional
    rows (every row without CFG); ``keep``: the rows a capture records (set by its step probe
    from ``half``; ``cond`` by default); ``scratch``: per-forward values probes share, cleared
    after each forward."""

    step: int = -1
    batch: int = 0
    cfg: bool = False
    cond: slice = field(default_factory=lambda: slice(None))
    keep: slice = field(default_factory=lambda: slice(None))
    scratch: dict[str, Any] = field(default_factory=dict)

    def active(self, window: tuple[int, int] | None) -> bool:
        """Inside a forward, and within the half-open step ``window`` (None: every step)."""
        return self.step >= 0 and (window is None or window[0] <= self.step < window[1])


class Probe:
    """One concern hooked onto a model; subclass and override what you need.

    ``end_forward`` and ``finalize`` run in the reverse order of ``begin_forward`` /
    ``install`` (the first probe of a session opens each forward and closes it)."""

    #: True for interventions: hooks run before every recording hook on the same module.
    edits: ClassVar[bool] = False

    def install(self, session: ProbeSession) -> None:
        """Register hooks with ``session.hook(module, pre=..., post=...)``."""

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        """Called by the root pre hook with the model's call arguments (may add hooks: at
        step 0, first-pass hooks of what the first forward alone records)."""

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        """Called by the root post hook (also when the forward raised: ``output`` is None)."""

    def finalize(self, session: ProbeSession) -> None:
        """Called once on exit, after every hook is removed."""


def _pre_dispatch(thread: int, fns: list[Callable]) -> Callable:
    """One torch pre hook running ``fns`` in order for ``thread`` only; a returned
    ``(args, kwargs)`` replaces the call's arguments for the next ones (as torch does)."""
    if len(fns) == 1:
        (fn,) = fns

        def one(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if get_ident() == thread:
                return fn(module, args, kwargs)
            return None

        return one

    def many(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if get_ident() != thread:
            return None
        changed = None
        for fn in fns:
            result = fn(module, args, kwargs)
            if result is not None:
                args, kwargs = changed = result
        return changed

    return many


def _post_dispatch(thread: int, fns: list[Callable]) -> Callable:
    """One torch post hook running ``fns`` in order for ``thread`` only; a returned value
    replaces the output for the next ones (as torch does)."""
    if len(fns) == 1:
        (fn,) = fns

        def one(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if get_ident() == thread:
                return fn(module, args, kwargs, output)
            return None

        return one

    def many(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if get_ident() != thread:
            return None
        changed = False
        for fn in fns:
            result = fn(module, args, kwargs, output)
            if result is not None:
                output, changed = result, True
        return output if changed else None

    return many


def _direct_hooks() -> bool:
    """Whether torch keeps a module's hooks in the dicts ``register_forward_hook`` fills
    (checked once, on a throwaway module: a pre and an always-called post hook with kwargs,
    entered the way :meth:`ProbeSession._add` enters them, must both run and come out). Then a
    session enters its hooks into those dicts itself: the same hooks, ids from torch's own
    counter, without a handle object per hook (a capture enters ~200 of them per ``with``)."""
    try:
        seen: list[str] = []
        module, added = nn.Identity(), []
        _add_hook(added, module, True, lambda m, a, k: seen.append("pre"), False, False)
        _add_hook(added, module, False, lambda m, a, k, o: seen.append("post"), True, True)
        module(torch.zeros(1))
        for hooks, hid in zip(added[::2], added[1::2], strict=True):
            del hooks[hid]
        module(torch.zeros(1))  # nothing left to run
        empty = not (module._forward_hooks or module._forward_pre_hooks)
        return seen == ["pre", "post"] and empty
    except Exception:  # noqa: BLE001 - any change in torch's internals: use its public API
        return False


def _add_hook(
    handles: list, module: nn.Module, pre: bool, hook: Callable, always: bool, prepend: bool
) -> None:
    """Enter ``hook`` (kwargs-style) into ``module``'s hook dicts as torch's ``register_*``
    would; appends ``dict, id`` to ``handles`` for each dict entry (what removing deletes)."""
    hid = RemovableHandle.next_id
    RemovableHandle.next_id = hid + 1
    if pre:
        hooks, kwargs = module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs
    else:
        hooks, kwargs = module._forward_hooks, module._forward_hooks_with_kwargs
        if always:
            module._forward_hooks_always_called[hid] = True
            handles += (module._forward_hooks_always_called, hid)
    hooks[hid] = hook
    kwargs[hid] = True
    handles += (hooks, hid, kwargs, hid)
    if prepend:
        hooks.move_to_end(hid, last=False)


def _unhook(handles: list) -> None:
    """Remove the hooks behind ``handles`` (``[dict, id, ...]`` or torch handles); empty it."""
    if _DIRECT:
        for hooks, hid in zip(handles[::2], handles[1::2], strict=True):
            hooks.pop(hid, None)
    else:
        for h in handles:
            h.remove()
    handles.clear()


_DIRECT = _direct_hooks()


class ProbeSession:
    """Hooks ``probes`` onto ``model`` between ``open()`` and ``close()`` (or a ``with``).

    Every probe's hooks on one module run from one torch hook per kind (pre / post), in the
    order they were added, with the thread filter applied once. The model's names come from
    its cached :class:`~unetviz.capture.plan.ModelPlan` (``session.plan``; ``session.modules``
    is its name -> module dict, read-only): no tree walk per ``with``.

    ``cfg`` says the batch is [uncond, cond] halves (None: any even batch; the rule is
    :func:`cfg_halves`). ``lock=True`` serialises sessions of one model across threads (a
    per-model lock) and refuses a second locking session of the same model in the same thread.
    ``error``: the exception class of this session's refusals."""

    def __init__(
        self,
        model: nn.Module,
        probes: Sequence[Probe],
        *,
        lock: bool = False,
        cfg: bool | None = None,
        error: type[Exception] = TraceError,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise error(f"capture needs a torch nn.Module (a UNet), got {type(model)!r}")
        self.model = model
        self.probes = list(probes)
        self.plan = plan_of(model)
        self.modules = self.plan.modules
        self.forward = Forward()
        self.cfg = cfg
        self.error = error
        self.thread: int | None = None
        self._use_lock = lock
        self._lock: threading.Lock | None = None
        self._handles: list[Any] = []
        self._first_pass: list[Any] = []
        self._queued: dict[tuple, list[Any]] = {}  # [module, prepend, fns, filtered]
        self._wrappers: dict[tuple[bool, Callable], Callable] = {}
        self._installing: Probe | None = None

    # ------------------------------------------------------------------ hooks
    def hook(
        self,
        module: nn.Module,
        pre: Callable | None = None,
        post: Callable | None = None,
        *,
        first_pass: bool = False,
        always: bool = False,
        filtered: bool = False,
    ) -> None:
        """Hook ``module`` (kwargs-style hooks: ``pre(module, args, kwargs)``, ``post(module,
        args, kwargs, output)``) for this session's thread only; ``first_pass``: removed after
        the forward in which it was added; ``always``: the post hook also runs when the
        forward raised; ``filtered``: the functions check the thread themselves (``get_ident()
        == session.thread``: one call less on a hot path). Hooks added in ``install`` /
        ``begin_forward`` are registered when it returns."""
        prepend = bool(self._installing is not None and self._installing.edits)
        for kind, fn in (("pre", pre), ("post", post)):
            if fn is None:
                continue
            if always and kind == "post":
                kind = "post!"
            key = (id(module), kind, first_pass, prepend)
            entry = self._queued.get(key)
            if entry is None:
                entry = self._queued[key] = [module, prepend, [], filtered]
            entry[2].append(fn)
            entry[3] = entry[3] and filtered

    def _register(self) -> None:
        """One torch hook per queued (module, kind). A probe that hooks many modules with one
        function gets one thread-filtered wrapper for all of them (few objects per ``with``)."""
        thread = self.thread
        assert thread is not None
        wrappers = self._wrappers
        for (_, kind, first_pass, _), (module, prepend, fns, filtered) in self._queued.items():
            handles = self._first_pass if first_pass else self._handles
            pre = kind == "pre"
            if len(fns) == 1 and filtered:
                hook = fns[0]
            elif len(fns) == 1:
                key = (pre, fns[0])
                hook = wrappers.get(key)
                if hook is None:
                    dispatch = _pre_dispatch if pre else _post_dispatch
                    hook = wrappers[key] = dispatch(thread, fns)
            else:
                hook = (_pre_dispatch if pre else _post_dispatch)(thread, fns)
            if _DIRECT:
                _add_hook(handles, module, pre, hook, kind == "post!", prepend)
            elif pre:
                handles.append(
                    module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend)
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        hook, with_kwargs=True, always_call=kind == "post!", prepend=prepend
                    )
                )
        self._queued.clear()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Take the lock (if asked), install every probe and the root hooks."""
        if self.thread is not None:
            raise self.error("a capture is entered once: call capture(model, ...) again")
        ident = threading.get_ident()
        if self._use_lock:
            self._acquire(ident)
        self.thread = ident
        try:
            edits = any(p.edits for p in self.probes)
            self._installing = self.probes[0] if edits else None
            self.hook(self.model, self._root_pre, self._root_post, always=True)
            for probe in self.probes:
                self._installing = probe
                probe.install(self)
            self._installing = None
            self._register()
        except BaseException:
            self._queued.clear()
            self._remove()
            self._release()
            raise

    def close(self) -> None:
        """Remove every hook, finalize every probe (last first), release the lock."""
        try:
            self._remove()
            for probe in reversed(self.probes):
                probe.finalize(self)
        finally:
            self._release()

    def __enter__(self) -> ProbeSession:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        fwd = self.forward
        fwd.step += 1
        fwd.batch = int(sample.shape[0]) if isinstance(sample, torch.Tensor) else 0
        fwd.cond = cfg_halves(fwd.batch, self.cfg, self.error)
        fwd.cfg = fwd.cond.start is not None
        fwd.keep = fwd.cond
        try:
            for probe in self.probes:
                self._installing = probe
                probe.begin_forward(self, args, kwargs)
        finally:
            self._installing = None
            if self._queued:
                self._register()

    def _root_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Every probe's ``end_forward`` runs even when one raises (the first error is raised
        after the others ran and this forward's first-pass hooks are gone)."""
        error: BaseException | None = None
        for probe in reversed(self.probes):
            try:
                probe.end_forward(self, output)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if self._first_pass:
            _unhook(self._first_pass)
        self.forward.scratch.clear()
        if error is not None:
            raise error

    # ------------------------------------------------------------------ lock
    def _acquire(self, ident: int) -> None:
        with _LOCKS_GUARD:
            nested = _OWNERS.get(self.model) == ident
            lock = _LOCKS.get(self.model)
            if lock is None:
                lock = _LOCKS[self.model] = threading.Lock()
        if nested:
            raise TraceError(
                "this model is already being captured in this thread: nested captures of one "
                "model are not supported (use one capture with the options you need)"
            )
        lock.acquire()
        self._lock = lock
        with _LOCKS_GUARD:
            _OWNERS[self.model] = ident

    def _release(self) -> None:
        if self._lock is None:
            return
        with _LOCKS_GUARD:
            _OWNERS.pop(self.model, None)
        self._lock.release()
        self._lock = None

    def _remove(self) -> None:
        _unhook(self._handles)
        _unhook(self._first_pass)
        self._wrappers.clear()  # they hold the session's own root hooks: no cycle left


def add_probability_edit(
    attention: nn.Module, edit: Callable[..., torch.Tensor], *, rows: bool = False
) -> Callable[[], None]:
    """Declare that ``attention``'s softmax probabilities are changed by ``edit``; returns the
    function that withdraws it. A capture applies the declared edits to the probabilities it
    recomputes. ``edit(probs)`` gets the whole batch ``(batch, heads, queries, tokens)``; with
    ``rows=True``, ``edit(probs, rows)`` gets only the rows the capture keeps (``rows``: their
    slice of the batch), so the capture need not recompute the others. Either returns the
    edited probabilities (it may change ``probs`` in place: they are the capture's own)."""
    entry = (edit, rows)
    with _LOCKS_GUARD:
        _PROB_EDITS.setdefault(attention, []).append(entry)

    def remove() -> None:
        with _LOCKS_GUARD:
            edits = _PROB_EDITS.get(attention, [])
            if entry in edits:
                edits.remove(entry)
            if not edits:
                _PROB_EDITS.pop(attention, None)

    return remove


def declared_edits(attention: nn.Module) -> list[tuple[Callable[..., torch.Tensor], bool]]:
    """``(edit, rows)`` of every probability edit in force on ``attention``, in order."""
    if not _PROB_EDITS:  # none declared anywhere (the usual case): no weak-key lookup
        return []
    edits = _PROB_EDITS.get(attention)  # read without the lock: called per layer per forward
    return list(edits) if edits else []


def probability_edits(attention: nn.Module) -> list[Callable[..., torch.Tensor]]:
    """The probability edits in force on ``attention`` (in the order they were added)."""
    return [edit for edit, _ in declared_edits(attention)]

"""Probes: small objects hooked onto named modules for the length of a ``with``.

A :class:`Probe` handles one concern (block shapes, skips, MACs, temb, cross-attention, ...).
A :class:`ProbeSession` hooks a list of probes onto one model: it owns every hook handle (all
removed on exit, normal or exception), the thread filter (only forwards run by the thread that
entered are seen; one wrapper, :meth:`ProbeSession.hook`, applies it to every hook), and the
per-forward state (:class:`Forward`) it hands to each probe.

Lifecycle of a probe: ``install(session)`` registers hooks with ``session.hook(...)``;
``begin_forward(session)`` / ``end_forward(session)`` run around every forward of the model
(root pre / post hook); ``finalize(session)`` runs once on exit.

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
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import TraceError

_LOCKS_GUARD = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_OWNERS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_PROB_EDITS: weakref.WeakKeyDictionary[nn.Module, list[Callable]] = weakref.WeakKeyDictionary()


@dataclass
class Forward:
    """State of the forward in progress, shared by every probe of a session.

    ``step``: index of this forward in the session (-1 between forwards); ``batch``: the UNet
    batch size; ``keep``: the batch rows recorded (the CFG half a capture keeps; set by the
    capture's step probe, whole batch by default); ``scratch``: per-forward values probes
    share, cleared after each forward."""

    step: int = -1
    batch: int = 0
    keep: slice = field(default_factory=lambda: slice(None))
    scratch: dict[str, Any] = field(default_factory=dict)


class Probe:
    """One concern hooked onto a model; subclass and override what you need."""

    #: True for interventions: hooks run before every recording hook on the same module.
    edits: ClassVar[bool] = False

    def install(self, session: ProbeSession) -> None:
        """Register hooks with ``session.hook(module, pre=..., post=...)``."""

    def begin_forward(self, session: ProbeSession, args: tuple, kwargs: dict) -> None:
        """Called by the root pre hook with the model's call arguments."""

    def end_forward(self, session: ProbeSession, output: Any) -> None:
        """Called by the root post hook (also when the forward raised: ``output`` is None)."""

    def finalize(self, session: ProbeSession) -> None:
        """Called once on exit, after every hook is removed."""


class ProbeSession:
    """Hooks ``probes`` onto ``model`` between ``open()`` and ``close()`` (or a ``with``).

    ``lock=True`` serialises sessions of one model across threads (a per-model lock) and
    refuses a second locking session of the same model in the same thread."""

    def __init__(self, model: nn.Module, probes: Sequence[Probe], *, lock: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TraceError(f"capture needs a torch nn.Module (a UNet), got {type(model)!r}")
        self.model = model
        self.probes = list(probes)
        self.modules = {n: m for n, m in model.named_modules() if n}
        self.forward = Forward()
        self.thread: int | None = None
        self._use_lock = lock
        self._lock: threading.Lock | None = None
        self._handles: list[Any] = []
        self._first_pass: list[Any] = []
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
    ) -> None:
        """Hook ``module`` (kwargs-style hooks: ``pre(module, args, kwargs)``, ``post(module,
        args, kwargs, output)``) for this session's thread only; ``first_pass``: removed after
        the first forward; ``always``: the post hook also runs when the forward raised."""
        handles = self._first_pass if first_pass else self._handles
        prepend = bool(self._installing is not None and self._installing.edits)
        if pre is not None:
            handles.append(
                module.register_forward_pre_hook(
                    self._filtered(pre), with_kwargs=True, prepend=prepend
                )
            )
        if post is not None:
            handles.append(
                module.register_forward_hook(
                    self._filtered(post), with_kwargs=True, always_call=always, prepend=prepend
                )
            )

    def _filtered(self, fn: Callable) -> Callable:
        def hook(*args: Any) -> Any:
            if threading.get_ident() == self.thread:
                return fn(*args)
            return None

        return hook

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Take the lock (if asked), install every probe and the root hooks."""
        if self.thread is not None:
            raise TraceError("a capture is entered once: call capture(model, ...) again")
        ident = threading.get_ident()
        if self._use_lock:
            self._acquire(ident)
        self.thread = ident
        try:
            self.hook(self.model, self._root_pre, self._root_post, always=True)
            for probe in self.probes:
                self._installing = probe
                probe.install(self)
            self._installing = None
        except BaseException:
            self._remove()
            self._release()
            raise

    def close(self) -> None:
        """Remove every hook, finalize every probe, release the lock."""
        try:
            self._remove()
            for probe in self.probes:
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
        self.forward.step += 1
        self.forward.batch = sample.shape[0] if isinstance(sample, torch.Tensor) else 0
        self.forward.keep = slice(None)
        for probe in self.probes:
            probe.begin_forward(self, args, kwargs)

    def _root_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        for probe in self.probes:
            probe.end_forward(self, output)
        if self._first_pass:
            for h in self._first_pass:
                h.remove()
            self._first_pass.clear()
        self.forward.scratch.clear()

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
        for h in self._handles + self._first_pass:
            h.remove()
        self._handles.clear()
        self._first_pass.clear()


def add_probability_edit(
    attention: nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """Declare that ``attention``'s softmax probabilities are changed by ``edit`` (a function of
    ``(batch, heads, queries, tokens)`` probabilities); returns the function that withdraws it.
    A capture applies the declared edits to the probabilities it recomputes."""
    with _LOCKS_GUARD:
        _PROB_EDITS.setdefault(attention, []).append(edit)

    def remove() -> None:
        with _LOCKS_GUARD:
            edits = _PROB_EDITS.get(attention, [])
            if edit in edits:
                edits.remove(edit)

    return remove


def probability_edits(attention: nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The probability edits in force on ``attention`` (in the order they were added)."""
    with _LOCKS_GUARD:
        return list(_PROB_EDITS.get(attention, ()))

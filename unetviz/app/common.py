"""What every tab shares: wiring by name, the error rule, the per-session results, the diagram
panel and the static files.

**Wiring by name.** Every component a handler reads or writes has a name in
``TabContext.c``. A handler is declared with :func:`handler` (the names of its outputs and of
its message slot) and takes ``form``, a dict of the named inputs it was wired with; it returns
a dict ``{name: value}`` holding only what it changes (a generator handler yields such dicts).
:meth:`TabContext.on` turns names into components both ways, so no handler, test or API route
depends on an order of outputs.

**Errors keep the user's work.** A user error (:class:`unetviz.errors.UnetvizError`) changes
no output but the handler's message slot, beside the control that failed, and logs one line;
anything else is a bug: its traceback goes to the log and the slot says "internal error". No
toasts, no red pills on outputs.

**Messages in both languages.** Everything a handler writes into its message slot or into a
status line (:data:`TEXT_SLOTS`) passes through the message catalogue here, in one place
(:func:`unetviz.app.i18n.bilingual`): the page gets every language at once and its switch shows
one. A progress bar's text can hold no markup: it goes out in the page's language
(:class:`LocalProgress`).
"""

from __future__ import annotations

import functools
import html
import inspect
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from unetviz.callargs import as_int
from unetviz.errors import UnetvizError

from .i18n import LANGS, bilingual, in_language, request_language, spans, translate
from .sessions import Session, SessionStore

log = logging.getLogger("unetviz.app")

STATIC = Path(__file__).resolve().parent / "static"
MAX_PROMPT_SHOWN = 60
#: event options of the app's own follow-up steps (no API route, no progress overlay)
QUIET = {"api_visibility": "private", "show_progress": "hidden"}
#: what the Time-embedding tab's views read (every post-load step passes them on)
TEMB_IN = ("temb_step", "temb_detail", "temb_by")
#: outputs that hold a status line or a note (beside each handler's message slot): what a
#: handler writes there is shown in every language (:func:`unetviz.app.i18n.bilingual`)
TEXT_SLOTS = frozenset(
    {"status", "arch_status", "preset_note", "search_msg", "temb_msg", "ds_msg", "ds_drill_msg"}
)


def static_text(name: str) -> str:
    """A file of ``unetviz/app/static`` (CSS, the page's scripts)."""
    return (STATIC / name).read_text(encoding="utf-8")


def static_url(name: str) -> str:
    """The URL gradio serves ``static/name`` at (``gr.set_static_paths``)."""
    return f"/gradio_api/file={STATIC / name}"


class InputError(UnetvizError):
    """A value typed in the UI is out of range or not a number."""


def parse_int(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` (a number or its text) as an exact int in lo..hi, else InputError
    (``unetviz.callargs.as_int``)."""
    return as_int(value, name, lo, hi, error=InputError)


def clean_message(text: str, limit: int = 400) -> str:
    """A user-facing message without server temp paths and with long quoted values cut."""
    tmp = re.escape(str(Path(tempfile.gettempdir())))
    text = re.sub(tmp + r"/[^\s'\"]*/([^/\s'\"]+)", r"\1", text)
    text = re.sub(
        r"(['\"])([^'\"]{" + str(MAX_PROMPT_SHOWN + 1) + r",})\1",
        lambda m: f"{m[1]}{m[2][: MAX_PROMPT_SHOWN - 1]}…{m[1]}",
        text,
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_md(value: Any, limit: int = MAX_PROMPT_SHOWN) -> str:
    """A string from a user or a file, shown inside Markdown as plain text: cut to ``limit``,
    on one line, HTML-escaped, and the Markdown that makes elements escaped (images, links,
    autolinks, emphasis, code, tables, strike-through), so it can create no element and fetch
    nothing."""
    s = str(value)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    s = html.escape(" ".join(s.splitlines()), quote=False)
    s = re.sub(r"([\\`*_\[\]!|~#$])", r"\\\1", s)
    return s.replace("://", ":\\/\\/").replace("www.", "www\\.")


def _message(fn_name: str, exc: Exception) -> str:
    """The message slot's text for ``exc``, in every language: a user error's message (from
    the catalogue, else English), or "internal error" for a bug (its traceback to the log)."""
    if isinstance(exc, UnetvizError):
        msg = clean_message(str(exc))
        log.warning("%s: %s", fn_name, msg)
        # translated before the Markdown escaping: the catalogue holds the raised text
        texts = {lang: translate(msg, lang) for lang in LANGS}
        if all(texts[lang] is None for lang in LANGS[1:]):
            return f"⚠ {text_md(msg, 400)}"
        return spans({k: f"⚠ {text_md(v or msg, 400)}" for k, v in texts.items()})
    log.exception("internal error in %s", fn_name, exc_info=exc)
    return bilingual(f"⚠ internal error in {fn_name} ({type(exc).__name__}); see the log")


def _localised(out: Any, slots: frozenset[str]) -> Any:
    """A handler's ``{name: value}`` with the text in ``slots`` in every language."""
    if not isinstance(out, dict):
        return out
    for name in slots.intersection(out):
        value = out[name]
        if isinstance(value, str):
            out[name] = bilingual(value)
        elif isinstance(value, dict) and isinstance(value.get("value"), str):  # gr.update
            out[name] = {**value, "value": bilingual(value["value"])}
    return out


class LocalProgress:
    """A ``gr.Progress`` whose text (``desc``, ``unit``) is shown in the page's language: a
    progress bar holds plain text, so it cannot carry both languages as a message does."""

    def __init__(self, progress: Any, lang: str) -> None:
        self.progress, self.lang = progress, lang

    def __call__(self, *args: Any, desc: str | None = None, unit: str = "steps", **kw: Any) -> Any:
        desc = in_language(desc, self.lang) if desc else desc
        return self.progress(*args, desc=desc, unit=in_language(unit, self.lang), **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.progress, name)


def handler(*outputs: str, msg: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a handler whose outputs are the components named ``outputs`` and whose
    message slot is ``msg``: it returns (or yields) ``{name: value}`` for what it changes. On
    an error nothing else changes and ``msg`` says why (the work on screen is kept)."""
    names = tuple(dict.fromkeys((*outputs, msg)))
    slots = frozenset(n for n in names if n == msg or n in TEXT_SLOTS)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                try:
                    for out in fn(*args, **kwargs):
                        yield _localised(out, slots)
                except Exception as exc:
                    yield {msg: _message(fn.__name__, exc)}

            wrapper = gen
        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return _localised(fn(*args, **kwargs), slots)
                except Exception as exc:
                    return {msg: _message(fn.__name__, exc)}

        wrapper.outputs = names  # type: ignore[attr-defined]
        wrapper.msg = msg  # type: ignore[attr-defined]
        return wrapper

    return deco


def demo_side(registry: Any) -> int:
    """The demo model's native image side (24 when its folder cannot be read)."""
    from .registry import DEMO

    try:
        return registry.spec(DEMO).default_size
    except Exception:  # a broken demo folder: the Architecture tab says so on load
        return 24


def session_key(request: Any) -> str:
    """The browser session's key (gradio's session hash)."""
    return str(getattr(request, "session_hash", None) or "anonymous")


#: the file that marks a download folder as the app's own (only those are ever pruned)
OUT_MARKER = ".unetviz-download"


class HandlerBase:
    """Per-browser results (:attr:`sessions`), the registry and a folder for download files."""

    #: download files older than this are removed (gradio keeps its own copies)
    KEEP_S = 2 * 3600

    def __init__(
        self,
        registry: Any,
        workdir: Path | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.registry = registry
        self.sessions = sessions if sessions is not None else SessionStore()
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="unetviz-app-"))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: set once a page has loaded its diagram's state (the page's load event)
        self.page_seen = threading.Event()

    def _outdir(self) -> Path:
        """A fresh folder for one response's files; old ones are pruned — only folders this
        app made (their marker file inside), never anything else in a caller-given workdir."""
        now = time.time()
        for old in self.workdir.iterdir():
            try:
                if (
                    old.is_dir()
                    and not old.is_symlink()
                    and (old / OUT_MARKER).is_file()
                    and now - old.stat().st_mtime > self.KEEP_S
                ):
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        d = self.workdir / uuid.uuid4().hex[:12]
        d.mkdir(parents=True, mode=0o700)
        (d / OUT_MARKER).touch()
        return d

    def session(self, request: Any) -> Session | None:
        """This browser's results, or None (never ran, or expired)."""
        return self.sessions.get(session_key(request))

    def forget(self, request: Any) -> None:
        """Free this browser's results (on disconnect)."""
        self.sessions.drop(session_key(request))

    def _need(self, request: Any) -> Session:
        session = self.session(request)
        if session is None:
            raise InputError(
                "nothing to show yet (or your results expired after "
                f"{self.sessions.ttl_s / 60:.0f} idle minutes): press Run or upload a trace"
            )
        return session


@dataclass
class TabContext:
    """What tab builders share: handlers, registry, the named components, late wiring."""

    handlers: Any
    registry: Any
    c: dict[str, Any] = field(default_factory=dict)
    wiring: list[Callable[[TabContext], None]] = field(default_factory=list)

    def on(
        self,
        trigger: Any,
        fn: Callable[..., Any],
        inputs: Sequence[str] = (),
        **kwargs: Any,
    ) -> Any:
        """Wire ``fn`` (a :func:`handler`) to ``trigger`` (an event listener, a list of them,
        or an event to follow with ``then``): its named inputs arrive as ``form`` and its
        ``{name: value}`` result updates those components. Returns the event."""
        c = self.c
        names = tuple(inputs)
        outs = list(fn.outputs)  # type: ignore[attr-defined]
        params = inspect.signature(fn).parameters
        #: what gradio injects, by the parameter's annotation or default, after the inputs
        # the request always (its language is the progress bar's), the rest when asked for
        special = [
            (k, p)
            for k, p in (
                ("request", {"annotation": gr.Request}),
                ("evt", {"annotation": gr.SelectData}),
                ("progress", {"default": gr.Progress()}),
            )
            if k in params or k == "request"
        ]

        def mapped(out: dict[str, Any]) -> dict[Any, Any]:
            # gradio reads an empty dict as one value for every output: skip one instead
            return {c[k]: v for k, v in out.items()} or {c[outs[0]]: gr.skip()}

        n = len(names)

        def invoke(args: tuple, kwargs: dict[str, Any]) -> Any:
            values, rest = args[:n], args[n:]
            kw = {k: kwargs[k] if k in kwargs else (rest[i] if i < len(rest) else None)
                  for i, (k, _) in enumerate(special)}  # fmt: skip
            if kw.get("progress") is not None:
                kw["progress"] = LocalProgress(kw["progress"], request_language(kw["request"]))
            if "request" not in params:
                del kw["request"]
            return fn(dict(zip(names, values, strict=True)), **kw)

        if inspect.isgeneratorfunction(fn):

            def call(*args: Any, **kwargs: Any) -> Any:
                for out in invoke(args, kwargs):
                    yield mapped(out)
        else:

            def call(*args: Any, **kwargs: Any) -> Any:
                return mapped(invoke(args, kwargs))

        # gradio reads the signature: one positional parameter per input, then what it injects
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        sig = [inspect.Parameter(f"in{i}", kind) for i in range(n)]
        sig += [inspect.Parameter(k, kind, **p) for k, p in special]
        call.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
        # gradio reads the annotations through typing.get_type_hints, not the signature
        call.__annotations__ = {k: p["annotation"] for k, p in special if "annotation" in p}
        call.__name__ = getattr(fn, "__name__", "handler")
        call.__uv__ = True  # type: ignore[attr-defined]  # its messages: the handler's own
        call.__doc__ = getattr(fn, "__doc__", None)
        kwargs.setdefault("api_visibility", "private" if "api_name" not in kwargs else "public")
        args = ([c[n] for n in names], [c[n] for n in outs])
        if hasattr(trigger, "then") and not isinstance(trigger, list | tuple):
            return trigger.then(call, *args, **kwargs)
        if isinstance(getattr(trigger, "__self__", None), gr.Blocks):  # the page's load
            return trigger(call, *args, **kwargs)
        triggers = trigger if isinstance(trigger, list | tuple) else [trigger]
        return gr.on(list(triggers), call, *args, **kwargs)

    def names(self, *names: str) -> list[Any]:
        """The components named ``names``."""
        return [self.c[n] for n in names]


def diagram_panel(elem_id: str, value: str | None = None, **kwargs: Any) -> gr.HTML:
    """A gr.HTML whose SVG gets pan/zoom, an outside title and legend and node selection,
    bound again after every redraw (``static/diagram.js``)."""
    return gr.HTML(
        value,
        elem_id=elem_id,
        head=f'<script src="{static_url("svg-pan-zoom.min.js")}"></script>',
        js_on_load=static_text("diagram.js"),
        **kwargs,
    )


def message_slot(elem_id: str, value: str = "") -> gr.Markdown:
    """The one message slot beside a tab's controls (errors and notes; ``value`` in every
    language, :func:`unetviz.app.i18n.bilingual`)."""
    return gr.Markdown(bilingual(value), elem_id=elem_id, elem_classes=["uv-msg"])


def text_slots_in_every_language(c: dict[str, Any]) -> None:
    """Give every status line (:data:`TEXT_SLOTS`) whose first value is an ``L()`` label its
    text in every language instead: gradio re-applies a label on each language switch, which
    would put the first value back over whatever a handler wrote there since."""
    from .i18n import translations

    for name in TEXT_SLOTS:
        comp = c.get(name)
        value = getattr(comp, "value", None)
        m = re.fullmatch(r"__i18n__(\{.*\})", value or "", re.S) if isinstance(value, str) else None
        if m is None:
            continue
        key = json.loads(m[1]).get("key", "")
        comp.value = spans({lang: translations()[lang].get(key, key) for lang in LANGS})


def is_message_output(component: Any) -> bool:
    """A Markdown output that holds a message or a status line: a message slot, a
    :data:`TEXT_SLOTS` name, or any ``elem_id`` ending in ``_msg``."""
    elem_id = getattr(component, "elem_id", None) or ""
    return isinstance(component, gr.Markdown) and (
        elem_id.endswith("_msg")
        or elem_id in TEXT_SLOTS
        or "uv-msg" in (component.elem_classes or [])
    )


def localise_events(blocks: gr.Blocks) -> int:
    """Every event of ``blocks`` not declared with :func:`handler` (a tab wired with plain
    gradio functions) gets its messages in every language too: what it returns into a message
    output (:func:`is_message_output`) goes through :func:`unetviz.app.i18n.bilingual`, and
    the first value of those outputs as well. Returns how many events were wrapped."""
    done = 0
    for block_fn in getattr(blocks, "fns", {}).values():
        fn, outputs = block_fn.fn, list(block_fn.outputs or [])
        where = [i for i, c in enumerate(outputs) if is_message_output(c)]
        if fn is None or not where or getattr(fn, "outputs", None) or hasattr(fn, "__uv__"):
            continue
        block_fn.fn = _localising(fn, outputs, where)
        done += 1
    for comp in getattr(blocks, "blocks", {}).values():
        if is_message_output(comp) and isinstance(comp.value, str) and "__i18n__" not in comp.value:
            comp.value = bilingual(comp.value)
    return done


def _localising(fn: Callable[..., Any], outputs: list[Any], where: list[int]) -> Any:
    """``fn`` whose results (a tuple in output order, a dict by component, or one value) have
    their message outputs (positions ``where``) in every language."""

    def fix(result: Any) -> Any:
        if isinstance(result, dict) and not (len(outputs) == 1 and "__type__" in result):
            return {k: bilingual(v) if isinstance(v, str) and is_message_output(k) else v
                    for k, v in result.items()}  # fmt: skip
        if isinstance(result, tuple | list) and len(outputs) > 1:
            return type(result)(
                bilingual(v) if i in where and isinstance(v, str) else v
                for i, v in enumerate(result)
            )
        return bilingual(result) if isinstance(result, str) and where == [0] else result

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            for result in fn(*args, **kwargs):
                yield fix(result)
    else:

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return fix(fn(*args, **kwargs))

    wrapped.__uv__ = True  # type: ignore[attr-defined]
    return wrapped


def all_of(groups: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """Names of several groups, each once, in order."""
    return tuple(dict.fromkeys(n for g in groups for n in g))


def lora_controls(ctx: TabContext, pick: str, scale: str, info: str) -> None:
    """A LoRA dropdown (the files the registry offers) and its scale slider, named ``pick``
    and ``scale`` (the Attention, Architecture and Experiments tabs each have one)."""
    from .i18n import L

    c = ctx.c
    c[pick] = gr.Dropdown(
        ctx.registry.lora_choices(),
        value="none",
        label=L("LoRA"),
        info=L(info),
        elem_id=pick,
        scale=3,
    )
    c[scale] = gr.Slider(
        -2.0, 2.0, value=1.0, step=0.05, label=L("LoRA scale"), elem_id=scale, scale=2
    )
    ctx.c.setdefault("lora_picks", []).append(pick)


def refresh_loras(ctx: TabContext, demo: gr.Blocks) -> None:
    """Every LoRA dropdown lists the files in the roots as they are when a page loads (a file
    copied there after start-up appears on the next page load; a header read each)."""
    picks = ctx.c.get("lora_picks", [])

    def choices() -> dict[Any, Any]:
        found = ctx.registry.lora_choices()
        return {ctx.c[p]: gr.update(choices=found) for p in picks}

    if picks:
        demo.load(
            choices,
            None,
            [ctx.c[p] for p in picks],
            api_visibility="private",
            show_progress="hidden",
        )

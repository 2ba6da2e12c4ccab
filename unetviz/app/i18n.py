"""The app in English and Simplified Chinese: labels through gradio's ``gr.I18n``, everything a
handler writes as HTML through :func:`unetviz.app.walkthrough.both` (both languages in the page).

``L("Prompt")`` is the label a component shows: the English text is the key, and
``locales/app.<lang>.json`` (with its per-area ``app.<area>.<lang>.json``) holds every key in every language (``tests/test_i18n.py`` fails on a
key missing in either, or used in the code and absent from the files). The page starts in the
browser's language (gradio picks it); the language switch in the page header changes it at once
and remembers the choice in the browser (:data:`SWITCH_JS`; its CSS in
``static/walkthrough.css``). No translation happens at run time.
The CLI stays English.

**Messages** (what handlers write while the page runs: status lines, notes, errors) are not
labels: their numbers and names change. The English message is looked up in a catalogue of
templates (``locales/messages.<lang>.json``: ``"loaded {model} in {s} s"`` -> its translation,
compiled to regexes once) and written in every language at once (:func:`bilingual`), so the
switch needs no round trip; a message the catalogue does not know stays English. Text that can
hold no markup (a progress bar's) is sent in the page's language only (:func:`in_language`,
:func:`request_language`: the switch keeps the language in a cookie).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = Path(__file__).resolve().parent / "locales"
#: the languages of the app: gradio locale codes
LANGS = ("en", "zh-CN")
LANG_NAMES = {"en": "English", "zh-CN": "中文"}


@cache
def translations() -> dict[str, dict[str, str]]:
    """Every language's ``{key: text}``: ``locales/app.<lang>.json`` merged with the per-area
    files ``locales/app.<area>.<lang>.json`` (one per tab or feature, so parallel work on two
    tabs never edits one file). A key defined twice is a bug, refused here."""
    out = {}
    for lang in LANGS:
        out[lang] = {}
        for path in locale_files("app", lang):
            data = json.loads(path.read_text(encoding="utf-8"))
            twice = sorted(set(data) & set(out[lang]))
            if twice:
                raise ValueError(f"{path.name}: keys defined in another locale file: {twice}")
            out[lang].update({str(k): str(v) for k, v in data.items()})
    return out


def locale_files(kind: str, lang: str, english: bool = True) -> list[Path]:
    """``<kind>.<lang>.json`` first, then ``<kind>.<area>.<lang>.json`` in name order (only
    those that exist when ``english`` is False: a message catalogue has no English file)."""
    main = LOCALES / f"{kind}.{lang}.json"
    areas = [
        p
        for p in sorted(LOCALES.glob(f"{kind}.*.{lang}.json"))
        if p != main and p.name.count(".") == lang.count(".") + 3
    ]
    return [main, *areas] if english or main.is_file() else areas


@cache
def i18n() -> Any:
    """The app's ``gr.I18n`` (passed to ``launch``)."""
    import gradio as gr

    return gr.I18n(**translations())


def L(key: str, **values: Any) -> Any:  # noqa: N802 - short on purpose: it wraps every label
    """The label ``key`` (its English text), translated in the browser; ``values`` fill its
    ``{placeholders}`` (registered once as a key of their own in every language)."""
    table = translations()
    if key not in table["en"]:
        raise KeyError(f"no translation for {key!r}: add it to unetviz/app/locales/app.*.json")
    if values:
        # no braces in a key: the page finds a key's end by its first "}"
        digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode())
        filled = f"{key.replace('{', '').replace('}', '')} #{digest.hexdigest()[:12]}"
        for lang in LANGS:
            table[lang].setdefault(filled, table[lang][key].format(**values))
        key = filled
    return i18n()(key)


def text(key: str, lang: str = "en") -> str:
    """``key`` in ``lang`` as plain text (server-side uses: tests, the CLI-free report)."""
    return translations()[lang].get(key, key)


# ------------------------------------------------------------------------- messages
#: a ``{name}`` placeholder of a message template (other braces are literal text)
FIELD = re.compile(r"\{(\w+)\}")
#: placeholders whose captured text is itself a message (translated in turn)
NESTED = ("error", "label", "message", "note", "reason", "status")
#: the cookie the language switch keeps the page's language in (read for plain-text progress)
LANG_COOKIE = "unetviz-lang"


@cache
def catalogue() -> dict[str, dict[str, str]]:
    """Every non-English language's ``{English template: its translation}``:
    ``locales/messages.<lang>.json`` merged with ``messages.<area>.<lang>.json`` (a template
    defined twice is refused). A template is a message as the app writes it (Markdown), with
    ``{name}`` for the values that change: ``"loaded {model} in {s} s"``."""
    out: dict[str, dict[str, str]] = {}
    for lang in LANGS[1:]:
        out[lang] = {}
        for path in locale_files("messages", lang, english=False):
            data = json.loads(path.read_text(encoding="utf-8"))
            twice = sorted(set(data) & set(out[lang]))
            if twice:
                raise ValueError(f"{path.name}: templates defined in another file: {twice}")
            out[lang].update({str(k): str(v) for k, v in data.items()})
    return out


class _Template:
    """One English template compiled once: a literal prefix (a cheap first test) and the
    anchored regex whose named groups capture the placeholders' values."""

    __slots__ = ("prefix", "regex", "text")

    def __init__(self, text: str) -> None:
        parts = FIELD.split(text)
        pattern, seen = [], set()
        for i, part in enumerate(parts):
            if i % 2 == 0:
                pattern.append(re.escape(part))
            elif part in seen:
                pattern.append(f"(?P={part})")
            else:
                seen.add(part)
                pattern.append(f"(?P<{part}>.+?)")
        self.text = text
        self.prefix = parts[0]
        self.regex = re.compile("".join(pattern), re.S)


#: marks around a whole message that leave its words alone (its inside is looked up)
WRAPPERS = (("**", "**"), ("⚠ ", ""))
#: the separator of a status line's parts ("Showing … · seed 0 · 25 steps · …")
SEGMENT = " · "


@cache
def _compiled(lang: str) -> tuple[dict[str, str], list[tuple[_Template, str]], dict, list]:
    """(exact messages, templates with placeholders, most literal text first) of ``lang``,
    for whole messages and for the parts of a status line (keys written ``"· part"``)."""
    table = catalogue()[lang]
    out: list[Any] = []
    for part in (False, True):
        items = {k[2:] if part else k: v for k, v in table.items() if k.startswith("· ") == part}
        exact = {k: v for k, v in items.items() if not FIELD.search(k)}
        templates = [(_Template(k), v) for k, v in items.items() if FIELD.search(k)]
        templates.sort(key=lambda tv: -len(FIELD.sub("", tv[0].text)))
        out += [exact, templates]
    return tuple(out)  # type: ignore[return-value]


def translate(message: str, lang: str, _depth: int = 0) -> str | None:
    """``message`` (English, as the app wrote it) in ``lang`` from the catalogue, or None when
    no template matches. A placeholder named in :data:`NESTED` is translated in turn. A status
    line no whole template matches is translated part by part (its parts joined by
    :data:`SEGMENT`, each a whole or a part template, or free of words); any part unknown:
    None."""
    if lang == LANGS[0]:
        return message
    if lang not in catalogue():
        return None
    exact, templates, part_exact, part_templates = _compiled(lang)
    hit = _match(message, lang, exact, templates, _depth)
    if hit is not None or _depth >= 3:
        return hit
    for pre, post in WRAPPERS:  # an error shown in bold, a warning sign before a message
        inner = message[len(pre) : len(message) - len(post)]
        if inner and message.startswith(pre) and message.endswith(post):
            done = translate(inner, lang, _depth + 1)
            if done is not None:
                return pre + done + post
    if SEGMENT not in message:
        return None
    parts = []
    for part in message.split(SEGMENT):
        done = _match(part, lang, part_exact, part_templates, _depth)
        if done is None:
            done = translate(part, lang, _depth + 1)
        if done is None and re.search(r"[A-Za-z]{2}", part):
            return None
        parts.append(part if done is None else done)
    return SEGMENT.join(parts)


def _match(message: str, lang: str, exact: dict, templates: list, depth: int) -> str | None:
    """``message`` by one of ``exact`` or ``templates``, its nested values translated."""
    hit = exact.get(message)
    if hit is not None:
        return hit
    for template, target in templates:
        if not message.startswith(template.prefix):
            continue
        m = template.regex.fullmatch(message)
        if m is None:
            continue
        values = m.groupdict()
        if depth < 3:
            for k in NESTED:
                if k in values:
                    values[k] = translate(values[k], lang, depth + 1) or values[k]
        return _fill(target, values)
    return None


def _fill(template: str, values: dict[str, str]) -> str:
    """``template`` with its ``{name}`` placeholders replaced (no ``str.format``: a message
    may hold literal braces)."""
    return FIELD.sub(lambda f: values.get(f[1], f[0]), template)


def spans(texts: dict[str, str]) -> str:
    """One language's text per span; the page's CSS shows the chosen language's only. Text of
    several lines (Markdown paragraphs, lists) goes in a ``div`` per language instead, with
    blank lines around it so that Markdown still reads what is inside."""
    if any("\n" in t for t in texts.values()):
        return "".join(
            f'<div class="uv-l uv-l-{lang}" lang="{lang}">\n\n{texts[lang]}\n\n</div>\n\n'
            for lang in LANGS
        )
    return "".join(
        f'<span class="uv-l uv-l-{lang}" lang="{lang}">{texts[lang]}</span>' for lang in LANGS
    )


def bilingual(message: str) -> str:
    """A message for the page (Markdown, English) in every language: a span per language
    (:func:`spans`) when the catalogue knows it, the English text alone when it does not.
    Already bilingual text and empty text are returned as they are."""
    if not message or 'class="uv-l ' in message:
        return message
    texts = {lang: translate(message, lang) for lang in LANGS}
    if all(texts[lang] is None for lang in LANGS[1:]):
        return message
    return spans({k: v if v is not None else message for k, v in texts.items()})


def one_language(text: str, lang: str = "en") -> str:
    """The ``lang`` part of a message written in every language (:func:`spans`); text with no
    spans as it is. For readers of a handler's output that are not the page (tests, logs)."""
    m = re.search(
        rf'<(span|div) class="uv-l uv-l-{re.escape(lang)}" lang="[^"]*">(.*?)</\1>', text, re.S
    )
    return m[2].strip("\n") if m else text


def in_language(message: str, lang: str) -> str:
    """``message`` in ``lang`` where it must be plain text of one language (a progress bar's
    text): the catalogue's translation, else the English."""
    return translate(message, lang) or message if message else message


def request_language(request: Any) -> str:
    """The page's language as a request carries it: the switch's cookie, else the browser's
    ``Accept-Language``; English when neither says."""
    headers = getattr(request, "headers", None)
    try:
        cookie = headers.get("cookie", "") if headers is not None else ""
        accept = headers.get("accept-language", "") if headers is not None else ""
    except Exception:  # a request object without a mapping of headers
        return LANGS[0]
    m = re.search(rf"(?:^|;)\s*{LANG_COOKIE}=([\w-]+)", cookie or "")
    if m and m[1] in LANGS:
        return m[1]
    first = (accept or "").split(",")[0].strip().lower()
    return "zh-CN" if first.startswith("zh") else LANGS[0]


#: the page header's language switch (a gr.HTML body): gradio's own ``changeLocale`` (found in
#: the page's loaded modules), a ``data-uv-lang`` attribute on <body> for the handler-made HTML,
#: and the choice kept in localStorage
SWITCH_HTML = (
    '<div class="uv-lang" id="uv_lang">'
    + "".join(
        f'<button type="button" data-lang="{lang}" lang="{lang}">{name}</button>'
        for lang, name in LANG_NAMES.items()
    )
    + "</div>"
)

SWITCH_JS = """
const KEY = 'unetviz-lang';
const LANGS = __LANGS__, COOKIE = '__COOKIE__';
const pick = (l) => {
  if (!l) return 'en';
  if (LANGS.includes(l)) return l;
  return l.toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
};
async function gradioLocale(lang) {
  const urls = performance.getEntriesByType('resource').map((e) => e.name)
    .filter((u) => /\\/assets\\/core-[^\\/]*\\.js$/.test(u));
  for (const u of urls) {
    try { const m = await import(u); if (m.changeLocale) { m.changeLocale(lang); return true; } }
    catch (e) { /* try the next one */ }
  }
  return false;
}
function apply(lang, save) {
  lang = pick(lang);
  document.body.dataset.uvLang = lang;
  document.documentElement.lang = lang;
  element.querySelectorAll('button[data-lang]').forEach(
    (b) => b.classList.toggle('uv-on', b.dataset.lang === lang));
  if (save) { try { localStorage.setItem(KEY, lang); } catch (e) {} }
  // the server reads it for the text it cannot send in both languages (a progress bar's)
  document.cookie = `${COOKIE}=${lang}; path=/; SameSite=Strict`;
  return gradioLocale(lang);
}
window.__uvSetLang = (lang) => apply(lang, true);
element.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-lang]');
  if (b) apply(b.dataset.lang, true);
});
let saved = null;
try { saved = localStorage.getItem(KEY); } catch (e) {}
const first = saved || navigator.language;
document.body.dataset.uvLang = pick(first);
if (saved) setTimeout(() => apply(saved, false), 300);
else apply(first, false);
""".replace("__LANGS__", json.dumps(list(LANGS))).replace("__COOKIE__", LANG_COOKIE)


__all__ = [
    "LANGS",
    "LANG_NAMES",
    "L",
    "SWITCH_HTML",
    "SWITCH_JS",
    "bilingual",
    "catalogue",
    "i18n",
    "in_language",
    "one_language",
    "request_language",
    "text",
    "translate",
]


#: the label of a choice whose value is an API word (``detail="blocks"``): capitalised keys, as
#: gradio's own translations hold a ``blocks`` namespace that a lower-case key would hit
CHOICE_LABELS = {
    "blocks": "Blocks",
    "layers": "Layers",
    "modules": "Modules",
    "skips": "Skips",
}


def choices(*values: str) -> list[tuple[Any, str]]:
    """Radio choices ``(translated label, value)``: the page shows the label in its language,
    the handler receives the API word."""
    return [(L(CHOICE_LABELS[v]), v) for v in values]

"""The app in English and Simplified Chinese: labels through gradio's ``gr.I18n``, everything a
handler writes as HTML through :func:`unetviz.app.walkthrough.both` (both languages in the page).

``L("Prompt")`` is the label a component shows: the English text is the key, and
``locales/app.<lang>.json`` (with its per-area ``app.<area>.<lang>.json``) holds every key in every language (``tests/test_i18n.py`` fails on a
key missing in either, or used in the code and absent from the files). The page starts in the
browser's language (gradio picks it); the language switch in the page header changes it at once
and remembers the choice in the browser (:data:`SWITCH_JS`; its CSS in
``static/walkthrough.css``). No translation happens at run time.
The CLI stays English.
"""

from __future__ import annotations

import hashlib
import json
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


def locale_files(kind: str, lang: str) -> list[Path]:
    """``<kind>.<lang>.json`` first, then ``<kind>.<area>.<lang>.json`` in name order."""
    main = LOCALES / f"{kind}.{lang}.json"
    areas = [
        p
        for p in sorted(LOCALES.glob(f"{kind}.*.{lang}.json"))
        if p != main and p.name.count(".") == lang.count(".") + 3
    ]
    return [main, *areas]


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
const LANGS = __LANGS__;
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
""".replace("__LANGS__", json.dumps(list(LANGS)))


__all__ = ["LANGS", "LANG_NAMES", "L", "SWITCH_HTML", "SWITCH_JS", "i18n", "text"]

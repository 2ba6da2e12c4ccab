"""Two languages: every key exists in English and Chinese, every label the app's code asks for
has a translation, every explanation the walkthrough can show exists, placeholders agree."""

from __future__ import annotations

import ast
import json
import re
import string
from pathlib import Path

import pytest

from unetviz.app import walkthrough
from unetviz.app.i18n import LANGS, L, locale_files, translations

APP = Path(walkthrough.__file__).resolve().parent
CJK = re.compile(r"[\u4e00-\u9fff]")


def _files(kind: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for lang in LANGS:
        out[lang] = {}
        for path in locale_files(kind, lang):
            data = json.loads(path.read_text(encoding="utf-8"))
            assert not set(data) & set(out[lang]), f"{path.name} repeats keys"
            out[lang].update(data)
    return out


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


@pytest.mark.parametrize("kind", ["app", "walkthrough"])
def test_every_key_in_both_languages_with_the_same_placeholders(kind):
    files = _files(kind)
    en, zh = files["en"], files["zh-CN"]
    assert set(en) - set(zh) == set(), "keys missing in Chinese"
    assert set(zh) - set(en) == set(), "keys missing in English"
    for key in en:
        assert en[key].strip() and zh[key].strip(), key
        assert _fields(en[key]) == _fields(zh[key]), key
    # translated, not copied: most entries hold Chinese (the rest are module names: SiLU...)
    chinese = sum(bool(CJK.search(v)) for v in zh.values())
    assert chinese >= 0.8 * len(zh), f"only {chinese} of {len(zh)} entries are in Chinese"
    if kind == "app":  # the English text is the key
        assert all(k == v for k, v in en.items())


def _label_keys() -> list[tuple[str, str]]:
    """Every ``L("...")`` literal in the app's code (implicit concatenation joined)."""
    found = []
    for path in sorted(APP.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "L"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((path.name, node.args[0].value))
    return found


def test_every_label_in_the_code_has_a_translation():
    keys = _label_keys()
    assert len(keys) >= 50, "the main controls' labels go through L()"
    missing = [(f, k) for f, k in keys if k not in translations()["zh-CN"]]
    assert not missing, missing
    from unetviz.app.ui import TABS

    assert all(title in translations()["zh-CN"] for title, _ in TABS)
    assert {f for f, _ in keys} >= {"architecture.py", "attention.py", "temb.py", "ui.py"}
    with pytest.raises(KeyError, match="no translation"):
        L("a label nobody translated")


def test_label_values_are_filled_in_both_languages():
    data = L("a whole number 0..{max}", max=7)
    assert translations()["en"][data.key] == "a whole number 0..7"
    assert translations()["zh-CN"][data.key] == "0..7 之间的整数"


@pytest.mark.parametrize("preset", ["demo", "sd15", "sd21", "sdxl"])
def test_every_explanation_the_walkthrough_shows_exists(preset):
    from unetviz.structure import structure_trace

    if preset == "demo":
        from unetviz.app.registry import ModelRegistry

        reg = ModelRegistry()
        spec = reg.spec("demo")
        trace = reg.architecture(spec, spec.default_size, spec.default_size, 2)
    else:
        trace = structure_trace(preset, 512, 512, detail="modules")
    stages = walkthrough.stages(trace)
    keys = {f"title.{s.kind}" for s in stages} | {f"text.{s.kind}" for s in stages}
    keys |= {k for s in stages for k, _, _ in s.substeps}
    for lang in LANGS:
        missing = keys - set(walkthrough.texts(lang))
        assert not missing, (lang, missing)
    html = walkthrough.page(stages, 0)
    assert "{" not in re.sub(r"<[^>]+>", "", html), "an unfilled placeholder"
    assert 'lang="zh-CN"' in html and 'lang="en"' in html

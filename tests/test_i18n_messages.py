"""Messages in two languages: every message the app's code writes into a message slot or a
status line, every error text it raises (and the shared argument checks' texts), every progress
text, has a template in the message catalogue; the catalogue's templates are sound; the handler
decorator writes both languages and an unknown message stays English."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from unetviz.app import common, i18n
from unetviz.app.i18n import FIELD, LANGS, bilingual, catalogue, translate

APP = Path(common.__file__).resolve().parent
ROOT = APP.parent
#: the code whose messages reach the page: the app's tabs, and the checks they call
SOURCES = sorted(p for p in APP.glob("*.py") if p.name not in ("__init__.py", "cli.py")) + [
    ROOT / "batch" / "dataset.py",
    ROOT / "capture" / "bundle.py",
]
#: of an uploaded trace bundle's checks, those a user meets (not a zip, members missing, too
#: big, another version); the schema checks of a crafted bundle's fields stay English
ONLY = {
    "bundle.py": {"read_bundle", "_member", "_read_folder", "_read_zip", "_check_size",
                  "_check_budget", "_parse_state", "_read_referenced"},
}  # fmt: skip
#: what a raised error's class is called (UnetvizError and its subclasses; ``error``: the class
#: a caller of unetviz.callargs hands in)
ERRORS = re.compile(
    r"(Input|ModelAccess|View|Edit|Trace|Batch|Argument|Output|Unetviz|NoDaam)Error$|^error$|^Cancelled$"
)
#: variables that hold a status line or note before it is returned
NOTE_NAMES = {"note", "status", "pnote", "message"}
#: functions that return a message (or a tuple led by one)
MESSAGE_FUNCTIONS = r"status|note|missing|^open_folder$|^drill$"
HOLE = "\x00"  # a value that changes: any text may stand there


def _probes(node: ast.AST) -> list[str]:
    """Every shape the expression's text can take, its changing values as HOLE."""
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else [HOLE]
    if isinstance(node, ast.JoinedStr):
        parts = [_probes(v) if isinstance(v, ast.Constant) else [HOLE] for v in node.values]
        return ["".join(p) for p in itertools.product(*parts)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _probes(node.left) for b in _probes(node.right)]
    if isinstance(node, ast.IfExp):
        return _probes(node.body) + _probes(node.orelse)
    return [HOLE]


def _slots(tree: ast.AST) -> set[str]:
    """The message slots named in ``@handler(..., msg=...)`` (and the status lines)."""
    found = set(common.TEXT_SLOTS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "handler":
            found |= {k.value.value for k in node.keywords if k.arg == "msg"}
    return found


def _scan(path: Path) -> list[tuple[str, int, str]]:
    """(file, line, probe) of every message literal of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    slots = _slots(tree) | {"run_msg", "ctrl_msg", "arch_msg", "wt_msg"}
    if path.name in ONLY:
        body = [f for f in tree.body if getattr(f, "name", None) in ONLY[path.name]]
        tree = ast.Module(body=body, type_ignores=[])
    exprs: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and re.search(MESSAGE_FUNCTIONS, node.name):
            for r in ast.walk(node):  # a message, or a tuple led by one
                if isinstance(r, ast.Return) and r.value:
                    exprs.append(r.value.elts[0] if isinstance(r.value, ast.Tuple) else r.value)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
            if ERRORS.search(name) and node.exc.args:
                exprs.append(node.exc.args[0])
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value in slots:
                    exprs.append(v)
        elif isinstance(node, ast.Call):
            exprs += [k.value for k in node.keywords if k.arg == "desc"]
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
            key = getattr(getattr(node.target, "slice", None), "value", None)
            if getattr(node.target, "id", "") in NOTE_NAMES or key in slots:
                exprs.append(
                    ast.BinOp(ast.Constant(HOLE), ast.Add(), node.value, lineno=node.lineno)
                )
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                key = getattr(getattr(t, "slice", None), "value", None)  # out["status"] = ...
                name = getattr(t, "id", "")
                if name in NOTE_NAMES or key in slots or name.endswith("_NOTE"):
                    exprs.append(node.value)
    out = []
    for e in exprs:
        for probe in _probes(e):
            if re.search(r"[A-Za-z]{2}", probe.replace(HOLE, " ")):  # words, not a lone value
                out.append((path.name, e.lineno, probe))
    return out


def _fill(probe: str) -> str:
    """A probe as a message: each changing value a sample text."""
    return probe.replace(HOLE, "‹v›")


def _known(probe: str) -> bool:
    """Whether the catalogue translates the probe, its changing values filled in; a value
    beside another or at an end may be an optional part (``+ suffix``), so it may also be
    empty."""
    optional = re.sub(f"^{HOLE}|{HOLE}$|(?<={HOLE}){HOLE}", "", probe)
    return any(
        all(translate(_fill(p), lang) is not None for lang in LANGS[1:])
        for p in dict.fromkeys((probe, optional))
    )


def test_the_scan_finds_the_apps_messages():
    probes = {p for path in SOURCES for _, _, p in _scan(path)}
    assert len(probes) >= 60
    assert "nothing is running" in probes
    assert f"cancelled after step {HOLE} of {HOLE}: the page keeps what it showed" in probes
    assert any(p.startswith("Showing **") for p in probes)  # the Run's status line


def _argument_errors() -> list[str]:
    """The shared checks' messages for the values a user can type (unetviz.callargs: their
    text is composed of parts, so they are made here by calling the checks)."""
    from unetviz.callargs import (
        APP_MAX_GUIDANCE,
        APP_MAX_STEPS,
        check_guidance,
        check_seed,
        check_steps,
    )

    calls = [
        lambda: check_seed(-1, error=common.InputError),
        lambda: check_seed("abc", error=common.InputError),
        lambda: check_seed(1.5, error=common.InputError),
        lambda: check_seed(2.0**60, error=common.InputError),
        lambda: check_steps(0, APP_MAX_STEPS, error=common.InputError),
        lambda: check_steps("many", APP_MAX_STEPS, error=common.InputError),
        lambda: check_guidance("nan", 1.0, APP_MAX_GUIDANCE, error=common.InputError),
        lambda: check_guidance(99, 1.0, APP_MAX_GUIDANCE, error=common.InputError),
        lambda: common.parse_int("x", "height", 8, 4096),
    ]
    out = []
    for call in calls:
        with pytest.raises(common.InputError) as exc:
            call()
        out.append(common.clean_message(str(exc.value)))
    return out


def test_every_message_of_the_app_has_a_translation():
    missing = [
        f"{f}:{line}: {_fill(p)!r}"
        for path in SOURCES
        for f, line, p in _scan(path)
        if not _known(p)
    ]
    missing += [m for m in _argument_errors() if translate(m, "zh-CN") is None]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("lang", LANGS[1:])
def test_the_catalogue_is_sound(lang):
    table = catalogue()[lang]
    assert len(table) >= 60
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for en, zh in table.items():
        words = re.sub(r"[^A-Za-z]", "", FIELD.sub("", en))
        part = en.startswith("· ")  # a part of a status line (used only between " · ")
        assert zh.strip() and (cjk.search(zh) or en == "steps" or part and not words), (en, zh)
        fields = FIELD.findall(en)
        assert set(FIELD.findall(zh)) <= set(fields), (en, zh)  # nothing made up
        assert not re.search(r"\}\{", en), f"two placeholders side by side: {en!r}"
        # a whole template says something: it cannot match every message
        assert part or len(words) >= 3, en
        # a template matches its own shape, filled in
        sample = FIELD.sub(lambda m: f"<{m[1]}>", en[2:] if part else en)
        if part:
            sample = f"Showing **x** · {sample}"
        assert translate(sample, lang) is not None, en


def test_templates_fill_values_and_nest():
    assert translate("nothing is running", "zh-CN") == catalogue()["zh-CN"]["nothing is running"]
    zh = translate("seed='x': expected a whole number 0..18446744073709551615", "zh-CN")
    assert zh is not None and "seed='x'" in zh and "0..18446744073709551615" in zh
    assert "整数" in zh
    assert translate("an unknown message", "zh-CN") is None
    bold = translate("**the edited prompt is the prompt (a red circle): change a word**", "zh-CN")
    assert bold is not None and bold.startswith("**编辑后") and bold.endswith("**")
    assert translate("⚠ nothing is running", "zh-CN") == "⚠ 当前没有正在运行的任务"
    assert translate("an unknown message", "en") == "an unknown message"


def test_a_status_line_is_translated_part_by_part():
    line = (
        "Showing **a red circle** · seed 7 · 25 steps · guidance 4 · LoRA x.safetensors ×0.8"
        " · generated and captured in 1.2 s"
    )
    zh = translate(line, "zh-CN")
    assert zh == (
        "当前显示 **a red circle** · 种子 7 · 25 步 · 引导系数 4 · LoRA x.safetensors，强度 ×0.8"
        " · 生成并捕获用时 1.2 秒"
    )
    assert translate(line + " · something new", "zh-CN") is None  # one unknown part: English
    assert translate("25 steps", "zh-CN") is None  # a part template is only used as a part


def test_bilingual_spans_and_unknown_text_left_english():
    two = bilingual("nothing is running")
    assert 'class="uv-l uv-l-en" lang="en">nothing is running</span>' in two
    assert 'lang="zh-CN">' in two and re.search(r"[\u4e00-\u9fff]", two)
    assert bilingual(two) == two  # once only
    assert bilingual("") == "" and bilingual("something new") == "something new"
    lines = bilingual(
        "edit · 1 edit(s)\n\n<details><summary>all parameters</summary>\n\nx\n\n</details>"
    )
    assert lines.startswith('<div class="uv-l uv-l-en" lang="en">\n\n')  # Markdown inside
    assert i18n.one_language(lines, "zh-CN").endswith("</details>")


def test_the_handler_decorator_writes_both_languages():
    @common.handler("out", "status", msg="x_msg")
    def ok(form):
        return {"out": 1, "x_msg": "nothing is running", "status": "nothing is running"}

    @common.handler("out", msg="x_msg")
    def bad(form):
        raise common.InputError("seed=-1: expected a whole number 0..18446744073709551615")

    @common.handler("out", msg="x_msg")
    def bug(form):
        raise RuntimeError("boom")

    out = ok({})
    assert out["out"] == 1
    for slot in ("x_msg", "status"):
        assert 'lang="zh-CN"' in out[slot] and 'lang="en"' in out[slot]
    err = bad({})["x_msg"]
    assert err.count("⚠") == 2 and "seed=-1" in err and "整数" in err
    internal = bug({})["x_msg"]
    assert "internal error in bug (RuntimeError)" in internal and "内部错误" in internal


def test_progress_text_in_the_pages_language():
    seen = []

    def progress(*args, desc=None, unit=None):
        seen.append((desc, unit))

    class Request:
        headers = {"cookie": "a=1; unetviz-lang=zh-CN", "accept-language": "en-US"}

    lang = i18n.request_language(Request())
    assert lang == "zh-CN"
    p = common.LocalProgress(progress, lang)
    p((1, 4), desc="denoising step 1/4 · about 3 s left", unit="steps")
    p(0, desc="loading the model…")
    assert all(re.search(r"[\u4e00-\u9fff]", d) for d, _ in seen), seen
    assert seen[0][1] != "steps"
    Request.headers = {"accept-language": "zh-CN,zh;q=0.9"}
    assert i18n.request_language(Request()) == "zh-CN"
    Request.headers = {"cookie": "unetviz-lang=en", "accept-language": "zh-CN"}
    assert i18n.request_language(Request()) == "en"
    assert i18n.request_language(None) == "en"


def test_events_not_declared_with_handler_get_both_languages_too():
    """A tab wired with plain gradio functions (tuples in output order): its message output
    is localised by the page-level pass, its other outputs are untouched."""
    import gradio as gr

    with gr.Blocks() as demo:
        box = gr.Textbox()
        msg = gr.Markdown("nothing is running", elem_id="x_msg")
        other = gr.Markdown(elem_id="x_other")
        button = gr.Button()
        button.click(lambda v: (v, "nothing is running"), box, [other, msg])
        button.click(lambda v: "nothing is running", box, other)
    assert common.localise_events(demo) == 1
    fns = list(demo.fns.values())
    assert fns[0].fn("nothing is running")[0] == "nothing is running"  # not a message output
    assert 'lang="zh-CN"' in fns[0].fn("x")[1]
    assert fns[1].fn("x") == "nothing is running"
    assert 'lang="zh-CN"' in msg.value  # the first value too
    assert common.localise_events(demo) == 0  # once

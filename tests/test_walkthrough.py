"""docs/walkthrough.md links each stage to code lines: every link must point at lines that exist
and hold the code its text names (or lie inside the class it names)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
LANG_DOCS = ("walkthrough.md", "walkthrough.zh-CN.md")
LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+)#L(\d+)-L(\d+)\)")


def _enclosing_class(lines: list[str], start: int, end: int) -> str | None:
    """The top-level class the lines start..end lie in (None if they leave it)."""
    if any(re.match(r"(class|def) ", line) for line in lines[start:end]):
        return None
    for line in reversed(lines[:start]):
        m = re.match(r"(class|def) (\w+)", line)
        if m:
            return m.group(2) if m.group(1) == "class" else None
    return None


@pytest.mark.parametrize("doc", ["walkthrough.md", "walkthrough.zh-CN.md"])
def test_every_link_points_at_the_code_it_names(doc):
    text = (DOCS / doc).read_text(encoding="utf-8")
    links = LINK.findall(text)
    assert len(links) >= 25, "the walkthrough links each stage to its code"
    problems = []
    for label, target, a, b in links:
        file = (DOCS / target).resolve()
        a, b = int(a), int(b)
        if not file.is_file():
            problems.append(f"{target}: no such file")
            continue
        lines = file.read_text().splitlines()
        if not 1 <= a <= b <= len(lines):
            problems.append(f"{target}#L{a}-L{b}: the file has {len(lines)} lines")
            continue
        span = "\n".join(lines[a - 1 : b])
        for name in re.findall(r"`([^`]+)`", label):
            name = name.removeprefix("self.").split("(")[0]
            if name not in span and _enclosing_class(lines, a, b) != name:
                problems.append(f"[{name}]({target}#L{a}-L{b}): not in those lines")
    assert not problems, "\n".join(problems)


def test_the_chinese_walkthrough_links_the_same_code():
    targets = [LINK.findall((DOCS / d).read_text(encoding="utf-8")) for d in LANG_DOCS]
    assert [t[1:] for t in targets[0]] == [t[1:] for t in targets[1]]

"""Every relative link in the README and docs/ resolves: the file exists, a ``#heading`` anchor
names a heading of that Markdown file, and a ``#L10-L20`` anchor lies inside that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _text(path: Path) -> str:
    """The Markdown without HTML comments and code (links there are not links)."""
    text = re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _problem(doc: Path, target: str, root: Path = ROOT) -> str | None:
    """What is wrong with the relative link ``target`` of ``doc`` (None: it resolves)."""
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    if not dest.exists():
        return "no such file"
    if root not in dest.parents and dest != root:
        return "leaves the repository"
    if not anchor:
        return None
    lines = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
    if lines:
        last = int(lines.group(2) or lines.group(1))
        n = len(dest.read_text(encoding="utf-8").splitlines())
        return None if last <= n else f"line {last} past the end ({n} lines)"
    if dest.suffix == ".md" and anchor not in _anchors(dest):
        return f"no heading #{anchor}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    bad = []
    for target in LINK.findall(_text(doc)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        problem = _problem(doc, target)
        if problem:
            bad.append(f"{target}: {problem}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_link_check_catches_a_broken_link(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# A title\n\n[b](b.md), [c](c.md), [t](#a-title), [x](#x) <!-- [y](y.md) -->\n")
    (tmp_path / "b.md").write_text("two\nlines\n")
    found = [_problem(doc, t, tmp_path) for t in LINK.findall(_text(doc))]
    assert found == [None, "no such file", None, "no heading #x"]
    assert _problem(doc, "b.md#L2", tmp_path) is None
    assert _problem(doc, "b.md#L1-L3", tmp_path) == "line 3 past the end (2 lines)"
    inner = tmp_path / "repo" / "d.md"
    inner.parent.mkdir()
    assert _problem(inner, "../a.md", tmp_path / "repo") == "leaves the repository"

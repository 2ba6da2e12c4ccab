"""The structure cache key: it hashes exactly the code that runs while a structure is captured,
without comments and docstrings."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import unetviz
from unetviz import structure
from unetviz.config import PRESETS, UNetConfig

ROOT = Path(unetviz.__file__).parent
SD_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
SD_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


def _covered(file: str, qualname: str) -> bool:
    """Whether ``STRUCTURE_CODE`` hashes the function ``qualname`` of ``file``."""
    for entry in structure.STRUCTURE_CODE:
        entry_file, _, entry_name = entry.partition(":")
        if entry_file != file:
            continue
        if not entry_name or qualname == entry_name or qualname.startswith(entry_name + "."):
            return True
    return False


@pytest.mark.skipif(sys.version_info < (3, 11), reason="needs code objects' co_qualname")
def test_structure_code_covers_every_function_a_structure_capture_runs():
    """Every function of the package that runs during a structure capture (SD 1.5 at the finest
    detail, SDXL's added conditions and deeper transformers; small, as only the code counts) is in ``STRUCTURE_CODE``; else a change of it would leave stale caches."""
    ran: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(str(ROOT)):
            ran.add((Path(code.co_filename).relative_to(ROOT).as_posix(), code.co_qualname))

    tiny = {"block_out_channels": (32, 64), "layers_per_block": 1}
    sd = {**PRESETS["sd15"], **tiny, "down_block_types": SD_DOWN, "up_block_types": SD_UP}
    xl = {**PRESETS["sdxl"], **tiny, "down_block_types": SD_DOWN, "up_block_types": SD_UP}
    xl.update(attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2))
    xl.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=2048 + 6 * 8)
    structure.capture_state(UNetConfig.from_dict(sd), 64, 64, 2, "blocks", None)  # imports
    for config, detail in ((sd, "modules"), (xl, "modules"), (sd, "blocks")):
        cfg = UNetConfig.from_dict(config)
        sys.setprofile(profile)
        try:
            structure.capture_state(cfg, 64, 64, 2, detail, None)
        finally:
            sys.setprofile(None)
    missing = sorted(f"{f}:{q}" for f, q in ran if not _covered(f, q))
    assert ran and not missing, f"add to structure.STRUCTURE_CODE: {missing}"


def test_fingerprint_ignores_comments_and_docstrings_but_not_code(tmp_path):
    """A comment or docstring fix in the structure code keeps the key; a code change does not;
    code outside ``STRUCTURE_CODE`` (here: the rest of config.py) never counts."""
    copy = tmp_path / "unetviz"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns("*.gz", "*.safetensors", "*.pyc", "demo_model", "static"),
    )
    base = structure.code_fingerprint(copy)
    assert base == structure.code_fingerprint()

    def edit(rel: str, old: str, new: str) -> str:
        path = copy / rel
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        return structure.code_fingerprint(copy)

    assert edit("capture/probes.py", "\n", "\n# a comment fix\n") == base
    assert edit("model/sampling.py", '"""', '"""A docstring fix. ') == base
    assert edit("config.py", "\ndef ", "\nUNRELATED = 1\n\n\ndef ") == base
    assert edit("model/sampling.py", "padding=1)", "padding=(1))") != base


def test_code_text_strips_only_comments_and_docstrings():
    source = (
        '"""Module doc."""\n\nclass A:\n    """Doc\n    more."""\n\n'
        '    def f(self):  # note\n        return "# not a comment"\n'
    )
    assert (
        structure.code_text(source)
        == 'class A:\n    def f(self):\n        return "# not a comment"'
    )
    assert (
        structure.code_text(source, "A.f") == '    def f(self):\n        return "# not a comment"'
    )
    with pytest.raises(LookupError, match="A.g"):
        structure.code_text(source, "A.g")


def test_fingerprint_fast_paths_agree_with_parsing(tmp_path, monkeypatch):
    """The shipped ``code.json`` (bytes -> fingerprint) and the user cache's ``code-<hash>``
    give what parsing gives; with neither, parsing runs once and is kept."""
    raw, sources = structure._code_bytes(ROOT)
    parsed = structure._normalized_fingerprint(raw, sources)
    shipped = structure._shipped_code()
    if shipped.get("files") == raw:  # a checkout whose structures match its code
        assert shipped["code"] == parsed == structure.code_fingerprint()
    monkeypatch.setattr(structure, "BUNDLED_DIR", tmp_path / "nothing shipped")
    monkeypatch.setenv("UNETVIZ_CACHE_DIR", str(tmp_path / "cache"))
    assert structure.code_fingerprint() == parsed
    assert (tmp_path / "cache" / f"code-{raw[:24]}").read_text().strip() == parsed

    def no_parsing(*args):
        raise AssertionError("the kept fingerprint must be used")

    monkeypatch.setattr(structure, "_normalized_fingerprint", no_parsing)
    assert structure.code_fingerprint() == parsed

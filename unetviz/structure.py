"""The structure of a UNet without weights: one forward on the ``meta`` device under capture,
and the one cache of those structures, shared by ``unetviz diagram`` / ``summary`` and the app.

A structure (every module's shapes, parameters and MACs) costs an import of torch and a meta
forward (seconds the first time); it is cached as the Trace's JSON state:

1. structures of the model presets at their default sizes ship with the package
   (``unetviz/presets/structures``, rewritten by ``unetviz bundle-structures``), so the first
   ``unetviz diagram --preset sdxl`` needs no torch;
2. everything else in ``$UNETVIZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/unetviz/traces``, else
   ``~/.cache/unetviz/traces`` (best effort: a read-only home only costs speed).

Both are keyed by the config, latent size, batch, detail, token count and a hash of the code
that shapes a structure (:data:`STRUCTURE_CODE`, without comments and docstrings): a change of
that code misses them, any other change does not. torch is imported only to compute a missing
structure.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import os
import re
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PRESETS, UNetConfig

if TYPE_CHECKING:
    from .capture import Trace

#: Where the shipped preset structures live, and which (preset, detail) pairs they cover.
BUNDLED_DIR = Path(__file__).parent / "presets" / "structures"
BUNDLED = [(p, d) for p in ("sd15", "sd21", "sdxl") for d in ("blocks", "layers")]
#: Context tokens of an SD text encoder (CLIP): the default sequence length of a structure.
TOKENS = 77
#: Pixels per latent pixel of an SD VAE.
VAE_FACTOR = 8


def cache_dir() -> Path:
    """Where structure traces are cached: ``$UNETVIZ_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/unetviz/traces``, else ``~/.cache/unetviz/traces``."""
    if os.environ.get("UNETVIZ_CACHE_DIR"):
        return Path(os.environ["UNETVIZ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unetviz" / "traces"


#: The code that runs while a structure is captured, hence all that determines one: a whole
#: file, or ``file:qualname`` for the classes and functions of a file that the meta forward
#: runs (``tests/test_structure.py`` checks that this covers every function that runs).
STRUCTURE_CODE = (
    "config.py:_per_block",
    "config.py:UNetConfig.check_size",
    "config.py:UNetConfig.heads",
    "config.py:UNetConfig.layers",
    "config.py:UNetConfig.n_blocks",
    "config.py:UNetConfig.num_downsamplers",
    "config.py:UNetConfig.time_embed_dim",
    "config.py:UNetConfig.to_dict",
    "config.py:UNetConfig.transformer_layers",
    "config.py:UNetConfig.transformer_depths",
    "config.py:_per_layer",
    "names.py:_digits",
    "names.py:block_of",
    "names.py:forward_key",
    "names.py:forward_rank",
    "names.py:layer_order",
    "names.py:location_of",
    "weights.py:build_unet",
    "weights.py:_as_config",
    "structure.py:capture_state",
    "structure.py:meta_trace",
    "structure.py:_extra_inputs",
    "model/attention.py",
    "model/blocks.py",
    "model/embeddings.py",
    "model/resnet.py",
    "model/sampling.py",
    "model/transformer.py",
    "model/unet.py",
    "capture/aggregate.py:MapCache",
    "capture/attention.py:CrossAttentionProbe",
    "capture/attention.py:GridProbe",
    "capture/attention.py:MapStore",
    "capture/attention.py:_QKProbe",
    "capture/engine.py",
    "capture/features.py:features_level",
    "capture/options.py",
    "capture/plan.py",
    "capture/probe.py",
    "capture/probes.py",
    "capture/records.py",
    "capture/shapes.py",
    "capture/trace.py",
)


def code_fingerprint(root: Path | None = None) -> str:
    """Hash of :data:`STRUCTURE_CODE` (under ``root``, the package by default) without
    comments, docstrings and blank lines: a comment or docstring fix keeps the cached and
    shipped structures, a change of the code that makes them does not.

    Parsing that code would cost a diagram more than drawing it, so the files are first hashed
    as bytes: when they are the bytes the shipped structures were made from (``code.json``
    beside them), the fingerprint recorded there is the answer; else the one computed for
    those bytes before (``code-<hash>`` in :func:`cache_dir`), else it is computed and kept."""
    package = Path(__file__).parent
    raw, sources = _code_bytes(root or package)
    if (root or package) != package:
        return _normalized_fingerprint(raw, sources)
    shipped = _shipped_code()
    if shipped.get("files") == raw and isinstance(shipped.get("code"), str):
        return shipped["code"]
    kept = cache_dir() / f"code-{raw[:24]}"
    try:
        known = kept.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        known = ""
    if re.fullmatch(r"[0-9a-f]{64}", known):
        return known
    fingerprint = _normalized_fingerprint(raw, sources)
    try:
        from .outputs import write_file

        kept.parent.mkdir(parents=True, exist_ok=True)
        write_file(kept, fingerprint + "\n")
    except (OSError, ValueError):
        pass  # caching is best effort (read-only home, full disk)
    return fingerprint


#: Beside the shipped structures: ``{"files": byte hash, "code": fingerprint}`` of the
#: structure code they were made from (written by :func:`bundle_structures`).
CODE_NAME = "code.json"


def _code_bytes(root: Path) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """(SHA-256 of the files of :data:`STRUCTURE_CODE` as bytes, their (path, bytes))."""
    files = dict.fromkeys(entry.partition(":")[0] for entry in STRUCTURE_CODE)
    sources = tuple((file, (root / file).read_bytes()) for file in files)
    raw = b"".join(file.encode() + b"\0" + data + b"\0" for file, data in sources)
    return hashlib.sha256(raw).hexdigest(), sources


def _shipped_code() -> dict[str, Any]:
    try:
        data = json.loads((BUNDLED_DIR / CODE_NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@lru_cache(maxsize=8)
def _normalized_fingerprint(raw: str, sources: tuple[tuple[str, bytes], ...]) -> str:
    """The fingerprint proper (``raw``, the byte hash of ``sources``, keys the cache)."""
    text = {file: data.decode("utf-8") for file, data in sources}
    digest = hashlib.sha256()
    for entry in STRUCTURE_CODE:
        file, _, qualname = entry.partition(":")
        digest.update(entry.encode() + b"\0" + code_text(text[file], qualname).encode() + b"\0")
    return digest.hexdigest()


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def code_text(source: str, qualname: str = "") -> str:
    """``source``, or its class or function ``qualname`` (e.g. ``UNetConfig.heads``), without
    comments, docstrings, trailing spaces and blank lines."""
    tree, lines = _strip(source)
    node: ast.AST = tree
    for part in qualname.split(".") if qualname else ():
        found = [c for c in ast.iter_child_nodes(node) if isinstance(c, _DEFS) and c.name == part]
        if not found:
            raise LookupError(f"no class or function {qualname!r} in the structure code")
        node = found[0]
    first, last = 1, len(lines)
    if isinstance(node, _DEFS):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        last = node.end_lineno or node.lineno
    kept = (line.rstrip() for line in lines[first - 1 : last])
    return "\n".join(line.decode() for line in kept if line)


@lru_cache(maxsize=64)
def _strip(source: str) -> tuple[ast.Module, tuple[bytes, ...]]:
    """The syntax tree of ``source`` and its lines (as UTF-8, as ast counts columns) with every
    comment and docstring cut out, the line count kept."""
    tree = ast.parse(source)
    text = source.splitlines()
    lines = [line.encode() for line in text]
    cuts = []  # (line, byte, end line, end byte): lines from 1
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, *_DEFS)) and body and _is_docstring(body[0]):
            doc = body[0]
            cuts.append((doc.lineno, doc.col_offset, doc.end_lineno, doc.end_col_offset))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            (row, col), (_, end) = tok.start, tok.end
            line = text[row - 1]
            cuts.append((row, len(line[:col].encode()), row, len(line[:end].encode())))
    for row, col, end_row, end_col in sorted(cuts, reverse=True):
        if row == end_row:
            lines[row - 1] = lines[row - 1][:col] + lines[row - 1][end_col:]
            continue
        lines[row - 1], lines[end_row - 1] = lines[row - 1][:col], lines[end_row - 1][end_col:]
        lines[row : end_row - 1] = [b""] * (end_row - row - 1)
    return tree, tuple(lines)


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def structure_key(
    cfg: UNetConfig,
    height: int,
    width: int,
    batch: int,
    detail: str,
    tokens: int = TOKENS,
    factor: int = VAE_FACTOR,
) -> str:
    """The cache (and bundle) key of a structure: config, size, batch, detail, tokens and the
    hash of the code that shapes it (which makes a version number redundant)."""
    key_data = {
        "config": cfg.to_dict(),
        "height": height,
        "width": width,
        "factor": factor,
        "batch": batch,
        "detail": detail,
        "tokens": tokens,
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]


def _read_state(path: Path, label: str | None) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
        state = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
        meta = state.setdefault("meta", {})
    except (OSError, ValueError, EOFError, AttributeError):
        return None  # a broken entry is rebuilt
    meta["model"] = label or meta.get("model")
    return state


def as_config(source: UNetConfig | dict | str) -> tuple[UNetConfig, str | None]:
    """(UNetConfig, label) from a config, a diffusers-style dict or a preset name."""
    if isinstance(source, UNetConfig):
        return source, None
    if isinstance(source, str):
        return UNetConfig.preset(source), source if source in PRESETS else None
    return UNetConfig.from_dict(dict(source)), None


def structure(
    cfg: UNetConfig,
    height: int,
    width: int,
    batch: int = 2,
    detail: str = "layers",
    label: str | None = None,
    cache: bool = True,
    tokens: int = TOKENS,
    factor: int = VAE_FACTOR,
) -> dict[str, Any]:
    """The structure of the UNet ``cfg`` at ``height`` x ``width`` pixels (``factor`` pixels
    per latent pixel) with ``tokens`` context tokens, as the Trace's JSON state
    (``Trace.to_state()[0]``, which every ``unetviz.render`` function reads like a Trace).
    Read from the shipped structures or the cache, else captured (and cached unless
    ``cache`` is False)."""
    key = structure_key(cfg, height, width, batch, detail, tokens, factor)
    path = cache_dir() / f"{key}.json"
    if cache:
        for candidate in (BUNDLED_DIR / f"{key}.json.gz", path):
            state = _read_state(candidate, label) if candidate.is_file() else None
            if state is not None:
                return state
    state = capture_state(cfg, height, width, batch, detail, label, tokens, factor)
    if cache:
        try:
            from .outputs import write_file

            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, json.dumps(state))
        except (OSError, ValueError):
            pass  # caching is best effort (read-only home, full disk)
    return state


def structure_trace(
    source: UNetConfig | dict | str,
    height: int,
    width: int,
    batch: int = 2,
    detail: str = "modules",
    tokens: int = TOKENS,
    factor: int = VAE_FACTOR,
    label: str | None = None,
    cache: bool = True,
) -> Trace:
    """:func:`structure` as a :class:`unetviz.capture.Trace` (what the app draws), for a
    config, a config dict or a preset name."""
    from .capture import Trace

    cfg, default_label = as_config(source)
    state = structure(
        cfg, height, width, batch, detail, label or default_label, cache, tokens, factor
    )
    return Trace.from_state(state, {})


def capture_state(
    cfg: UNetConfig,
    height: int,
    width: int,
    batch: int,
    detail: str,
    label: str | None,
    tokens: int = TOKENS,
    factor: int = VAE_FACTOR,
) -> dict[str, Any]:
    """Capture a structure now (no cache) and return its JSON state."""
    info = {"model": label, "height": height, "width": width, "batch": batch, "tokens": tokens}
    trace = meta_trace(cfg, height // factor, width // factor, batch, tokens, detail, meta=info)
    state, _ = trace.to_state()
    return state


def bundle_structures() -> list[tuple[str, str, Path, int]]:
    """Rewrite the shipped preset structures (maintainers; ``unetviz bundle-structures``) at
    each preset's default size, and ``code.json`` (what code made them): the new files are
    written first, then the stale ``*.json.gz`` of :data:`BUNDLED_DIR` (a folder of the package
    holding only files this function writes) are removed. Returns (preset, detail, path,
    bytes) per structure written."""
    from .outputs import write_file

    written = []
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    for preset, detail in BUNDLED:
        cfg = UNetConfig.preset(preset)
        h = w = cfg.sample_size * VAE_FACTOR
        state = capture_state(cfg, h, w, 2, detail, None)
        key = structure_key(cfg, h, w, 2, detail)
        data = gzip.compress(json.dumps(state, separators=(",", ":")).encode(), mtime=0)
        written.append(
            (preset, detail, write_file(BUNDLED_DIR / f"{key}.json.gz", data), len(data))
        )
    code = {"files": _code_bytes(Path(__file__).parent)[0], "code": code_fingerprint()}
    write_file(BUNDLED_DIR / CODE_NAME, json.dumps(code, indent=1) + "\n")
    keep = {p for _, _, p, _ in written}
    for old in BUNDLED_DIR.glob("*.json.gz"):  # stale keys, only after the new ones are in
        if old not in keep:
            old.unlink()
    return written


def meta_trace(
    config: UNetConfig | dict,
    latent_height: int,
    latent_width: int,
    batch: int = 2,
    tokens: int = TOKENS,
    detail: str = "layers",
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Capture one meta forward of ``config`` on a (batch, C, latent_height, latent_width)
    sample with ``tokens`` context tokens: every shape, parameter and MAC count, no memory."""
    import torch

    from .capture import capture
    from .weights import build_unet

    unet = build_unet(config, device="meta")
    cfg = unet.config
    device = torch.device("meta")
    sample = torch.zeros(batch, cfg.in_channels, latent_height, latent_width, device=device)
    context = torch.zeros(batch, tokens, cfg.cross_attention_dim, device=device)
    kwargs = _extra_inputs(cfg, batch, device)
    with (
        torch.no_grad(),
        capture(unet, detail=detail, attention=False, temb=False, meta=meta) as tr,
    ):
        unet(sample, torch.tensor(999.0, device=device), context, **kwargs)
    return tr


def _extra_inputs(cfg: UNetConfig, batch: int, device: Any) -> dict[str, Any]:
    """SDXL's added conditions and class labels, as zeros, when the config takes them."""
    import torch

    kwargs: dict[str, Any] = {}
    if cfg.addition_embed_type == "text_time":
        n_time = 6  # original size, crop top-left, target size
        text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, text_dim, device=device),
            "time_ids": torch.zeros(batch, n_time, device=device),
        }
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        if cfg.class_embed_type == "projection":
            labels = torch.zeros(batch, cfg.projection_class_embeddings_input_dim, device=device)
        else:
            labels = torch.zeros(batch, dtype=torch.long, device=device)
        kwargs["class_labels"] = labels
    return kwargs

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
that shapes a structure (config, model, capture, this file), so a code change misses them.
torch is imported only to compute a missing structure.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
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


def code_fingerprint() -> str:
    """Hash of the files whose change changes a structure trace (config, model, capture)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    files = [root / "config.py", root / "structure.py", *sorted((root / "model").glob("*.py"))]
    for f in files + sorted((root / "capture").rglob("*.py")):
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


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
    each preset's default size: the new files are written first, then the stale
    ``*.json.gz`` of :data:`BUNDLED_DIR` (a folder of the package holding only files this
    function writes) are removed. Returns (preset, detail, path, bytes) per file written."""
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

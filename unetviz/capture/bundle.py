"""A trace bundle on disk: ``trace.json`` + ``tensors.safetensors`` in a zip or a folder.

Every byte from outside is hostile until measured. Reading checks declared sizes and the
compression ratio of each zip member *before* inflating it, caps them, and streams the
safetensors data tensor by tensor into preallocated tensors (no second copy of the blob). The
structure is then checked against its own tensors and against sane limits
(:func:`check_state`) before anything downstream allocates from it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from ..safetensors_io import read_header, read_tensor, torch_dtype
from .errors import TraceError

FORMAT = "unetviz-trace"
VERSION = 1
JSON_NAME = "trace.json"
TENSORS_NAME = "tensors.safetensors"
#: the generated image beside the capture (optional): ``Trace.save(path, image=...)``, the app
IMAGE_NAME = "image.png"
MAX_IMAGE_SIDE = 512  # px: a larger image is saved downscaled (a report shows ~256 px)
MAX_IMAGE_BYTES = 2 * 1024**2  # PNG bytes of that preview

# limits (a real SDXL capture of 50 steps, every layer, per step: ~1 GB of tensors)
MAX_JSON_BYTES = 8 * 1024**2  # parses into at most ~210 MB of Python objects
MAX_TENSOR_BYTES = 16 * 1024**3
MAX_HEADER_BYTES = 16 * 1024**2  # safetensors JSON header
MAX_RATIO = 100  # inflated / compressed, for members over 1 MiB inflated (deflated zeros: ~1000)
MAX_LATENT = 512  # latent side (4096 px images)
MAX_SIDE = 512  # attention grid side
MAX_HEADS = 64
MAX_TOKENS = 308  # 4 x 77: long-prompt pipelines chunk by 77
MAX_STEPS = 10_000
MAX_RECORDS = 200_000
MAX_CHANNELS = 16_384
MAX_POINTS = 64

#: the safetensors dtypes a trace holds (floats for maps and vectors; ints and bools for masks)
_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


# ---------------------------------------------------------------------------------- reading
def read_bundle(
    path: str | os.PathLike, max_bytes: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state, tensors) of the bundle at ``path`` (zip or folder). Sizes are checked first; then
    the structure is checked against the safetensors *header* (no tensor allocated yet): every
    tensor must be one the structure references, of the shape it implies, and together at most
    ``max_bytes`` (default :data:`MAX_TENSOR_BYTES`) before a byte of data is read."""
    path = Path(path)
    cap = MAX_TENSOR_BYTES if max_bytes is None else min(int(max_bytes), MAX_TENSOR_BYTES)
    if not path.exists():
        raise TraceError(f"trace file not found: {path}")
    try:
        if path.is_dir():
            return _read_folder(path, cap)
        if not zipfile.is_zipfile(path):
            raise TraceError(
                f"{path} is not a unetviz trace: expected a zip bundle with {JSON_NAME} and "
                f"{TENSORS_NAME} (written by Trace.save)"
            )
        return _read_zip(path, cap)
    except TraceError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as exc:
        raise TraceError(
            f"{path} is a corrupt unetviz trace: {type(exc).__name__}: {exc}"
        ) from None


def _member(folder: Path, name: str) -> Path:
    """``folder/name`` as a regular file that resolves inside ``folder`` (a ``trace.json``
    symlink to ``/etc/passwd`` or to another folder is refused, as model folders refuse it)."""
    file = folder / name
    real, root = file.resolve(), folder.resolve()
    if not real.is_relative_to(root):
        raise TraceError(f"{file} leads outside the trace folder {folder} (a symlink?)")
    if not file.is_file():
        raise TraceError(f"{folder} is a folder without {name}: not a unetviz trace folder")
    return real


def _read_folder(path: Path, cap: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    files = {name: _member(path, name) for name in (JSON_NAME, TENSORS_NAME)}
    sizes = {name: f.stat().st_size for name, f in files.items()}
    _check_size(path, JSON_NAME, sizes[JSON_NAME], MAX_JSON_BYTES)
    with open(files[JSON_NAME], "rb") as fh:
        state = _parse_state(path, fh.read(MAX_JSON_BYTES + 1))
    _check_size(path, TENSORS_NAME, sizes[TENSORS_NAME], MAX_TENSOR_BYTES)
    with open(files[TENSORS_NAME], "rb") as fh:
        return state, _read_referenced(path, fh, sizes[TENSORS_NAME], state, cap)


def _read_zip(path: Path, cap: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        missing = sorted({JSON_NAME, TENSORS_NAME} - set(infos))
        if missing:
            raise TraceError(f"{path} is a zip file but not a unetviz trace: it lacks {missing}")
        for name, limit in ((JSON_NAME, MAX_JSON_BYTES), (TENSORS_NAME, MAX_TENSOR_BYTES)):
            info = infos[name]
            _check_size(path, name, info.file_size, limit)
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1024**2 and ratio > MAX_RATIO:
                raise TraceError(
                    f"{path}: {name} inflates {ratio:.0f}x ({info.compress_size} -> "
                    f"{info.file_size} bytes); a trace member may inflate at most "
                    f"{MAX_RATIO}x (refused as a zip bomb)"
                )
        # the data is at least the member less the largest header: over budget -> no inflating
        _check_budget(path, infos[TENSORS_NAME].file_size - 8 - MAX_HEADER_BYTES, cap)
        with zf.open(infos[JSON_NAME]) as fh:
            state = _parse_state(path, fh.read(MAX_JSON_BYTES + 1))
        with zf.open(infos[TENSORS_NAME]) as fh:
            size = infos[TENSORS_NAME].file_size
            return state, _read_referenced(path, fh, size, state, cap)


def _check_size(path: Path, name: str, size: int, cap: int) -> None:
    if size > cap:
        raise TraceError(
            f"{path}: {name} is {size} bytes; a trace's {name} may be at most {cap} bytes"
        )


def _check_budget(path: Path, need: int, cap: int) -> None:
    if need > cap:
        raise TraceError(
            f"{path}: its tensors take {need:,} bytes once loaded; this loader accepts at most "
            f"{cap:,} bytes (max_bytes)"
        )


def _parse_state(path: Path, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_JSON_BYTES:
        raise TraceError(f"{path}: {JSON_NAME} is over {MAX_JSON_BYTES} bytes")
    try:
        state = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise TraceError(f"{path}: {JSON_NAME} is nested too deeply") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TraceError(f"{path} is not a unetviz trace (no '{FORMAT}' format marker)")
    if state.get("version") != VERSION:
        raise TraceError(
            f"{path} is a unetviz trace of version {state.get('version')!r}; this unetviz "
            f"reads version {VERSION}"
        )
    return state


def _read_referenced(
    path: Path, fh: IO[bytes], size: int, state: dict[str, Any], cap: int
) -> dict[str, torch.Tensor]:
    """The tensors of a bundle whose structure is ``state``: checked on the header alone
    (shapes on the meta device), then streamed. A tensor the structure does not name, or bytes
    beyond the shapes it implies, or a total over ``cap``, is refused before any allocation."""
    entries, _ = read_header(fh, size, MAX_HEADER_BYTES)
    bad = next((e for e in entries if e.dtype not in _DTYPES), None)
    if bad is not None:
        raise TraceError(
            f"{path}: tensor {bad.name!r} has dtype {bad.dtype}, not one a trace holds"
        )
    shapes = {
        e.name: torch.empty(e.shape, dtype=torch_dtype(e.dtype), device="meta") for e in entries
    }
    try:
        referenced = check_state(state, shapes)
    except TraceError as exc:
        raise TraceError(f"{path} is a corrupt unetviz trace: {exc}") from None
    extra = sorted(set(shapes) - referenced)
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise TraceError(
            f"{path}: {TENSORS_NAME} holds tensors {', '.join(map(repr, extra[:3]))}{more} that "
            f"{JSON_NAME} does not reference (a trace holds only what its structure names)"
        )
    _check_budget(path, sum(e.nbytes for e in entries), cap)
    return {e.name: read_tensor(fh, e) for e in entries}


def read_safetensors(fh: IO[bytes], size: int) -> dict[str, torch.Tensor]:
    """Stream a safetensors file of ``size`` bytes: the header is checked (dtypes, shapes,
    offsets tiling the data exactly) before any tensor is allocated, then each tensor is read
    straight into its own storage."""
    entries, _ = read_header(fh, size, MAX_HEADER_BYTES)
    bad = next((e for e in entries if e.dtype not in _DTYPES), None)
    if bad is not None:
        raise ValueError(f"safetensors tensor {bad.name!r}: unsupported dtype {bad.dtype!r}")
    return {e.name: read_tensor(fh, e) for e in entries}


def image_png(image: Any) -> bytes:
    """The PNG bytes a bundle keeps of ``image`` (a PIL image): at most
    :data:`MAX_IMAGE_SIDE` px a side and :data:`MAX_IMAGE_BYTES` bytes (halved until it fits)."""
    import io

    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TraceError(f"image={type(image).__name__}: expected a PIL image (run.image)")
    img = image.convert("RGB")
    side = MAX_IMAGE_SIDE
    while True:
        if max(img.size) > side:
            scale = side / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        if buf.tell() <= MAX_IMAGE_BYTES or side <= 16:
            return buf.getvalue()
        side //= 2


# ---------------------------------------------------------------------------------- checking
class _Refs(dict):
    """The tensors by name, remembering which names were looked up."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__(tensors)
        self.seen: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.seen.add(key)
        return super().__getitem__(key)


def check_state(state: Any, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Raise ``TraceError`` unless ``state`` is a well-formed trace structure whose sizes are
    within this module's limits and agree with its own tensors (shapes vs ``res``, heads,
    tokens, steps). Returns the names of the tensors the structure references. ``tensors`` may
    be meta tensors (shapes only): loading checks the header this way before reading data."""
    tensors = _Refs(tensors)
    _check_structure(state, tensors)
    return tensors.seen


def _check_structure(state: Any, tensors: _Refs) -> None:
    if not isinstance(state, dict):
        raise TraceError(f"the trace structure is a {type(state).__name__}, expected an object")
    for key, kind in _TOP_LEVEL.items():
        if not isinstance(state.get(key), kind):
            raise TraceError(f"trace field {key!r} must be a {kind.__name__}")
    _check_meta(state["meta"])
    tokens, words = state["tokens"], state["words"]
    _bound("tokens", len(tokens), MAX_TOKENS)
    if not all(isinstance(t, str) and len(t) <= 256 for t in tokens):
        raise TraceError("trace tokens must be strings (at most 256 characters)")
    bad_words = not all(w is None or isinstance(w, str) for w in words)
    if words and (len(words) != len(tokens) or bad_words):
        raise TraceError(f"trace words: expected {len(tokens)} strings or nulls, one per token")
    _bound("timesteps", len(state["timesteps"]), MAX_STEPS)
    for key in ("blocks", "skips", "temb", "temb_sources"):
        _bound(key, len(state[key]), MAX_RECORDS)
        if not all(isinstance(r, dict) for r in state[key]):
            raise TraceError(f"trace {key} must be a list of objects")
    _check_temb(state, tensors)
    token_dims: set[int] = set()
    for name, rec in state["attention"].items():
        _check_attention(name, rec, tensors, token_dims)
    for name, rec in state["self_attention"].items():
        _check_self_attention(name, rec, tensors)
    if len(token_dims) > 1:
        raise TraceError(f"attention maps disagree on the number of tokens: {sorted(token_dims)}")
    if state.get("features") is not None:  # capture(features=...): checked by its own module
        from .features import features_from_state

        features_from_state(state["features"], tensors, len(state["timesteps"]))


_TOP_LEVEL = {
    "meta": dict,
    "tokens": list,
    "words": list,
    "timesteps": list,
    "blocks": list,
    "skips": list,
    "temb": list,
    "temb_sources": list,
    "temb_vectors": list,
    "attention": dict,
    "self_attention": dict,
}


def _bound(what: str, n: int, cap: int) -> None:
    if n > cap:
        raise TraceError(f"trace {what}: {n} entries, at most {cap} allowed")


def _int_in(what: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TraceError(f"trace {what}={value!r}: expected an integer in [{lo}, {hi}]")
    return value


def _check_meta(meta: dict[str, Any]) -> None:
    latent = meta.get("latent")
    if latent is not None:
        if not isinstance(latent, list) or len(latent) != 2:
            raise TraceError(f"trace meta.latent={latent!r}: expected [height, width]")
        for v in latent:
            _int_in("meta.latent", v, 1, MAX_LATENT)
    for key in ("height", "width"):
        if meta.get(key) is not None:
            _int_in(f"meta.{key}", meta[key], 1, 8 * MAX_LATENT)
    config = meta.get("config")
    if config is None:
        return
    if not isinstance(config, dict):
        raise TraceError("trace meta.config must be an object or null")
    channels = config.get("block_out_channels")
    if channels is not None:
        if not isinstance(channels, list) or not 1 <= len(channels) <= 16:
            raise TraceError(f"trace meta.config.block_out_channels={channels!r}: 1 to 16 ints")
        for c in channels:
            _int_in("meta.config.block_out_channels", c, 1, MAX_CHANNELS)
    if config.get("sample_size") is not None and not isinstance(config["sample_size"], list):
        _int_in("meta.config.sample_size", config["sample_size"], 1, MAX_LATENT)


def _tensor(tensors: dict[str, torch.Tensor], key: Any, what: str) -> torch.Tensor | None:
    if key is None:
        return None
    if not isinstance(key, str) or key not in tensors:
        raise TraceError(f"{what} names tensor {key!r}, which the bundle lacks")
    t = tensors[key]
    if not t.dtype.is_floating_point:
        raise TraceError(f"{what}: tensor {key!r} is {t.dtype}, expected floating point")
    return t


def _check_temb(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    for rec in state["temb"]:
        t = _tensor(tensors, rec.get("vector"), "a temb record")
        if t is not None and (t.ndim != 1 or t.shape[0] > MAX_CHANNELS):
            raise TraceError(
                f"temb vector {rec.get('vector')!r}: shape {list(t.shape)}, expected (C,)"
            )
    for block in state["temb_vectors"]:
        t = _tensor(tensors, f"temb_vectors/{block}", "temb_vectors")
        if t is not None and (t.ndim != 1 or t.shape[0] > MAX_CHANNELS):
            raise TraceError(f"temb_vectors/{block}: shape {list(t.shape)}, expected (C,)")


def _record_geometry(name: str, rec: Any) -> tuple[int, int, int]:
    """(heads, h, w) of an attention record, each within limits."""
    if not isinstance(rec, dict):
        raise TraceError(f"attention record {name!r} is not an object")
    heads = _int_in(f"{name}.heads", rec.get("heads"), 1, MAX_HEADS)
    res = rec.get("res")
    if res is None:
        return heads, 0, 0
    if not isinstance(res, list) or len(res) != 2:
        raise TraceError(f"trace {name}.res={res!r}: expected [h, w]")
    h, w = (_int_in(f"{name}.res", v, 1, MAX_SIDE) for v in res)
    return heads, h, w


def _maps_of(name: str, rec: dict[str, Any], tensors: dict) -> list[torch.Tensor]:
    key = rec.get("maps")
    steps = rec.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, int) for s in steps):
        raise TraceError(f"trace {name}.steps must be a list of integers")
    if isinstance(key, str):
        t = _tensor(tensors, key, f"{name}.maps")
        if t is None or t.ndim != 5:
            rank = None if t is None else t.ndim
            raise TraceError(
                f"trace {name}.maps: a tensor of rank {rank}, expected 5 (steps, heads, ...)"
            )
        maps = list(t.unbind(0))
    elif isinstance(key, list):
        maps = [_tensor(tensors, k, f"{name}.maps") for k in key]
    elif key is None:
        maps = []
    else:
        raise TraceError(f"trace {name}.maps={key!r}: expected a tensor name, a list or null")
    if len(maps) != len(steps):
        raise TraceError(f"trace {name}: {len(maps)} maps for {len(steps)} steps")
    return [m for m in maps if m is not None]


def _expect(name: str, t: torch.Tensor | None, shape: tuple, what: str) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise TraceError(
            f"trace {name}.{what}: tensor of shape {list(t.shape)}, expected {list(shape)} "
            "from res / heads / tokens"
        )


def _check_attention(name: str, rec: Any, tensors: dict, token_dims: set[int]) -> None:
    heads, h, w = _record_geometry(name, rec)
    per = heads if rec.get("per_head") else 1
    named = [(f"maps[{i}]", t, per) for i, t in enumerate(_maps_of(name, rec, tensors))]
    for key, rows in (("sum", per), ("head_sum", heads)):
        t = _tensor(tensors, rec.get(key), f"{name}.{key}")
        if t is not None:
            named.append((key, t, rows))
    if named and not h:
        raise TraceError(f"trace {name}: maps without a resolution (res)")
    for what, t, rows in named:
        if t.ndim != 4:
            raise TraceError(
                f"trace {name}.{what}: a tensor of rank {t.ndim}, expected 4 (heads, h, w, tokens)"
            )
        _bound(f"{name} tokens", t.shape[-1], MAX_TOKENS)
        token_dims.add(int(t.shape[-1]))
        _expect(name, t, (rows, h, w, t.shape[-1]), what)


def _check_self_attention(name: str, rec: Any, tensors: dict) -> None:
    heads, h, w = _record_geometry(name, rec)
    points = rec.get("points")
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
        raise TraceError(f"trace {name}.points: expected 1 to {MAX_POINTS} [row, col] pairs")
    for p in points:
        if not isinstance(p, list) or len(p) != 2:
            raise TraceError(f"trace {name}.points: {p!r} is not a [row, col] pair")
        _int_in(f"{name}.points row", p[0], 0, max(h - 1, 0))
        _int_in(f"{name}.points col", p[1], 0, max(w - 1, 0))
    per = heads if rec.get("per_head") else 1
    for i, t in enumerate(_maps_of(name, rec, tensors)):
        _expect(name, t, (per, len(points), h, w), f"maps[{i}]")
    _expect(name, _tensor(tensors, rec.get("sum"), f"{name}.sum"), (per, len(points), h, w), "sum")

"""safetensors in, a UNet out: meta-device builds and strict, lazy, pickle-free loading.

Loading builds the model on the ``meta`` device (no memory), reads tensors one at a time with
safetensors, and assigns them into the module, so peak memory is about one copy of the weights.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import ConfigError, UNetConfig, read_json
from .detect import ModelPathError, detect_model, inside, pickle_folder_message
from .errors import UnetvizError
from .model import UNet2DConditionModel
from .safetensors_io import (
    FLOAT_NAMES,
    TensorEntry,
    offenders,
    read_header,
    read_tensors,
    torch_dtype,
)

WEIGHTS_NAME = "diffusion_pytorch_model"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class WeightsError(UnetvizError):
    """Weights that cannot be loaded: names the file and the offending keys or bytes."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float16"``/``"fp16"``/``torch.float16`` -> ``torch.float16``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise WeightsError(f"unknown dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def build_unet(
    config: UNetConfig | dict | str | Path,
    device: str | torch.device = "meta",
    dtype: str | torch.dtype | None = None,
) -> UNet2DConditionModel:
    """Build a UNet from a config, a preset name or a config.json path.

    On ``meta`` (the default) no weights are allocated: SDXL's 2.6 B parameters build in a
    fraction of a second, and a forward on meta tensors yields every shape.
    """
    config = _as_config(config)
    with torch.device(device):
        model = UNet2DConditionModel(config)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    return model.eval().requires_grad_(False)


def _as_config(config: UNetConfig | dict | str | Path) -> UNetConfig:
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, dict):
        return UNetConfig.from_dict(config)
    text = str(config)
    if not text.endswith(".json") and not Path(text).exists():
        return UNetConfig.preset(text)
    return UNetConfig.from_json(text)


def find_unet_dir(path: str | Path) -> Path:
    """A diffusers unet folder, or a model root with a ``unet/`` subfolder (which must not lead
    outside the root through a symlink)."""
    given = Path(path)
    try:
        kind = detect_model(given)
    except ModelPathError as exc:
        raise WeightsError(str(exc)) from None
    if kind.kind in ("unet", "root", "diffusers", "demo") and kind.unet_config is not None:
        if kind.kind != "unet":
            try:
                inside(kind.path, "unet", "subfolder")
            except ModelPathError as exc:
                raise WeightsError(str(exc)) from None
        if kind.unet_config.is_file():
            return kind.unet_config.parent
    if kind.kind == "hub":
        raise WeightsError(f"model path not found: {str(given)!r}")
    if kind.kind in ("single", "config"):
        raise WeightsError(
            f"{given} is a file: load_unet expects a diffusers unet folder (config.json + "
            f"{WEIGHTS_NAME}.safetensors) or a model root with a unet/ subfolder"
        )
    raise WeightsError(
        f"{given} has no config.json and no unet/config.json: expected a diffusers unet folder "
        "or a model root with a unet/ subfolder"
    )


def weight_files(unet_dir: Path) -> list[Path]:
    """The safetensors file(s) of a unet folder: plain, ``.fp16.`` variant, or sharded index.
    Every file must resolve inside ``unet_dir`` (an index naming ``../x`` or ``/x`` is refused)."""
    try:
        return _weight_files(unet_dir)
    except (ModelPathError, ConfigError) as exc:
        raise WeightsError(str(exc)) from None


def _weight_files(unet_dir: Path) -> list[Path]:
    for stem in (WEIGHTS_NAME, f"{WEIGHTS_NAME}.fp16"):
        single = unet_dir / f"{stem}.safetensors"
        if os.path.lexists(single):
            return [inside(unet_dir, single.name, "weights file")]
        index = unet_dir / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(inside(unet_dir, index.name), "shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise WeightsError(f"{index} is not a valid shard index: no weight_map of names")
            names = list(dict.fromkeys(weight_map.values()))
            shards = [inside(unet_dir, name, f"shard named in {index.name}") for name in names]
            missing = [n for n, s in zip(names, shards, strict=True) if not s.is_file()]
            if missing:
                raise WeightsError(f"{index} names shards that are missing: {missing[:5]}")
            return shards
    pickles = sorted(p.name for p in unet_dir.glob(f"{WEIGHTS_NAME}*.bin"))
    if pickles:
        raise WeightsError(pickle_folder_message(unet_dir, pickles))
    raise WeightsError(
        f"no {WEIGHTS_NAME}.safetensors (or .fp16. variant, or sharded index) in {unet_dir}"
    )


# ---------------------------------------------------------------------------------- reading
#: safetensors dtype names unetviz loads; anything else (ints, bool, complex, float8) is refused.
FLOAT_DTYPES = {name: torch_dtype(name) for name in FLOAT_NAMES}


def read_index(file: Path) -> dict[str, TensorEntry]:
    """Every tensor's dtype, shape and byte range, from the file's header only
    (``safetensors_io.read_header``: a truncated or corrupt file raises WeightsError naming it)."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):  # a FIFO would block the open forever
            raise WeightsError(f"{file} is not a regular file (a FIFO, socket or device)")
        with open(file, "rb") as fh:
            entries, _ = read_header(fh, os.fstat(fh.fileno()).st_size)
    except PermissionError:
        raise WeightsError(f"{file}: permission denied") from None
    except (OSError, EOFError, ValueError) as exc:
        raise WeightsError(
            f"{file} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from None
    return {e.name: TensorEntry(file, e.name, e.dtype, e.shape, e.begin, e.end) for e in entries}


def check_weight(tensor: torch.Tensor, key: str, where: str | Path) -> torch.Tensor:
    """``tensor`` if it is a finite floating-point weight; else WeightsError naming ``key``
    (for loaders that get tensors from elsewhere, such as single-file checkpoints)."""
    if tensor.dtype not in FLOAT_DTYPES.values():
        raise WeightsError(
            f"{where}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}: unetviz "
            f"loads floating-point weights only ({', '.join(FLOAT_DTYPES)})"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise WeightsError(f"{where}: tensor {key!r} holds NaN or infinite values")
    return tensor


def key_mismatches(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Compare a model's parameter shapes with a file's: None when they agree, else one line
    with the counts and first offenders of missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = [
        f"{k} {found[k]} (expected {expected[k]})"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {offenders(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {offenders(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} keys with the wrong shape: {offenders(misshaped)}")
    return "; ".join(parts) or None


def load_dtype(entries: list[TensorEntry], dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the model gets. The rule: ``dtype`` when given; else the file's one dtype;
    a file that mixes floating dtypes loads as float32 (which holds every float16 and
    bfloat16 value exactly). Non-floating tensors are refused, naming the first one."""
    bad = [e for e in entries if e.dtype not in FLOAT_DTYPES]
    if bad:
        e = bad[0]
        raise WeightsError(
            f"{e.file}: tensor {e.key!r} is {e.dtype}: unetviz loads floating-point weights only "
            f"({', '.join(FLOAT_DTYPES)})" + (f"; {len(bad) - 1} more like it" if bad[1:] else "")
        )
    if dtype is not None:
        return dtype
    found = {e.dtype for e in entries}
    return FLOAT_DTYPES[found.pop()] if len(found) == 1 else torch.float32


def load_unet(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> UNet2DConditionModel:
    """Load a diffusers-format UNet strictly: every key present, none extra, every shape equal,
    every value finite, every file inside the folder given.

    ``dtype`` None keeps the file's dtype (mixed floating dtypes: float32, see
    :func:`load_dtype`). Nothing is half-loaded: on any error no model is returned.
    """
    unet_dir = find_unet_dir(path)
    try:
        config = UNetConfig.from_json(inside(unet_dir, "config.json"))
    except ModelPathError as exc:
        raise WeightsError(str(exc)) from None
    files = weight_files(unet_dir)
    model = build_unet(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    entries: dict[str, TensorEntry] = {}
    for file in files:
        entries.update(read_index(file))
    problem = key_mismatches(expected, {k: e.shape for k, e in entries.items()})
    if problem:
        raise WeightsError(f"weights in {unet_dir} do not match its config.json: {problem}")
    ordered = list(entries.values())
    target = load_dtype(ordered, resolve_dtype(dtype))
    state = dict(read_tensors(ordered, target, device, error=WeightsError))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)

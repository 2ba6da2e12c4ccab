"""safetensors in, a UNet out: meta-device builds and strict, lazy, pickle-free loading.

Loading builds the model on the ``meta`` device (no memory), reads tensors one at a time with
safetensors, and assigns them into the module, so peak memory is about one copy of the weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import UNetConfig
from .detect import pickle_folder_message
from .errors import UnetvizError
from .model import UNet2DConditionModel

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
    """A diffusers unet folder, or a model root with a ``unet/`` subfolder."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"model path not found: {path}")
    if not path.is_dir():
        raise WeightsError(
            f"{path} is a file: load_unet expects a diffusers unet folder (config.json + "
            f"{WEIGHTS_NAME}.safetensors) or a model root with a unet/ subfolder"
        )
    if (path / "config.json").is_file():
        return path
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    raise WeightsError(
        f"{path} has no config.json and no unet/config.json: expected a diffusers unet folder "
        "or a model root with a unet/ subfolder"
    )


def weight_files(unet_dir: Path) -> list[Path]:
    """The safetensors file(s) of a unet folder: plain, ``.fp16.`` variant, or sharded index."""
    for stem in (WEIGHTS_NAME, f"{WEIGHTS_NAME}.fp16"):
        single = unet_dir / f"{stem}.safetensors"
        if single.is_file():
            return [single]
        index = unet_dir / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index} is not a valid shard index: {exc}") from None
            shards = [unet_dir / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise WeightsError(f"{index} names shards that are missing: {missing[:5]}")
            return shards
    pickles = sorted(p.name for p in unet_dir.glob(f"{WEIGHTS_NAME}*.bin"))
    if pickles:
        raise WeightsError(pickle_folder_message(unet_dir, pickles))
    raise WeightsError(
        f"no {WEIGHTS_NAME}.safetensors (or .fp16. variant, or sharded index) in {unet_dir}"
    )


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, Path, object]]:
    """Open each file once; yields (key, file, handle). Corrupt files raise WeightsError."""
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                f"{file} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
        with handle as f:
            for key in f.keys():
                yield key, file, f


def _offenders(names: list[str], limit: int = 5) -> str:
    head = ", ".join(names[:limit])
    return head + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


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
        parts.append(f"{len(missing)} missing keys: {_offenders(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_offenders(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} keys with the wrong shape: {_offenders(misshaped)}")
    return "; ".join(parts) or None


def load_unet(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> UNet2DConditionModel:
    """Load a diffusers-format UNet strictly: every key present, none extra, every shape equal.

    ``dtype`` None keeps the file's dtype. Nothing is half-loaded: on any error no model is
    returned.
    """
    unet_dir = find_unet_dir(path)
    config = UNetConfig.from_json(unet_dir / "config.json")
    files = weight_files(unet_dir)
    target_dtype = resolve_dtype(dtype)
    model = build_unet(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    found = {
        key: tuple(handle.get_slice(key).get_shape()) for key, _, handle in _iter_tensors(files)
    }
    problem = key_mismatches(expected, found)
    if problem:
        raise WeightsError(f"weights in {unet_dir} do not match its config.json: {problem}")
    state: dict[str, torch.Tensor] = {}
    for key, file, handle in _iter_tensors(files):
        try:
            tensor = handle.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise WeightsError(f"{file}: cannot read tensor {key!r} (corrupt?): {exc}") from None
        if target_dtype is not None and tensor.dtype != target_dtype:
            tensor = tensor.to(target_dtype)
        state[key] = tensor.to(device) if str(device) != "cpu" else tensor
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) > 1 and target_dtype is None:
        # A file with mixed dtypes: unify on the widest so the forward does not fail.
        widest = torch.float32 if torch.float32 in dtypes else next(iter(dtypes))
        state = {k: v.to(widest) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)

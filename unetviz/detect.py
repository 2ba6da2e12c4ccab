"""What kind of model a path names, decided once for the CLI, the app and ``load_pipeline``.

Imports nothing heavy (no torch): the CLI asks this before deciding whether torch is needed.

=============  ===========================================================================
kind           what is on disk
=============  ===========================================================================
``demo``       the string ``"demo"`` (the shipped model) or any demo-format folder:
               ``unet/``, ``text_encoder/config.json``, ``tokenizer/vocab.json``, no
               ``model_index.json``
``diffusers``  a diffusers Stable Diffusion folder (``model_index.json``, ``unet/``, ...)
``root``       a folder with ``unet/config.json`` but no ``model_index.json`` (UNet only)
``unet``       a diffusers UNet folder (``config.json`` + weights)
``config``     a UNet ``config.json`` file (structure only, no weights)
``single``     an original-format single-file ``.safetensors`` checkpoint
``hub``        ``org/name`` that is not a path: a repo id, maybe in the local HF cache
=============  ===========================================================================

Pickle files are refused here (:class:`ModelPathError` with :func:`pickle_message`), and so
are missing paths, FIFOs, devices and symlink loops.
"""

from __future__ import annotations

import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import check_demo_config, check_part_config, read_json
from .files import ModelPathError, os_message  # ModelPathError: imported from here too

#: The shipped demo model (a diffusers-style folder). The one place this path is written.
DEMO_DIR = Path(__file__).resolve().parent / "demo_model"  # package data (assets/demo links here)
DEMO = "demo"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelKind:
    """The answer of :func:`detect_model`: ``kind`` (see the module table), the ``path`` to
    load (resolved; the demo folder for ``"demo"``) and the UNet ``config.json`` when there is
    one (None for single files and hub ids)."""

    kind: str
    path: Path
    unet_config: Path | None = None

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"


def is_demo_folder(path: Path) -> bool:
    """A demo-format folder: text_encoder/config.json + tokenizer/vocab.json, and not a real
    SD folder (those have model_index.json and the same two files)."""
    return (
        (path / "text_encoder" / "config.json").is_file()
        and (path / "tokenizer" / "vocab.json").is_file()
        and not (path / "model_index.json").is_file()
    )


def demo_geometry(folder: Path) -> tuple[int, int]:
    """(pixels per latent cell, context tokens) of a demo-format folder, read from its small
    configs (no torch): the VAE's downsampling factor, 2 ** (len(block_out_channels) - 1), or
    1 for the pixel model (no ``vae/``); and the text encoder's ``max_length`` (default 16).
    ConfigError for a config out of bounds."""
    factor = 1
    vae = folder / "vae" / "config.json"
    if vae.is_file():
        channels = check_part_config("vae", read_json(vae, "vae")).get("block_out_channels")
        factor = 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else 8
    te = check_demo_config("text_encoder", read_json(folder / "text_encoder" / "config.json"))
    return factor, te.get("max_length", 16)


def demo_words(folder: Path) -> list[str]:
    """The words a demo-format folder's tokenizer knows (its vocabulary without the ``<...>``
    special tokens), read under the same bounds as ``WordTokenizer.load`` and without torch.
    ConfigError for a file out of bounds or a vocabulary that is not a list of words."""
    path = folder / "tokenizer" / "vocab.json"
    vocab = check_demo_config("tokenizer", read_json(path, "tokenizer"))["vocab"]
    return [w for w in vocab if not w.startswith("<")]


def detect_model(path: str | Path) -> ModelKind:
    """Decide what ``path`` is (module table); ModelPathError for a missing path, a pickle,
    a symlink loop, an unreadable path or a folder that holds no model."""
    if str(path) == DEMO:
        return ModelKind("demo", DEMO_DIR, DEMO_DIR / "unet" / "config.json")
    given = Path(path).expanduser()
    try:
        resolved = given.resolve(strict=True)
        st = resolved.stat()
    except FileNotFoundError:
        if _REPO_ID.match(str(path)) and not str(path).startswith("."):
            return ModelKind("hub", given)
        raise ModelPathError(f"model path not found: {str(given)!r}") from None
    except RuntimeError:  # pathlib reports symlink loops this way on 3.11
        raise ModelPathError(f"{str(given)!r} is a symlink loop") from None
    except OSError as exc:
        raise ModelPathError(os_message(given, exc)) from None
    if stat.S_ISREG(st.st_mode):
        return _detect_file(resolved)
    if not stat.S_ISDIR(st.st_mode):
        raise ModelPathError(
            f"{str(given)!r} is not a regular file or folder (a FIFO, socket or device)"
        )
    return _detect_folder(resolved)


def _detect_file(path: Path) -> ModelKind:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelPathError(pickle_message(path))
    if suffix == ".safetensors":
        return ModelKind("single", path)
    if suffix == ".json":
        return ModelKind("config", path, path)
    raise ModelPathError(
        f"{str(path)!r} is a {suffix or 'suffix-less'} file: expected a model folder, a "
        "single-file .safetensors checkpoint or a UNet config.json"
    )


def _detect_folder(path: Path) -> ModelKind:
    if is_demo_folder(path):
        return ModelKind("demo", path, path / "unet" / "config.json")
    if (path / "model_index.json").is_file():
        return ModelKind("diffusers", path, path / "unet" / "config.json")
    if (path / "unet" / "config.json").is_file():
        return ModelKind("root", path, path / "unet" / "config.json")
    if (path / "config.json").is_file():
        return ModelKind("unet", path, path / "config.json")
    pickles = sorted(p.name for p in path.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelPathError(pickle_folder_message(path, pickles))
    raise ModelPathError(
        f"{str(path)!r} holds no model: expected 'demo', a diffusers Stable Diffusion folder "
        "(model_index.json, unet/, ...), a UNet folder (config.json + "
        "diffusion_pytorch_model.safetensors), a model root with unet/, or a single-file "
        ".safetensors checkpoint"
    )


# ---------------------------------------------------------------------------------- confinement
def inside(root: str | Path, path: str | Path, what: str = "file") -> Path:
    """``path`` (relative to ``root`` or absolute) resolved, if it stays inside ``root``
    (symlinks followed); ModelPathError otherwise. Every file a loader opens goes through
    this, so a shard index, a symlinked subfolder or a config cannot make it read elsewhere."""
    base = Path(root).resolve()
    try:
        target = (base / path).resolve()
    except RuntimeError:
        raise ModelPathError(f"{what} {str(path)!r} in {str(base)!r} is a symlink loop") from None
    if target != base and not target.is_relative_to(base):
        raise ModelPathError(
            f"{what} {str(path)!r} resolves outside the model folder {str(base)!r}: refused "
            "(loaders read only files inside the folder they were given)"
        )
    return target


def confined_folder(root: str | Path, name: str | Path) -> Path:
    """``root/name``, refused (ModelPathError) if it or any file directly in it resolves
    outside ``root``: a symlinked ``text_encoder/`` or ``tokenizer/vocab.json`` cannot make a
    loader (ours or transformers') read elsewhere."""
    folder = inside(root, name, "subfolder")
    if folder.is_dir():
        for entry in folder.iterdir():
            inside(root, entry, f"file in {name}/")
    return folder


# ---------------------------------------------------------------------------------- pickles
_CONVERT = (
    "import sys, torch, safetensors.torch as st; "
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, sys.argv[2])"
)


def safetensors_name(path: Path) -> str:
    """The name a converted pickle should get: what the loaders look for next to it."""
    if path.name == "pytorch_model.bin":
        return "model.safetensors"
    return path.stem + ".safetensors"


def conversion_command(path: str | Path) -> str:
    """A shell command that converts pickle ``path`` to safetensors beside it
    (``weights_only=True`` refuses code). File names travel as ``sys.argv``, shell-quoted, so
    no file name can make the command run anything."""
    path = Path(path)
    return shlex.join(["python", "-c", _CONVERT, path.name, safetensors_name(path)])


_WHY = "unetviz never unpickles files, because loading a pickle can run arbitrary code"


def pickle_message(path: str | Path) -> str:
    """Why a pickle checkpoint is refused, and the one command that converts it safely."""
    path = Path(path)
    return (
        f"{str(path)!r} is a pickle checkpoint: {_WHY}. Convert it once, in a trusted sandbox, "
        f"inside {str(path.parent)!r}, with: {conversion_command(path)} ; or download the "
        "model's .safetensors release, then pass that"
    )


def pickle_folder_message(folder: str | Path, names: list[str]) -> str:
    """A folder whose weights are only pickles: the same refusal, one command per file."""
    folder = Path(folder)
    commands = " ; ".join(conversion_command(folder / n) for n in names[:3])
    return (
        f"{str(folder)!r} only has pickle weights ({', '.join(names)}): {_WHY}. Convert them "
        f"once, in a trusted sandbox, inside that folder, with: {commands}"
    )

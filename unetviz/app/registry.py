"""Which models the app may touch, and the one lock every model-touching call holds.

- Architecture views build a UNet on the ``meta`` device (no weights, no memory) from the demo
  model's config, a preset (``sd15`` / ``sd21`` / ``sdxl``) or a local folder's ``config.json``,
  run one meta forward under ``unetviz.capture`` and keep the resulting Trace (shapes only).
- Generations load a pipeline (``unetviz.load_pipeline``) once and keep it; calls are
  serialised by :attr:`ModelRegistry.lock` so two sessions never interleave their captures.
- A folder typed in the UI must resolve (symlinks followed) inside one of the allowed model
  roots: nothing else on disk is ever read.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetviz.errors import UnetvizError

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("sd15", "sd21", "sdxl")
DEMO = "demo"
ROOTS_ENV = "UNETVIZ_MODEL_ROOTS"
THREADS_ENV = "UNETVIZ_TORCH_THREADS"
#: torch intra-op threads while the demo model runs: its ops are tiny, and on a busy 2-core
#: machine two spinning threads made 10 steps take 25 s instead of 0.6 s (bench/app.py)
DEMO_THREADS = 1
#: latent side per pixel side for latent-diffusion models (SD's VAE downsamples 8x)
VAE_FACTOR = 8


class ModelAccessError(UnetvizError):
    """A model name or folder the app will not open (unknown, outside the roots, not a model)."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model choice: what to build and how pixels map to the UNet's sample."""

    key: str  # "demo", "sd15", ... or the resolved folder path
    label: str
    config: dict[str, Any]
    factor: int  # pixels per latent cell (1: pixel-space demo, 8: SD)
    tokens: int  # text tokens fed to cross-attention
    folder: Path | None = None  # a local folder (or the demo folder) that can be run

    @property
    def default_size(self) -> int:
        """The model's native image side in pixels."""
        return int(self.config.get("sample_size", 64)) * self.factor


def default_roots() -> list[Path]:
    """Model roots when none are configured: ``$UNETVIZ_MODEL_ROOTS`` (os.pathsep-separated),
    else ``<repo>/assets`` and ``./models``."""
    env = os.environ.get(ROOTS_ENV, "").strip()
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return [REPO_ROOT / "assets", Path.cwd() / "models"]


class ModelRegistry:
    """Resolves model choices, caches architecture traces and pipelines, owns the model lock."""

    def __init__(
        self,
        roots: Iterable[str | os.PathLike] | None = None,
        demo_folder: str | os.PathLike | None = None,
        max_pipelines: int = 2,
        threads: int | None = None,
    ) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in (roots or default_roots())]
        self.demo_folder = Path(demo_folder) if demo_folder else None
        self.lock = threading.RLock()  # held around every pipeline load and call
        self._arch_lock = threading.Lock()
        self._arch: OrderedDict[tuple, Any] = OrderedDict()
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self.max_pipelines = max_pipelines
        env = os.environ.get(THREADS_ENV, "").strip()
        # ASCII digits only ("²".isdigit() is True); a bad value means "not set"
        self.threads = threads if threads else (int(env) if re.fullmatch("[0-9]{1,4}", env) and int(env) else None)  # fmt: skip
        self._default_threads: int | None = None

    # ------------------------------------------------------------------ paths
    def resolve_folder(self, text: str, allow_file: bool = False) -> Path:
        """A typed folder (or, with ``allow_file``, a single checkpoint file) -> its resolved
        path, if it lies inside an allowed root.

        A relative path is taken from the folder the app was started in (``models/x`` when
        ``models`` is a root), then from each root in turn. Raises ModelAccessError naming the
        path and the roots otherwise."""
        raw = (text or "").strip()
        if not raw:
            raise ModelAccessError("empty model folder: type a folder inside the model roots")
        if "\x00" in raw:
            raise ModelAccessError("model folder path contains a NUL byte")
        p = Path(raw).expanduser()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, *(r / p for r in self.roots)]
        for cand in candidates:
            real = cand.resolve()
            if any(real == root or real.is_relative_to(root) for root in self.roots):
                if not (real.is_dir() or (allow_file and real.is_file())):
                    continue
                return real
        if not any(
            real == root or real.is_relative_to(root)
            for real in (cand.resolve() for cand in candidates)
            for root in self.roots
        ):
            raise ModelAccessError(
                f"model folder {raw!r} is outside the allowed model roots "
                f"{[str(r) for r in self.roots]}; start the app with --model-root "
                f"(or set {ROOTS_ENV}) to allow another folder"
            )
        raise ModelAccessError(
            f"model folder {raw!r} does not exist inside the model roots "
            f"{[str(r) for r in self.roots]}"
        )

    # ------------------------------------------------------------------ specs
    def demo_dir(self) -> Path:
        """The demo model's folder (``--demo``, else the shipped one)."""
        if self.demo_folder is not None:
            return self.demo_folder
        from unetviz.detect import DEMO_DIR

        return DEMO_DIR

    def demo_words(self) -> list[str]:
        """The demo model's vocabulary, read from its tokenizer without torch ([] if it cannot
        be read: the page then lists no words)."""
        from unetviz.detect import demo_words

        try:
            return demo_words(self.demo_dir())
        except (OSError, ValueError):  # ConfigError is a ValueError
            return []

    def is_demo(self, text: str) -> bool:
        """``"demo"``, or a path naming the demo folder (``assets/demo`` from the repo, the
        shipped folder itself, ``--demo``'s folder)."""
        raw = (text or "").strip()
        if raw in ("", DEMO):
            return True
        if "\x00" in raw:
            return False
        demo = self.demo_dir().resolve()
        p = Path(raw).expanduser()
        return any(c.resolve() == demo for c in (p, REPO_ROOT / p) if c.exists())

    def spec(self, choice: str, folder: str = "") -> ModelSpec:
        """``choice``: "demo", a preset name, or "folder" (then ``folder`` is the typed path)."""
        from unetviz.config import UNetConfig, read_json

        choice = (choice or "").strip()
        if choice == DEMO:
            cfg_path = self.demo_dir() / "unet" / "config.json"
            if cfg_path.is_file():
                config = read_json(cfg_path)
            else:
                from unetviz.pipelines.demo import demo_unet_config

                config = demo_unet_config()
            config = UNetConfig.from_dict(config).to_dict()
            factor, tokens = _demo_geometry(self.demo_dir())
            return ModelSpec(DEMO, "demo model", config, factor, tokens, self.demo_dir())
        if choice in PRESETS:
            config = UNetConfig.preset(choice).to_dict()
            return ModelSpec(choice, f"{choice} preset (meta)", config, VAE_FACTOR, 77)
        if choice == "folder":
            path = self.resolve_folder(folder)
            for cfg_path in (path / "unet" / "config.json", path / "config.json"):
                if cfg_path.is_file():
                    break
            else:
                raise ModelAccessError(
                    f"{path} holds no UNet config: expected unet/config.json or config.json"
                )
            try:
                config = UNetConfig.from_json(cfg_path).to_dict()
            except Exception as exc:  # ConfigError and malformed JSON alike
                raise ModelAccessError(f"{cfg_path}: not a UNet config ({exc})") from None
            from unetviz.detect import is_demo_folder

            factor, tokens = _demo_geometry(path) if is_demo_folder(path) else (VAE_FACTOR, 77)
            return ModelSpec(str(path), path.name, config, factor, tokens, path)
        raise ModelAccessError(
            f"unknown model {choice!r}: expected 'demo', one of {list(PRESETS)} or 'folder'"
        )

    # ------------------------------------------------------------------ architecture
    def architecture(self, spec: ModelSpec, height: int, width: int, batch: int) -> Any:
        """A shapes-only Trace (detail="modules") of one meta forward, cached."""
        key = (spec.key, json.dumps(spec.config, sort_keys=True), height, width, batch)
        with self._arch_lock:
            if key in self._arch:
                self._arch.move_to_end(key)
                return self._arch[key]
        trace = architecture_trace(spec, height, width, batch)
        with self._arch_lock:
            self._arch[key] = trace
            while len(self._arch) > 16:
                self._arch.popitem(last=False)
        return trace

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, choice: str) -> Any:
        """The pipeline for "demo" or a folder inside the roots (loaded once, under the lock)."""
        from unetviz.pipelines import load_pipeline

        choice = (choice or "").strip() or DEMO
        if self.is_demo(choice):
            key = DEMO
        else:
            key = str(self.resolve_folder(choice, allow_file=True))
        with self.lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            if key == DEMO:
                pipe = load_pipeline(self.demo_folder) if self.demo_folder else load_pipeline(DEMO)
            else:
                pipe = load_pipeline(key)
            self._pipes[key] = pipe
            while len(self._pipes) > self.max_pipelines:
                self._pipes.popitem(last=False)
            return pipe

    def apply_thread_policy(self) -> None:
        """Torch intra-op threads for the app process: ``threads`` (``$UNETVIZ_TORCH_THREADS``)
        or 1. Re-aggregation and the demo model are small ops where a second spinning thread
        on a busy 2-core machine costs 10-40x (bench/app.py); other pipelines get torch's
        default back while they generate (see :meth:`generate`)."""
        import torch

        with self._arch_lock:
            if self._default_threads is None:
                self._default_threads = torch.get_num_threads()
                torch.set_num_threads(self.threads or DEMO_THREADS)

    def generate(self, choice: str, **kwargs: Any) -> Any:
        """Run a pipeline under the model lock; returns its Run. Torch threads for the call:
        ``threads`` if set, else 1 for the demo model and torch's default for others."""
        import torch

        self.apply_thread_policy()  # no-op once applied
        with self.lock:
            pipe = self.pipeline(choice)
            if self.threads:
                want = self.threads
            elif getattr(pipe, "name", "") == DEMO:
                want = DEMO_THREADS
            else:
                want = self._default_threads or torch.get_num_threads()
            before = torch.get_num_threads()
            torch.set_num_threads(want)
            try:
                return pipe(**kwargs)
            finally:
                torch.set_num_threads(before)

    def preload(self) -> threading.Thread:
        """Import torch, apply the thread policy and load the demo pipeline in a background
        thread, so the first page is served before any of that (start-up stays fast)."""

        def work() -> None:
            try:
                self.apply_thread_policy()
                self.pipeline(DEMO)
            except Exception:  # shown to the user on first Run instead
                pass

        t = threading.Thread(target=work, name="unetviz-preload", daemon=True)
        t.start()
        return t


def _demo_geometry(folder: Path) -> tuple[int, int]:
    """(pixels per latent cell, context tokens) of a demo-format folder
    (``unetviz.detect.demo_geometry``: 1 and 16 for the pixel model, the VAE's factor for a
    latent one); (1, 16) when its configs cannot be read (the load then says why)."""
    from unetviz.detect import demo_geometry

    try:
        return demo_geometry(folder)
    except (OSError, ValueError):
        return 1, 16


def size_multiple(spec: ModelSpec) -> int:
    """Image sides must be multiples of this (latent factor x 2**downsamplers)."""
    n_down = max(len(spec.config.get("down_block_types", ())) - 1, 0)
    return spec.factor * 2**n_down


def architecture_state(spec: ModelSpec, height: int, width: int, batch: int) -> dict[str, Any]:
    """``spec``'s UNet at ``height`` x ``width`` pixels with UNet batch ``batch``: every
    module's shapes, params and MACs, no weights, as the Trace's JSON state
    (``unetviz.structure.structure``: the shipped preset structures or the on-disk cache, with
    no torch import; else one meta forward). ``unetviz.render`` reads it like a Trace. The size
    check is ``UNetConfig.check_size``."""
    from unetviz.structure import as_config, structure

    cfg, preset_label = as_config(spec.key if spec.key in PRESETS else dict(spec.config))
    h, w = cfg.check_size(int(height), int(width), scale=spec.factor)
    if not 1 <= int(batch) <= 64:
        raise ModelAccessError(f"batch={batch}: expected 1..64")
    label = spec.label or preset_label
    return structure(cfg, h, w, int(batch), "modules", label, True, spec.tokens, spec.factor)


def architecture_trace(spec: ModelSpec, height: int, width: int, batch: int) -> Any:
    """:func:`architecture_state` as a :class:`unetviz.capture.Trace` (imports torch)."""
    from unetviz.capture import Trace

    return Trace.from_state(architecture_state(spec, height, width, batch), {})


def describe_roots(roots: Sequence[Path]) -> str:
    """The roots as one short line for the UI."""
    return ", ".join(f"`{r}`" for r in roots) or "(none)"

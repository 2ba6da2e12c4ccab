"""One worker: loads the model once, then turns rows into records. The same code runs
in-process, in a local worker process and in a Ray actor, so results are identical."""

from __future__ import annotations

import io
import os
import resource
import socket
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stats import TAU, run_records

MASK_SOURCES = ("file", "generated")


@dataclass
class JobSpec:
    """What every worker needs to know; plain data so it pickles to processes and Ray."""

    model: str = "demo"
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    guidance: float | None = None
    buckets: int = 4
    tau: float = TAU
    keep_traces: bool = False
    mask_source: str = "file"
    known_classes: dict[str, str] = field(default_factory=dict)
    #: seconds a worker may take for one prompt (None: from the model and the steps)
    timeout: float | None = None

    def identity(self) -> dict[str, Any]:
        """The options that change results: a rerun into the same folder must match them."""
        d = asdict(self)
        for k in ("keep_traces", "known_classes", "timeout"):
            d.pop(k)
        return d


def rss_peak_mb() -> float:
    """This process's peak resident memory (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Worker:
    """Holds one pipeline; ``process(task)`` never raises for a failing row: the error is in
    the result (``status == "error"``)."""

    def __init__(self, spec: JobSpec):
        from unetviz.pipelines import load_pipeline

        self.spec = spec
        options = {k: v for k, v in spec.pipeline_options.items() if v is not None}
        self.pipe = load_pipeline(spec.model, **options)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def process(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one row: ``task`` has ``row`` (a PromptRow dict) and ``masks`` (dict or None)."""
        row = task["row"]
        start = time.perf_counter()
        result: dict[str, Any] = {
            "key": row["key"],
            "row": row["index"],
            "status": "ok",
            "error": "",
            "records": {},
            "image": b"",
            "trace": None,
            "words": [],
            "worker": self.name,
            "attempts": task.get("attempt", 1),
        }
        try:
            self._run(row, task.get("masks"), result)
        except Exception as exc:  # a failing prompt is recorded, the job goes on
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.update(
                status="error",
                error=f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
                records={},
                image=b"",
                trace=None,
            )
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mb"] = rss_peak_mb()
        return result

    def _run(self, row: dict[str, Any], masks: dict[str, np.ndarray] | None, out: dict) -> None:
        spec = self.spec
        kwargs: dict[str, Any] = {"negative_prompt": row["negative_prompt"], "seed": row["seed"]}
        steps = row["steps"] if row["steps"] is not None else spec.steps
        guidance = row["guidance"] if row["guidance"] is not None else spec.guidance
        if steps is not None:
            kwargs["steps"] = steps
        if guidance is not None:
            kwargs["guidance"] = guidance
        try:  # daam=True: the capture keeps what preset="daam" (DAAM 0.2.0) needs
            run = self.pipe(row["prompt"], daam=True, **kwargs)
        except TypeError as exc:
            if "daam" not in str(exc):
                raise
            run = self.pipe(row["prompt"], **kwargs)
        image = np.asarray(run.image.convert("RGB"))
        if spec.mask_source == "generated" and masks is not None:
            from .demo_set import generated_masks

            masks = generated_masks(row["prompt"], image)
        _check_mask_shapes(masks, image.shape[:2])
        records = run_records(
            run.trace, masks, spec.buckets, spec.tau, row["classes"], spec.known_classes
        )
        ident = {
            "key": row["key"],
            "row": row["index"],
            "prompt": row["prompt"],
            "seed": row["seed"],
        }
        records = [{**ident, **r} for r in records]
        from .stats import COLUMNS

        out["records"] = {c: [r[c] for r in records] for c in COLUMNS}
        out["words"] = list(dict.fromkeys(r["word"] for r in records))
        buf = io.BytesIO()
        run.image.save(buf, format="PNG")
        out["image"] = buf.getvalue()
        if spec.keep_traces:
            with tempfile.TemporaryDirectory() as tmp:
                path = run.trace.save(Path(tmp) / "run.trace")
                out["trace"] = path.read_bytes()


def failed(task: dict[str, Any], error: str) -> dict[str, Any]:
    """The result of a row that never ran (bad mask file, worker died on every attempt)."""
    row = task["row"]
    return {
        "key": row["key"],
        "row": row["index"],
        "status": "error",
        "error": error,
        "records": {},
        "image": b"",
        "trace": None,
        "words": [],
        "worker": "",
        "attempts": task.get("attempt", 1),
        "seconds": 0.0,
        "peak_rss_mb": None,
    }


def _check_mask_shapes(masks: dict[str, np.ndarray] | None, size: tuple[int, int]) -> None:
    """A mask must have the image's aspect ratio (any resolution): maps are resized to it."""
    for word, m in (masks or {}).items():
        if abs(m.shape[0] / m.shape[1] - size[0] / size[1]) > 0.01:
            raise ValueError(
                f"mask of {word!r} is {m.shape[1]}x{m.shape[0]} (WxH) but the image is "
                f"{size[1]}x{size[0]}: expected the same aspect ratio"
            )

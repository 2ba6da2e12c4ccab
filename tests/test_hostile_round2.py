"""Inputs bounded by what they cost to hold: trace bundles by what their JSON references (and a
byte budget checked before reading), prompt-set masks by their array header, prompts files by a
streamed, row-bounded read, Parquet tables by their metadata. Memory is measured in a child
process (peak RSS growth while the hostile input is refused)."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from tests.conftest import tiny_capture
from unetviz import safetensors_io
from unetviz.capture import Trace, TraceError

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def child_peak(setup: str, action: str) -> tuple[str, int]:
    """Run ``setup`` then ``action`` in a fresh Python; (the action's outcome: "ok" or
    "<Error>: message", bytes the peak RSS grew above the resident size after ``setup``)."""
    code = textwrap.dedent(
        """
        {setup}
        def status(key):
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key))
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset this process's peak RSS (VmHWM) to its current RSS
        base = status("VmRSS:")
        try:
            {action}
            outcome = "ok"
        except Exception as exc:
            outcome = type(exc).__name__ + ": " + str(exc).replace("\\n", " ")
        print(outcome)
        print(max(0, status("VmHWM:") - base))
        """
    ).format(setup=setup, action=action)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) >= 2, out.stdout + out.stderr
    return lines[-2], int(lines[-1])


def _pattern_chunk() -> bytes:
    """1 MiB of mostly zeros that deflates ~50x: under the zip-bomb ratio, like the reported
    bundles (89x)."""
    chunk = bytearray(MiB)
    rng = random.Random(0)
    for i in range(0, MiB, 128):
        chunk[i] = rng.randrange(1, 256)
    return bytes(chunk)


def _bundle(path: Path, state: dict, tensors: dict, extra: dict[str, tuple] | None = None) -> Path:
    """A zip bundle of ``state`` and ``tensors``, plus ``extra`` tensors ``name: (dtype name,
    shape)`` whose (big) data is streamed into the deflated member without being held."""
    blob = st_save(tensors)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    end = len(data)
    for name, (dtype, shape) in (extra or {}).items():
        nbytes = int(np.prod(shape)) * safetensors_io.DTYPES[dtype][0]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [end, end + nbytes]}
        end += nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    chunk = _pattern_chunk()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("trace.json", json.dumps(state))
        with zf.open("tensors.safetensors", "w", force_zip64=True) as fh:
            fh.write(len(head).to_bytes(8, "little") + head + data)
            left = end - len(data)
            while left:
                fh.write(chunk[: min(left, MiB)])
                left -= min(left, MiB)
    return path


@pytest.fixture(scope="module")
def good():
    return tiny_capture(timesteps=(900, 100))


# ---------------------------------------------------------------------------- trace bundles
def test_an_unreferenced_tensor_is_refused_before_it_is_inflated(good, tmp_path):
    """A small bundle carrying one extra 256 MiB tensor no record names (50x compression, under
    the zip-bomb ratio): refused by Trace.load and `unetviz report` without inflating it."""
    state, tensors = good.to_state()
    path = _bundle(tmp_path / "extra.trace", state, tensors, {"junk": ("F32", (64, MiB))})
    assert path.stat().st_size < 16 * MiB
    outcome, grew = child_peak("from unetviz.capture import Trace", f"Trace.load({str(path)!r})")
    assert outcome.startswith("TraceError") and "'junk'" in outcome, outcome
    assert "does not reference" in outcome
    assert grew < 32 * MiB, grew  # the tensor alone is 256 MiB
    out = tmp_path / "r.html"
    done = subprocess.run(
        [sys.executable, "-m", "unetviz.cli", "report", str(path), "-o", str(out)],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "'junk'" in done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists()


def test_a_referenced_tensor_larger_than_its_record_is_refused_before_reading(good, tmp_path):
    """Bytes beyond the referenced shapes: a record's stacked maps declared at 256x256 px and
    308 tokens (161 MiB) where the record's res says far fewer is refused on the header alone."""
    state, tensors = good.to_state()
    name, rec = next((n, r) for n, r in state["attention"].items() if isinstance(r["maps"], str))
    steps = tensors.pop(rec["maps"]).shape[0]
    big = {rec["maps"]: ("F32", (steps, 1, 256, 256, 308))}
    path = _bundle(tmp_path / "wide.trace", state, tensors, big)
    outcome, grew = child_peak("from unetviz.capture import Trace", f"Trace.load({str(path)!r})")
    assert outcome.startswith("TraceError") and f"{name}.maps" in outcome, outcome
    assert grew < 32 * MiB, grew


def test_max_bytes_is_checked_before_reading_at_the_limit_and_one_past(good, tmp_path):
    state, tensors = good.to_state()
    need = sum(t.numel() * t.element_size() for t in tensors.values())
    for folder in (False, True):
        path = good.save(tmp_path / f"ok{folder}.trace", folder=folder)
        loaded = Trace.load(path, max_bytes=need)
        assert loaded.nbytes() <= need and torch.equal(loaded.heatmap(3), good.heatmap(3))
        with pytest.raises(TraceError, match=f"take {need:,} bytes .* at most {need - 1:,}"):
            Trace.load(path, max_bytes=need - 1)


def test_the_app_upload_caps_a_bundle_at_the_session_budget_before_reading(good, tmp_path):
    """views.load_bundle(max_bytes=) (the upload handler passes the session store's budget):
    a bundle whose referenced maps need 256 MiB is refused with a budget of 64 MiB, measured."""
    from unetviz.capture import AttentionRecord

    trace = Trace()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    rec = AttentionRecord(name, "down_blocks.0", "down", (256, 256), 1, sum=torch.zeros(1, 1, 1, 1), count=1)  # fmt: skip
    trace.attention[name] = rec
    state, tensors = trace.to_state()
    state["attention"][name]["res"] = [512, 512]
    tensors = {}
    path = _bundle(tmp_path / "b.zip", state, tensors, {f"attention/{name}/sum": ("F32", (1, 512, 512, 256))})  # fmt: skip
    setup = "from unetviz.app import views; from unetviz.capture import Trace"
    outcome, grew = child_peak(setup, f"views.load_bundle({str(path)!r}, max_bytes={64 * MiB})")
    assert outcome.startswith("TraceError") and "at most 67,108,864 bytes" in outcome, outcome
    assert grew < 32 * MiB, grew
    assert (
        "load_bundle(path, max_bytes=self.sessions.max_bytes)"
        in (ROOT / "unetviz" / "app" / "handlers.py").read_text()
    )


def test_a_trace_folder_does_not_follow_a_symlink_outside(good, tmp_path):
    folder = good.save(tmp_path / "t", folder=True)
    outside = tmp_path / "elsewhere.json"
    (folder / "trace.json").rename(outside)
    (folder / "trace.json").symlink_to(outside)
    with pytest.raises(TraceError, match="leads outside the trace folder"):
        Trace.load(folder)
    (folder / "trace.json").unlink()
    (folder / "trace.json").symlink_to("/etc/passwd")
    with pytest.raises(TraceError, match="leads outside the trace folder"):
        Trace.load(folder)


# ---------------------------------------------------------------------------- safetensors_io
def _st(header: dict, data: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + data


def test_header_checks_declared_against_actual_bytes():
    ok = _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    entries, _ = safetensors_io.read_header(io.BytesIO(ok), len(ok))
    assert [(e.name, e.shape, e.nbytes) for e in entries] == [("a", (2,), 8)]
    for header, data, message in [
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "8 bytes declared"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 9, "data is 9 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "starts at data byte 4"),
        ({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, 1, "unsupported dtype"),
        ({"a": {"dtype": "U8", "shape": [1] * 9, "data_offsets": [0, 1]}}, 1, "bad shape"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
    ]:
        blob = _st(header, b"\0" * data)
        with pytest.raises(safetensors_io.SafetensorsFormatError, match=message):
            safetensors_io.read_header(io.BytesIO(blob), len(blob))
    blob = _st({}, b"")
    with pytest.raises(ValueError, match="at most 1 allowed"):
        safetensors_io.read_header(io.BytesIO(blob), len(blob), max_header=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.dictionaries(
        st.text(max_size=4),
        st.tuples(
            st.sampled_from([*safetensors_io.DTYPES, "F4", "x"]),
            st.lists(st.integers(0, 2**40), max_size=4),
            st.integers(-4, 2**40),
        ),
        max_size=4,
    ),
    tail=st.integers(0, 64),
)
def test_arbitrary_headers_raise_format_errors_within_a_memory_bound(entries, tail):
    """Any header (huge shapes, lying offsets): read_header allocates nothing from it and
    raises only SafetensorsFormatError / EOFError."""
    import tracemalloc

    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += max(nbytes, 0)
    blob = _st(header, b"\0" * tail)
    tracemalloc.start()
    try:
        try:
            got, _ = safetensors_io.read_header(io.BytesIO(blob), len(blob))
            assert sum(e.nbytes for e in got) == tail
        except (safetensors_io.SafetensorsFormatError, EOFError):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB

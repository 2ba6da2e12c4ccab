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
@pytest.mark.slow
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
    calls = [  # every upload path of the app passes the session store's budget
        line.strip()
        for f in (ROOT / "unetviz" / "app").glob("*.py")
        for line in f.read_text().splitlines()
        if "load_bundle(" in line and "def load_bundle" not in line
    ]
    assert calls and all("max_bytes=self.sessions.max_bytes" in c for c in calls), calls


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


# ---------------------------------------------------------------------------- prompt-set masks
def _npz_with(path: Path, word: str, shape: tuple, dtype: str = "|b1", fill: int = 0) -> Path:
    """An .npz whose one array (``word``) is written in 1 MiB chunks: never held here."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{word}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            chunk = bytes([fill]) * MiB
            while nbytes:
                fh.write(chunk[: min(nbytes, MiB)])
                nbytes -= min(nbytes, MiB)
    return path


@pytest.mark.slow
def test_a_huge_mask_is_refused_from_its_header_before_its_data(tmp_path):
    """A small .npz holding one 10000 x 10000 bool array (95 MiB inflated): refused from the
    .npy header, nothing inflated (the old reader inflated it before looking at the shape)."""
    path = _npz_with(tmp_path / "big.npz", "cat", (10000, 10000))
    assert path.stat().st_size < 2 * MiB
    outcome, grew = child_peak(
        "from unetviz.batch.rows import load_masks", f"load_masks({str(tmp_path)!r}, 'big.npz')"
    )
    assert outcome.startswith("BatchError") and "(10000, 10000)" in outcome, outcome
    assert grew < 32 * MiB, grew


def test_mask_limits_at_the_limit_and_one_past(tmp_path, monkeypatch):
    from unetviz.batch import rows
    from unetviz.batch.rows import BatchError, load_masks

    side = rows.MAX_MASK_SIDE
    _npz_with(tmp_path / "edge.npz", "cat", (side, 3), fill=1)
    assert load_masks(tmp_path, "edge.npz")["cat"].shape == (side, 3)
    _npz_with(tmp_path / "past.npz", "cat", (side + 1, 3))
    with pytest.raises(BatchError, match=f"sides 1..{side}"):
        load_masks(tmp_path, "past.npz")
    many = {f"w{i}": np.ones((1, 1), bool) for i in range(rows.MAX_MASKS)}
    np.savez(tmp_path / "many.npz", **many)
    assert len(load_masks(tmp_path, "many.npz")) == rows.MAX_MASKS
    np.savez(tmp_path / "more.npz", **many, extra=np.ones((1, 1), bool))
    with pytest.raises(BatchError, match=f"at most {rows.MAX_MASKS}"):
        load_masks(tmp_path, "more.npz")
    # the total: two 8x8 float64 masks are 1,024 bytes once read
    np.savez(tmp_path / "two.npz", a=np.ones((8, 8)), b=np.zeros((8, 8)))
    monkeypatch.setattr(rows, "MAX_MASK_TOTAL_BYTES", 1024)
    assert set(load_masks(tmp_path, "two.npz")) == {"a", "b"}
    monkeypatch.setattr(rows, "MAX_MASK_TOTAL_BYTES", 1023)
    with pytest.raises(BatchError, match="take over 1,023 bytes"):
        load_masks(tmp_path, "two.npz")


def test_npz_data_must_match_its_header(tmp_path):
    from unetviz.batch.rows import BatchError, load_masks

    for name, extra in (("short.npz", -1), ("long.npz", 1)):
        header = {"descr": "|b1", "fortran_order": False, "shape": (4, 4)}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("cat.npy", buf.getvalue() + b"\1" * (16 + extra))
        with pytest.raises(BatchError, match="header says 16 bytes"):
            load_masks(tmp_path, name)
    np.savez(tmp_path / "f.npz", cat=np.asfortranarray(np.eye(3, 5, dtype=np.uint8)))
    assert np.array_equal(load_masks(tmp_path, "f.npz")["cat"], np.eye(3, 5, dtype=bool))


_npy_header = st.fixed_dictionaries(
    {
        "descr": st.sampled_from(["|b1", "<f8", "<i4", "|u1", "<c8", "|O", "<U3", "|V4"]),
        "fortran_order": st.booleans(),
        "shape": st.lists(st.integers(0, 2**40), max_size=3).map(tuple),
    }
)


@settings(max_examples=40, deadline=None)
@given(header=_npy_header, data=st.binary(max_size=64), raw=st.binary(max_size=80), use_raw=st.booleans())  # fmt: skip
def test_arbitrary_npy_members_raise_batch_errors_within_a_memory_bound(
    tmp_path_factory, header, data, raw, use_raw
):
    """Any .npy header (huge shapes, object or odd dtypes) or any bytes as a member: a mask
    or a BatchError, and Python allocates under 1 MiB deciding."""
    import tracemalloc

    from unetviz.batch.rows import BatchError, load_masks

    folder = tmp_path_factory.mktemp("npy")
    buf = io.BytesIO()
    if not use_raw:
        np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(folder / "m.npz", "w") as zf:
        zf.writestr("w.npy", (raw if use_raw else buf.getvalue()) + data)
    tracemalloc.start()
    try:
        try:
            got = load_masks(folder, "m.npz")
            assert got["w"].dtype == bool and got["w"].ndim == 2
        except BatchError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB


# ---------------------------------------------------------------------------- prompts files
@pytest.mark.slow
def test_prompts_are_bounded_in_rows_at_the_limit_and_one_past(tmp_path):
    """MAX_ROWS rows load (memory measured: the bound's cost); one more is refused while
    reading, before the rest of the file is looked at."""
    from unetviz.batch.rows import MAX_ROWS

    line = b'{"prompt": "a red circle"}\n'
    (tmp_path / "at.jsonl").write_bytes(line * MAX_ROWS)
    (tmp_path / "past.jsonl").write_bytes(line * (MAX_ROWS + 1) + b"\n" * 1000)
    setup = "from unetviz.batch.rows import read_prompts"
    outcome, grew = child_peak(setup, f"assert len(read_prompts({str(tmp_path / 'at.jsonl')!r})) == {MAX_ROWS}")  # fmt: skip
    assert outcome == "ok", outcome
    assert grew < 160 * MiB, grew  # the stated cost: ~350 bytes a row, ~70 MB at the bound
    outcome, _ = child_peak(setup, f"read_prompts({str(tmp_path / 'past.jsonl')!r})")
    assert outcome.startswith("BatchError") and f"more than {MAX_ROWS:,} prompts" in outcome
    assert f"(line {MAX_ROWS + 1})" in outcome


def test_prompt_lines_at_the_length_limit_and_one_past_and_nested_json(tmp_path):
    from unetviz.batch.rows import MAX_LINE_CHARS, BatchError, read_prompts

    head, tail = '{"prompt": "a red circle"', "}"
    at = head + " " * (MAX_LINE_CHARS - len(head) - len(tail)) + tail
    (tmp_path / "at.jsonl").write_text(at + "\n" + at + " \n" + "é" * (MAX_LINE_CHARS + 1) + "\n")
    with pytest.raises(BatchError) as err:
        read_prompts(tmp_path / "at.jsonl")
    text = str(err.value)
    assert text.startswith("2 bad row(s)") and "line 1" not in text
    assert "at.jsonl line 2: line is longer than 65,536 characters" in text and "line 3" in text
    (tmp_path / "ok.jsonl").write_text(at + "\n")
    assert read_prompts(tmp_path / "ok.jsonl")[0].prompt == "a red circle"
    (tmp_path / "deep.jsonl").write_text('{"prompt": "a"}\n' + "[" * 60_000 + "\n")
    with pytest.raises(BatchError, match="line 2: JSON nested too deeply"):
        read_prompts(tmp_path / "deep.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(BatchError, match=r"not UTF-8 text \(line 2"):
        read_prompts(tmp_path / "bin.jsonl")


_rows = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"prompt": st.text(min_size=0, max_size=12)},
            optional={
                "seed": st.integers(-2, 2**64) | st.floats() | st.text(max_size=3),
                "steps": st.integers(-1, 2000) | st.none(),
                "guidance": st.floats(allow_nan=True) | st.integers(-1, 200),
                "classes": st.dictionaries(st.text(max_size=3), st.text(max_size=50)) | st.lists(st.integers()),
                "masks": st.text(max_size=8),
                "negative_prompt": st.text(max_size=8) | st.integers(),
                "x": st.integers(),
            },
        ).map(json.dumps),
        st.text(max_size=30),
        st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
    ),
    max_size=12,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(lines=_rows, crlf=st.booleans())
def test_arbitrary_prompt_streams_give_rows_or_one_batch_error(tmp_path_factory, lines, crlf):
    """Any lines (JSON rows with hostile fields, text, bytes): a list of rows or one
    BatchError, never another exception."""
    from unetviz.batch.rows import BatchError, read_prompts

    f = tmp_path_factory.mktemp("p") / "p.jsonl"
    f.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8", "surrogatepass"))
    try:
        rows = read_prompts(f)
        assert rows and all(r.prompt.strip() for r in rows)
    except BatchError:
        pass


# ---------------------------------------------------------------------------- Parquet tables
@pytest.mark.slow
def test_a_parquet_bomb_is_refused_from_its_metadata(tmp_path):
    """A ~1 MB table.parquet of 60 M zeros (480 MB decoded) is refused from its metadata in a
    child process that grows by under 32 MiB; the Dataset view names the file and the bound."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from unetviz.batch.dataset import MAX_TABLE_ROWS

    zeros = pa.table({"iou": pa.array(np.zeros(10_000_000))})
    with pq.ParquetWriter(tmp_path / "table.parquet", zeros.schema, compression="zstd") as w:
        for _ in range(6):
            w.write_table(zeros)
    assert (tmp_path / "table.parquet").stat().st_size < 4 * MiB
    setup = "from pathlib import Path; import pyarrow.parquet; from unetviz.batch.dataset import read_table"
    action = f"read_table(Path({str(tmp_path / 'table.parquet')!r}), {MAX_TABLE_ROWS})"
    outcome, grew = child_peak(setup, action)
    assert outcome.startswith("BatchError") and "declares 60,000,000 rows" in outcome, outcome
    assert grew < 32 * MiB, grew


def test_parquet_bounds_at_the_limit_and_one_past(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from unetviz.batch.dataset import read_table
    from unetviz.batch.rows import BatchError

    t = pa.table({"a": pa.array(np.arange(1000, dtype=np.int64)), "s": ["x"] * 1000})
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=300)
    assert read_table(tmp_path / "t.parquet", 1000).equals(t)
    with pytest.raises(BatchError, match="declares 1,000 rows: a viewer reads at most 999"):
        read_table(tmp_path / "t.parquet", 999)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    declared = sum(
        meta.row_group(i).column(j).total_uncompressed_size
        for i in range(meta.num_row_groups)
        for j in range(meta.num_columns)
    )
    assert read_table(tmp_path / "t.parquet", 1000, max_bytes=declared).num_rows == 1000
    with pytest.raises(BatchError, match=f"declares {declared:,} bytes"):
        read_table(tmp_path / "t.parquet", 1000, max_bytes=declared - 1)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 2000), flip=st.integers(0, 2000), byte=st.integers(0, 255))
def test_damaged_parquet_gives_a_table_or_a_batch_error(tmp_path_factory, cut, flip, byte):
    """A real table.parquet cut short or with one byte changed (footer and metadata included):
    read_table returns a bounded table or a BatchError naming the file."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from unetviz.batch.dataset import read_table
    from unetviz.batch.rows import BatchError

    folder = tmp_path_factory.mktemp("pq")
    t = pa.table({"a": pa.array(np.arange(200, dtype=np.int64)), "s": ["word"] * 200})
    buf = io.BytesIO()
    pq.write_table(t, buf, row_group_size=64)
    data = bytearray(buf.getvalue())
    data = data[: max(0, len(data) - cut)] if cut % 3 == 0 else data
    if data:
        data[flip % len(data)] = byte
    (folder / "t.parquet").write_bytes(bytes(data))
    try:
        got = read_table(folder / "t.parquet", 200, max_bytes=64 * 1024)
        assert got.num_rows <= 200
    except BatchError:
        pass


def test_parquet_row_and_footer_bounds_at_their_stated_values(tmp_path):
    """MAX_TABLE_ROWS rows (one int8 column) are read; one more row is refused from the
    metadata; a footer longer than MAX_FOOTER_BYTES is refused before pyarrow parses it."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from unetviz.batch.dataset import MAX_FOOTER_BYTES, MAX_TABLE_ROWS, read_table
    from unetviz.batch.rows import BatchError

    for n in (MAX_TABLE_ROWS, MAX_TABLE_ROWS + 1):
        t = pa.table({"b": pa.array(np.zeros(n, np.int8))})
        pq.write_table(t, tmp_path / f"{n}.parquet", compression="zstd")
    assert read_table(tmp_path / f"{MAX_TABLE_ROWS}.parquet", MAX_TABLE_ROWS).num_rows == MAX_TABLE_ROWS  # fmt: skip
    with pytest.raises(BatchError, match=f"declares {MAX_TABLE_ROWS + 1:,} rows"):
        read_table(tmp_path / f"{MAX_TABLE_ROWS + 1}.parquet", MAX_TABLE_ROWS)
    for length, ok in ((MAX_FOOTER_BYTES, True), (MAX_FOOTER_BYTES + 1, False)):
        fake = tmp_path / f"f{length}.parquet"
        fake.write_bytes(b"PAR1" + b"\0" * 64 + length.to_bytes(4, "little") + b"PAR1")
        with pytest.raises(BatchError) as err:
            read_table(fake, 10)
        # at the limit pyarrow reads the footer length and finds the file too short for it
        assert (f"footer of at most {MAX_FOOTER_BYTES:,} bytes" in str(err.value)) is not ok


def test_names_from_a_file_with_non_ascii_digits_sort_without_error():
    """A trace's layer names come from the file: "²" passes ``str.isdigit`` but not ``int``."""
    from unetviz import names

    hostile = ["down_blocks.².attentions.0", "up_blocks.1.attentions.٣", "down_blocks.0"]
    assert names.forward_key("down_blocks.².attentions.0") == (1, [0])
    assert not names.is_block("down_blocks.²") and names.is_block("down_blocks.1")
    assert sorted(names.layer_order(hostile)) == sorted(hostile)


def test_an_uploaded_bundles_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A few kB of PNG can declare 6000x6000 px (108 MB decoded): the app reads the declared size
    from the header and never decodes it; the trace itself still loads."""
    from PIL import Image

    from unetviz.app import views

    path = tiny_capture().save(tmp_path / "t.zip")
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 16 * 2**20
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(views.IMAGE_NAME, buf.getvalue())
    decoded = []
    convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda im, *a, **k: decoded.append(im.size) or convert(im, *a, **k))  # fmt: skip
    session = views.load_bundle(path)
    assert session.image is None and session.trace is not None
    assert decoded == [], "the image was decoded before its size was checked"

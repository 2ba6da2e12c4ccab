"""Trace bundles from outside are hostile until measured (issue 10, items 2 and 3): zip bombs are
refused before inflating, tensors are streamed, and the structure is checked against its own
tensors and sane limits; arbitrary JSON raises nothing but ``TraceError`` within a memory bound.
"""

from __future__ import annotations

import json
import tracemalloc
import zipfile
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from tests.conftest import tiny_capture
from unetviz.capture import Trace, TraceError, bundle
from unetviz.errors import UnetvizError


@pytest.fixture(scope="module")
def good():
    return tiny_capture(timesteps=(900, 100))


def _write(path, state, tensors_blob: bytes, compress_tensors=False):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trace.json", json.dumps(state), compress_type=zipfile.ZIP_DEFLATED)
        kind = zipfile.ZIP_DEFLATED if compress_tensors else zipfile.ZIP_STORED
        zf.writestr("tensors.safetensors", tensors_blob, compress_type=kind)
    return path


def test_zip_bomb_is_refused_before_inflating(good, tmp_path):
    state, tensors = good.to_state()
    blob = st_save(tensors) + b"\0" * (24 * 1024**2)  # inflates ~1000x
    bomb = _write(tmp_path / "bomb.trace", state, blob, compress_tensors=True)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(TraceError, match="zip bomb"):
            Trace.load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024**2  # nothing was inflated


def test_declared_sizes_are_capped(good, tmp_path, monkeypatch):
    path = good.save(tmp_path / "ok.trace")
    monkeypatch.setattr(bundle, "MAX_TENSOR_BYTES", 1000)
    with pytest.raises(TraceError, match=r"tensors.safetensors is \d+ bytes; .* at most 1000"):
        Trace.load(path)
    monkeypatch.setattr(bundle, "MAX_JSON_BYTES", 100)
    with pytest.raises(TraceError, match="trace.json is"):
        Trace.load(good.save(tmp_path / "folder", folder=True))


def test_tensors_are_streamed_not_copied(tmp_path):
    """The old loader read the 32 MiB blob into a bytes object (and safetensors copied it):
    streaming keeps Python-side allocations to a 1 MiB chunk or two."""
    from unetviz.capture import AttentionRecord

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    trace = Trace()
    big = torch.rand(1, 256, 256, 128)  # 32 MiB float32: a streamed map sum
    trace.attention[name] = AttentionRecord(name, "down_blocks.0", "down", (256, 256), 1, sum=big, count=1)  # fmt: skip
    path = trace.save(tmp_path / "big.trace")
    tracemalloc.start()
    try:
        loaded = Trace.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(loaded.attention[name].sum, big)
    assert peak < 8 * 1024**2, peak  # the whole blob as bytes would be 32 MiB


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("meta", "latent"), [20000, 20000], "meta.latent=20000"),
        (("meta", "config", "block_out_channels"), [10**7], "block_out_channels=10000000"),
        (("tokens",), ["t"] * 100_000, "tokens: 100000 entries"),
        (("attention", 0, "heads"), 5000, "heads=5000"),
        (("attention", 0, "res"), [5000, 5000], "res=5000"),
        (("attention", 0, "res"), [4, 4], r"expected \[1, 4, 4, 8\]"),
        (("attention", 0, "maps"), "temb_vectors/down_blocks.0.resnets.0", "rank 1"),
        (("words",), ["a"], "one per token"),
        (("temb", 0, "vector"), "attention/nope", "lacks"),
    ],
)
def test_trusted_json_is_checked_before_use(good, tmp_path, where, value, message):
    state, tensors = good.to_state()
    state["tokens"], state["words"] = ["t"] * 8, [None] * 8
    target = state
    for key in where[:-1]:
        target = target[list(target)[key]] if isinstance(target, dict) and isinstance(key, int) else target[key]  # fmt: skip
    last = where[-1]
    if isinstance(last, int) and isinstance(target, dict):
        last = list(target)[last]
    target[last] = value
    path = _write(tmp_path / "bad.trace", state, st_save(tensors))
    with pytest.raises(TraceError, match=message):
        Trace.load(path)


def test_wrong_rank_and_shape_tensors_are_trace_errors(good, tmp_path):
    state, tensors = good.to_state()
    name = next(k for k in tensors if k.endswith("/maps"))
    tensors[name] = tensors[name][0]  # drop the steps axis
    path = _write(tmp_path / "rank.trace", state, st_save(tensors))
    with pytest.raises(TraceError, match="rank 4, expected 5"):
        Trace.load(path)
    state, tensors = good.to_state()
    tensors[name] = tensors[name][..., :3].contiguous()  # fewer tokens than another layer
    path = _write(tmp_path / "tokens.trace", state, st_save(tensors))
    with pytest.raises(TraceError, match="disagree on the number of tokens"):
        Trace.load(path)


def test_a_valid_bundle_still_round_trips(good, tmp_path):
    loaded = Trace.load(good.save(tmp_path / "ok.trace"))
    assert torch.equal(loaded.heatmap(3), good.heatmap(3))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),  # fmt: skip
    max_leaves=40,
)
_FIELDS = ["meta", "tokens", "words", "timesteps", "blocks", "skips", "temb", "temb_sources",
           "temb_vectors", "attention", "self_attention"]  # fmt: skip


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    top=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=11),
    raw=_json,
    use_raw=st.booleans(),
)
def test_arbitrary_json_raises_only_trace_errors_within_a_memory_bound(good, top, raw, use_raw):
    """Any JSON as the structure (either a raw value or a trace-shaped object with arbitrary
    fields over a real trace's tensors): from_state raises nothing but TraceError, and Python
    allocates under 2 MiB while checking (the limits keep any declared size from allocating)."""
    state, tensors = good.to_state()
    candidate = raw if use_raw else (state | top)
    tracemalloc.start()
    try:
        try:
            Trace.from_state(candidate, tensors)
        except TraceError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024**2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(top=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=11), marked=st.booleans())
def test_arbitrary_trace_json_in_a_bundle_loads_or_raises_trace_error(good, tmp_path, top, marked):
    """The same through ``Trace.load``: a zip bundle whose trace.json is arbitrary (with or
    without the format marker) over a real trace's tensors."""
    state, tensors = good.to_state()
    candidate = (state | top) if marked else top
    path = _write(tmp_path / "h.trace", candidate, st_save(tensors))
    try:
        Trace.load(path)
    except TraceError:
        pass


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=300), declared=st.integers(0, 400))
def test_arbitrary_safetensors_bytes_raise_only_value_errors(data, declared):
    """The streaming reader on hostile bytes: a ValueError/EOFError (Trace.load turns them into
    TraceError), never a huge allocation (its offsets must tile the declared size)."""
    import io

    header = zlib.crc32(data).to_bytes(4, "little")  # vary the length prefix
    blob = header + data
    try:
        bundle.read_safetensors(io.BytesIO(blob), min(declared, len(blob)))
    except (ValueError, EOFError, UnicodeDecodeError):
        pass


def test_project_errors_only(tmp_path):
    """The error a user sees for a hostile bundle is the project's base error."""
    path = tmp_path / "x.trace"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trace.json", json.dumps({"format": "unetviz-trace", "version": 1, "meta": 3}))
        zf.writestr("tensors.safetensors", b"")
    with pytest.raises(UnetvizError):
        Trace.load(path)

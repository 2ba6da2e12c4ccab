"""Trace indexing, save/load round trips (zip and folder) and clear errors on bad files."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from unetviz import Trace, UNet2DConditionModel, UNetConfig, capture
from unetviz.capture import AttentionRecord, BlockRecord, TraceError

CFG = {
    "sample_size": 64,  # x 8 = 512 (run at 16x16): DAAM's 64x64 grid, its 16x16 maps kept
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}


@pytest.fixture(scope="module")
def traces():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(CFG)).eval()
    x, ehs = torch.randn(2, 4, 16, 16), torch.randn(2, 6, 32)
    out = {}
    with torch.no_grad():
        for mode in ("steps", "stream"):
            with capture(
                unet,
                mode=mode,
                per_head=mode == "steps",
                daam=True,
                self_attention_layers=["up_blocks.1"],
                self_attention_points=[(0.25, 0.5)],
                meta={"prompt": "a red cat", "seed": 3},
            ) as trace:
                for t in (800, 400):
                    unet(x, t, ehs)
            trace.tokens = ["<bos>", "a", "red", "ca", "t</w>", "<eos>"]
            trace.words = [None, "a", "red", "cat", "cat", None]
            out[mode] = trace
    return out


def _assert_same(a: Trace, b: Trace) -> None:
    sa, ta = a.to_state()
    sb, tb = b.to_state()
    assert sa == sb
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def test_indexing_like_a_cache(traces):
    trace = traces["steps"]
    rec = trace["down_blocks.0.attentions.0"]
    assert isinstance(rec, BlockRecord) and rec.type == "Transformer2DModel"
    assert rec.level == "layer" and rec.parent == "down_blocks.0" and rec.calls == 2
    attn = trace["up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    assert isinstance(attn, AttentionRecord) and attn.per_head and len(attn.maps) == 2
    assert "mid_block" in trace and "nope" not in trace
    with pytest.raises(KeyError, match="did you mean 'mid_block'"):
        trace["mid_blok"]
    assert trace.steps == 2 and trace.meta["prompt"] == "a red cat"
    assert trace.meta["latent"] == [16, 16] and trace.meta["cfg"] is True
    assert trace.token_indices("cat") == [3, 4] and trace.token_indices(-1) == [5]
    assert "Trace(" in repr(trace)


@pytest.mark.parametrize("mode", ["steps", "stream"])
@pytest.mark.parametrize("folder", [False, True])
def test_save_load_round_trip(traces, tmp_path, mode, folder):
    trace = traces[mode]
    path = trace.save(tmp_path / "run.trace", folder=folder)
    assert path.is_dir() == folder
    loaded = Trace.load(path)
    _assert_same(trace, loaded)
    for token in ("cat", 2):
        assert torch.equal(trace.heatmap(token), loaded.heatmap(token))
        for preset in ("daam", "daam-approx", "p2p"):
            assert torch.equal(
                trace.heatmap(token, preset=preset), loaded.heatmap(token, preset=preset)
            )
    assert loaded.skips == trace.skips
    if mode == "steps":
        assert loaded.temb[3].vector.dtype == torch.float32
    else:  # streaming keeps no per-step vectors: memory independent of the step count
        assert all(r.vector is None for r in loaded.temb)
    block = loaded.temb[3].block
    assert loaded.temb_vectors.keys() == trace.temb_vectors.keys() and block in loaded.temb_vectors
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    # saving again over the same path replaces it
    trace.save(path, folder=folder)
    _assert_same(trace, Trace.load(path))


def test_meta_trace_round_trip(tmp_path):
    with torch.device("meta"):
        unet = UNet2DConditionModel(UNetConfig.from_dict(CFG))
    with capture(unet, detail="modules") as trace:
        unet(torch.zeros(2, 4, 16, 16, device="meta"), 1, torch.zeros(2, 6, 32, device="meta"))
    loaded = Trace.load(trace.save(tmp_path / "meta.trace"))
    _assert_same(trace, loaded)
    assert loaded.timesteps == [1.0] and len(loaded.skips) == 4
    with pytest.raises(TraceError, match="no cross-attention maps"):
        loaded.heatmap(0)


def test_corrupt_and_foreign_files_name_the_file(traces, tmp_path):
    good = traces["steps"].save(tmp_path / "good.trace")

    missing = tmp_path / "missing.trace"
    with pytest.raises(TraceError, match="not found.*missing.trace"):
        Trace.load(missing)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(TraceError, match="notes.txt is not a unetviz trace"):
        Trace.load(text)

    truncated = tmp_path / "truncated.trace"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TraceError, match="truncated.trace"):
        Trace.load(truncated)

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("model.json", "{}")
    with pytest.raises(TraceError, match="foreign.zip is a zip file but not a unetviz trace"):
        Trace.load(foreign)

    other = tmp_path / "other.trace"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("trace.json", json.dumps({"format": "something-else"}))
        zf.writestr("tensors.safetensors", b"")
    with pytest.raises(TraceError, match="other.trace is not a unetviz trace"):
        Trace.load(other)

    # structure fine, tensors corrupted
    bad_tensors = tmp_path / "bad_tensors.trace"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad_tensors, "w") as dst:
        dst.writestr("trace.json", src.read("trace.json"))
        dst.writestr("tensors.safetensors", b"\x00" * 64)
    with pytest.raises(TraceError, match="bad_tensors.trace is a corrupt unetviz trace"):
        Trace.load(bad_tensors)

    # a tensor key the JSON names is missing
    state = json.loads(zipfile.ZipFile(good).read("trace.json"))
    state["temb"][0]["vector"] = "temb/missing"
    broken = tmp_path / "broken.trace"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        dst.writestr("trace.json", json.dumps(state))
        dst.writestr("tensors.safetensors", src.read("tensors.safetensors"))
    with pytest.raises(TraceError, match="broken.trace is a corrupt unetviz trace.*temb/missing"):
        Trace.load(broken)

    future = tmp_path / "future.trace"
    state["version"] = 99
    with zipfile.ZipFile(future, "w") as zf:
        zf.writestr("trace.json", json.dumps(state))
        zf.writestr("tensors.safetensors", b"")
    with pytest.raises(TraceError, match="future.trace is a unetviz trace of version 99"):
        Trace.load(future)

    folder = tmp_path / "emptydir"
    folder.mkdir()
    with pytest.raises(TraceError, match="emptydir is a folder without trace.json"):
        Trace.load(folder)

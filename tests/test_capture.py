"""Capture on real (small) UNets: unetviz's and diffusers'. Hooks leave no trace on the model,
outputs stay bit-identical, threads never mix, and attention maps equal an independent
explicit-softmax reference (diffusers' own ``get_attention_scores``)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import SMALL
from unetviz import UNet2DConditionModel, UNetConfig, capture
from unetviz.capture import MemoryBudgetError, TraceError

diffusers = pytest.importorskip("diffusers")

TOKENS = ["<bos>", "a", "red", "cat</w>", "on", "a", "mat</w>", "<eos>"]
WORDS = [None, "a", "red", "cat", "on", "a", "mat", None]
TIMESTEPS = (900, 500, 100)


@pytest.fixture(scope="module")
def dunet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**SMALL).eval()


@pytest.fixture(scope="module")
def ounet():
    torch.manual_seed(0)
    cfg = UNetConfig.from_dict(
        {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}
    )
    return UNet2DConditionModel(cfg).eval()


def _inputs(seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 8, 32, generator=g)


def _run(unet, x, ehs, timesteps=TIMESTEPS):
    outs = []
    with torch.no_grad():
        for t in timesteps:
            out = unet(x, t, ehs)
            outs.append(out if isinstance(out, torch.Tensor) else out.sample)
    return outs


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        + len(getattr(m, "_forward_pre_hooks_with_kwargs", {}))
        + len(getattr(m, "_forward_hooks_always_called", {}))
        for m in model.modules()
    )


# ---------------------------------------------------------------------------------- model safety
@pytest.mark.parametrize("which", ["ounet", "dunet"])
def test_no_hooks_left_outputs_bit_identical_state_unchanged(which, request):
    unet = request.getfixturevalue(which)
    x, ehs = _inputs()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    plain = _run(unet, x, ehs, (900, 100))
    assert _hook_count(unet) == 0
    with capture(
        unet,
        detail="modules",
        per_head=True,
        self_attention_layers=["down_blocks.0"],
        self_attention_points=[(0.5, 0.5)],
    ) as trace:
        assert _hook_count(unet) > 0
        hooked = _run(unet, x, ehs, (900, 100))
    assert _hook_count(unet) == 0
    for a, b in zip(plain, hooked, strict=True):
        assert torch.equal(a, b)
    after = unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trace.steps == 2 and trace.timesteps == [900.0, 100.0]
    assert len(trace.skips) == 4


def test_hooks_removed_after_exception(ounet):
    x, ehs = _inputs()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(ounet) as trace:
            _run(ounet, x, ehs, timesteps=(10,))
            raise RuntimeError("boom")
    assert _hook_count(ounet) == 0
    assert trace.steps == 1
    # an exception inside the forward (bad input) also leaves nothing behind
    with pytest.raises(ValueError):
        with capture(ounet):
            ounet(x, 10, ehs[:, :, :16])
    assert _hook_count(ounet) == 0
    with capture(ounet) as again:  # and the model can be captured again
        _run(ounet, x, ehs, timesteps=(10,))
    assert again.steps == 1


def test_nested_capture_of_one_model_is_refused(ounet):
    cap = capture(ounet)
    with cap:
        with pytest.raises(TraceError, match="already being captured"):
            with capture(ounet):
                pass
    assert _hook_count(ounet) == 0
    with pytest.raises(TraceError, match="entered once"):
        with cap:
            pass


# ---------------------------------------------------------------------------------- threads
def _fingerprint(trace):
    return (
        trace.timesteps,
        [(r.block, r.step, r.temb_rms, r.feature_rms) for r in trace.temb],
        {n: [m.clone() for m in r.maps] for n, r in trace.attention.items()},
        [(b.name, b.calls, b.inputs, b.outputs) for b in trace.blocks],
    )


def test_two_threads_capturing_one_model_do_not_mix(ounet):
    jobs = {0: (_inputs(1), (900, 700, 500)), 1: (_inputs(2), (300, 100))}
    sequential = {}
    for k, ((x, ehs), ts) in jobs.items():
        with capture(ounet) as trace:
            _run(ounet, x, ehs, ts)
        sequential[k] = _fingerprint(trace)

    results, errors = {}, []
    barrier = threading.Barrier(2)

    def work(k):
        try:
            (x, ehs), ts = jobs[k]
            barrier.wait()
            with capture(ounet) as trace:
                _run(ounet, x, ehs, ts)
            results[k] = _fingerprint(trace)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for k in jobs:
        seq, par = sequential[k], results[k]
        assert seq[0] == par[0] and seq[1] == par[1] and seq[3] == par[3]
        for name in seq[2]:
            assert all(torch.equal(a, b) for a, b in zip(seq[2][name], par[2][name], strict=True))
    assert _hook_count(ounet) == 0


def test_plain_forward_in_another_thread_is_not_recorded(ounet):
    x, ehs = _inputs()
    with capture(ounet) as trace:
        _run(ounet, x, ehs, timesteps=(10,))
        other = threading.Thread(target=_run, args=(ounet, x, ehs, (20, 30)))
        other.start()
        other.join(60)
    assert trace.timesteps == [10.0]
    assert all(len(r.maps) == 1 for r in trace.attention.values())


# ---------------------------------------------------------------------------------- attention
class _ExplicitSoftmax:
    """Reference attention processor: diffusers' explicit ``get_attention_scores`` (baddbmm +
    softmax), recording every cross-attention probability tensor."""

    def __init__(self, store: list):
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)  # (batch * heads, queries, keys)
        if encoder_hidden_states is not None:
            self.store.append(probs.detach().clone())
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


@pytest.fixture(scope="module")
def reference(dunet):
    """Per step, per cross-attention layer (call order): (batch, heads, h, w, tokens)."""
    x, ehs = _inputs(3)
    store: list = []
    saved = dunet.attn_processors
    dunet.set_attn_processor(_ExplicitSoftmax(store))
    try:
        _run(dunet, x, ehs)
    finally:
        dunet.set_attn_processor(saved)
    heads = 4
    per_step = len(store) // len(TIMESTEPS)
    out = []
    for s in range(len(TIMESTEPS)):
        layers = []
        for p in store[s * per_step : (s + 1) * per_step]:
            n = p.shape[1]
            side = int(n**0.5)
            layers.append(p.reshape(2, heads, side, side, p.shape[-1]))
        out.append(layers)
    return (x, ehs), out


def _ref_heatmap(
    ref_steps,
    token_ids,
    size,
    steps=None,
    half=1,
    heads=None,
    clamp=False,
    step_reduce="mean",
    drop=(),
):
    layer_maps = {}
    for s, layers in enumerate(ref_steps):
        if steps is not None and s not in steps:
            continue
        for i, p in enumerate(layers):
            if p.shape[2] in drop:
                continue
            m = p[half][..., token_ids].mean(-1)  # (heads, h, w)
            layer_maps.setdefault(i, []).append(m)
    maps = []
    for per_step in layer_maps.values():
        stacked = torch.stack(per_step)
        m = stacked.sum(0) if step_reduce == "sum" else stacked.mean(0)  # (heads, h, w)
        if heads is None:
            m = m.mean(0, keepdim=True)
        else:
            m = m[heads]
        up = F.interpolate(m[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
        if clamp:
            up = up.clamp(min=0)
        maps.append(up)
    x = torch.cat(maps).mean(0)
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("mode", ["steps", "stream"])
def test_heatmaps_equal_explicit_softmax_reference(dunet, reference, mode):
    (x, ehs), ref = reference
    with capture(dunet, mode=mode, attention_dtype=torch.float32, per_head=True) as trace:
        _run(dunet, x, ehs)
    trace.tokens, trace.words = list(TOKENS), list(WORDS)
    # raw maps of the first layer, step 0, head-mean of the conditional half
    first = trace["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    if mode == "steps":
        assert len(first.maps) == 3 and first.maps[0].shape == (4, 16, 16, 8)
        torch.testing.assert_close(first.maps[0], ref[0][0][1], atol=1e-5, rtol=0)
    else:
        assert first.count == 3 and first.maps == []
        expected = sum(ref[s][0][1] for s in range(3))
        torch.testing.assert_close(first.sum, expected, atol=1e-5, rtol=0)
    total = first.sum if mode == "stream" else first.maps[0]
    expected_total = 3.0 if mode == "stream" else 1.0  # probabilities sum to 1 per query
    assert torch.allclose(total.sum(-1), torch.full((4, 16, 16), expected_total), atol=1e-4)
    # "cat" is token 3; "a" merges tokens 1 and 5
    for token, ids in (("cat", [3]), (6, [6]), ("a", [1, 5])):
        got = trace.heatmap(token)
        want = _ref_heatmap(ref, ids, (16, 16))
        assert got.shape == (16, 16)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    got = trace.heatmap("cat", size=32, heads=[0, 2])
    torch.testing.assert_close(
        got, _ref_heatmap(ref, [3], (32, 32), heads=[0, 2]), atol=1e-4, rtol=0
    )
    got = trace.heatmap("red", preset="daam-approx")  # the earlier DAAM-like recipe
    want = _ref_heatmap(ref, [2], (64, 64), clamp=True, step_reduce="sum", heads=slice(None))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    if mode == "steps":
        got = trace.heatmap("cat", steps=[0, 2], resolutions=16)
        want = _ref_heatmap(ref, [3], (16, 16), steps=[0, 2], drop=(8,))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    else:
        with pytest.raises(TraceError, match="stream"):
            trace.heatmap("cat", steps=[0])


def test_float16_maps_unconditional_half_and_head_mean(dunet, reference):
    (x, ehs), ref = reference
    with capture(dunet, half="uncond") as trace:
        _run(dunet, x, ehs)
    rec = trace["up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    assert rec.maps[2].dtype == torch.float16 and rec.maps[2].shape == (1, 16, 16, 8)
    want = ref[2][3][0].mean(0, keepdim=True)  # step 2, 4th cross-attention call, uncond half
    torch.testing.assert_close(rec.maps[2].float(), want, atol=1e-3, rtol=0)
    assert rec.location == "up" and rec.block == "up_blocks.1" and rec.res == (16, 16)
    assert trace["mid_block.attentions.0.transformer_blocks.0.attn2"].res == (8, 8)


def test_attention_layer_selection_and_memory_budget(ounet):
    x, ehs = _inputs()
    with capture(ounet, attention="up_blocks.1") as trace:
        _run(ounet, x, ehs, (10,))
    captured = sorted(n for n, r in trace.attention.items() if r.captured)
    assert captured == [
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    ]
    with pytest.raises(TraceError, match="matches no layer"):
        capture(ounet, attention=["up_blocks.9"])
    one_step = 2 * (16 * 16 * 8) * 2 + (8 * 8 * 8) * 2 + 16 * 16 * 8 * 2  # bytes, float16
    with pytest.raises(MemoryBudgetError, match="memory_budget=.*mode='stream'"):
        with capture(ounet, memory_budget=one_step * 2 + 10):
            _run(ounet, x, ehs, (900, 500, 100))
    assert _hook_count(ounet) == 0
    with capture(ounet, mode="stream", memory_budget=10) as streamed:  # budget is per-step only
        _run(ounet, x, ehs, (900, 500, 100))
    assert all(r.count == 3 and r.sum.dtype == torch.float32 for r in streamed.attention.values())


def test_self_attention_opt_in(ounet):
    x, ehs = _inputs()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with capture(
        ounet, self_attention_layers=[name], self_attention_points=[(0.0, 0.0), (0.5, 0.75)]
    ) as trace:
        _run(ounet, x, ehs, (10, 20))
    assert list(trace.self_attention) == [name]
    rec = trace[name]
    assert rec.points == [(0, 0), (8, 12)] and rec.res == (16, 16)
    assert len(rec.maps) == 2 and rec.maps[0].shape == (1, 2, 16, 16)
    torch.testing.assert_close(
        rec.maps[0].float().sum((-1, -2)), torch.ones(1, 2), atol=2e-3, rtol=0
    )
    with pytest.raises(TraceError, match="both"):
        capture(ounet, self_attention_layers=[name])
    with pytest.raises(TraceError, match="fractions"):
        capture(ounet, self_attention_layers=[name], self_attention_points=[(3, 4)])


# ---------------------------------------------------------------------------------- temb
def test_temb_records_match_manual_computation(ounet):
    x, ehs = _inputs()
    with capture(ounet) as trace:
        _run(ounet, x, ehs, (900, 100))
    resnets = [n for n, m in ounet.named_modules() if type(m).__name__ == "ResnetBlock2D"]
    assert len(trace.temb) == 2 * len(resnets)
    rec = trace.temb_for("down_blocks.0.resnets.0")[1]
    assert rec.step == 1 and rec.timestep == 100.0
    # recompute with plain torch: conditional half only
    seen = {}
    m = ounet.down_blocks[0].resnets[0]
    hs = [  # clones: the model adds temb to conv1's output in place
        m.conv1.register_forward_hook(lambda mod, a, o: seen.__setitem__("f", o.clone())),
        m.time_emb_proj.register_forward_hook(lambda mod, a, o: seen.__setitem__("t", o.clone())),
    ]
    try:
        _run(ounet, x, ehs, (100,))
    finally:
        for h in hs:
            h.remove()
    t, f = seen["t"][1:], seen["f"][1:]
    assert rec.temb_rms == pytest.approx(t.pow(2).mean().sqrt().item(), rel=1e-5)
    assert rec.feature_rms == pytest.approx(f.pow(2).mean().sqrt().item(), rel=1e-5)
    assert rec.ratio == pytest.approx(rec.temb_rms / rec.feature_rms)
    torch.testing.assert_close(rec.vector, t[0])
    mean = torch.stack([r.vector for r in trace.temb_for("down_blocks.0.resnets.0")]).mean(0)
    torch.testing.assert_close(trace.temb_vectors["down_blocks.0.resnets.0"], mean)
    assert [s["step"] for s in trace.temb_sources] == [0, 1]
    assert all(s["time_rms"] > 0 for s in trace.temb_sources)


def test_sdxl_style_text_time_sources():
    cfg = UNetConfig.from_dict(
        {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}
        | {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 16 + 6 * 8,
        }
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cfg).eval()
    x, ehs = _inputs()
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.randn(2, 6)}
    with torch.no_grad(), capture(unet, detail="blocks") as trace:
        unet(x, 10, ehs, added_cond_kwargs=added)
    (src,) = trace.temb_sources
    assert src["time_rms"] > 0 and src["text_time_rms"] > 0
    assert trace.meta["inputs"]["time_ids"] == [2, 6]


def test_batch_without_cfg_keeps_everything(ounet):
    x, ehs = _inputs(batch=1)
    with capture(ounet) as trace:
        _run(ounet, x, ehs, (10,))
    assert trace.meta["cfg"] is False
    assert trace.temb and trace.attention
    with pytest.raises(TraceError, match="odd"):
        with capture(ounet, cfg=True):
            _run(ounet, x, ehs, (10,))


def test_bad_options_are_named():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(TraceError, match="detail='everything'"):
        capture(lin, detail="everything")
    with pytest.raises(TraceError, match="mode='per_step'"):
        capture(lin, mode="per_step")
    with pytest.raises(TraceError, match="half='cond_only'"):
        capture(lin, half="cond_only")
    with pytest.raises(TraceError, match="nn.Module"):
        capture("unet")


def test_unetviz_capture_is_callable_in_any_import_order():
    import subprocess
    import sys

    code = (
        "from unetviz.capture import Trace\n"  # binds the subpackage on unetviz first
        "import torch, unetviz\n"
        "lin = torch.nn.Linear(2, 2)\n"
        "with unetviz.capture(lin) as t:\n"
        "    lin(torch.zeros(1, 2))\n"
        "assert isinstance(t, Trace), t\n"
        "from unetviz import capture\n"
        "assert callable(capture)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

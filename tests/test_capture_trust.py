"""Maps from real checkpoints, trustworthy on paper: the half-precision recompute error is
bounded (README "Capture"), a capture never syncs host and device inside a forward, and fused
QKV projections are read, not silently skipped (issue 10 item 10)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import SMALL
from unetviz.capture import TraceError, capture
from unetviz.capture.attention import probabilities

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import Attention  # noqa: E402


@pytest.fixture(scope="module")
def dunet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**SMALL).eval()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 8, 32, generator=g)


# ------------------------------------------------------------------ half precision
# README bound: the recomputed probabilities equal the exact softmax of the model's own
# half-precision Q and K (to 1e-5); they differ from what a half-precision attention kernel
# computes by that kernel's rounding, at most 5e-3 (float16) / 5e-2 (bfloat16) per probability.
@pytest.mark.parametrize(("dtype", "bound"), [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_half_precision_recompute_error_is_bounded(dtype, bound):
    torch.manual_seed(0)
    attn = Attention(query_dim=320, cross_attention_dim=768, heads=8, dim_head=40).eval()
    with torch.no_grad():  # peaked attention (probabilities up to 1): the worst case
        attn.to_q.weight.mul_(4.0)
        attn.to_k.weight.mul_(4.0)
    attn = attn.to(dtype)
    x, ctx = torch.randn(2, 1024, 320, dtype=dtype), torch.randn(2, 77, 768, dtype=dtype)
    with torch.no_grad():
        q, k = attn.to_q(x), attn.to_k(ctx)
        # what the model used: diffusers' classic processor, scores and softmax in half
        used = attn.get_attention_scores(attn.head_to_batch_dim(q), attn.head_to_batch_dim(k))
        used = used.reshape(2, 8, 1024, 77).float()
        ours = probabilities(attn, q, k, 2, slice(None))
        qd = q.double().reshape(2, 1024, 8, 40).transpose(1, 2)
        kd = k.double().reshape(2, 77, 8, 40).transpose(1, 2)
        exact = torch.softmax(qd @ kd.transpose(-1, -2) * attn.scale, -1)
    assert ours.dtype == torch.float32
    assert (ours - exact).abs().max() < 1e-5
    assert (ours - used).abs().max() < bound
    assert (ours - used).abs().max() > 1e-5  # the kernel's half-precision rounding is real


# ------------------------------------------------------------------ no sync inside a forward
class _Syncs(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` (what ``.item()`` and ``float(tensor)`` call)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _syncs(unet, x, ehs, steps: int, **options) -> int:
    with torch.no_grad(), _Syncs() as mode:
        if options.pop("captured", True):
            with capture(unet, **options):
                for t in range(steps):
                    unet(x, torch.tensor([900 - 100 * t]), ehs)
        else:
            for t in range(steps):
                unet(x, torch.tensor([900 - 100 * t]), ehs)
    return mode.count


def test_no_host_device_sync_inside_a_forward(dunet):
    """At most the documented once-per-forward flush (of the timestep and temb scalars, done
    with one ``.tolist()``), whatever is captured; the counter does see a hook's ``.item()``."""
    x, ehs = _inputs()
    steps = 3
    plain = _syncs(dunet, x, ehs, steps, captured=False)
    for options in ({}, {"mode": "stream", "per_head": True, "daam": True}, {"detail": "modules"}):
        assert _syncs(dunet, x, ehs, steps, **options) - plain <= steps, options

    def syncing_hook(module, args, out):
        float(out.sum())  # what a careless hook would do

    handle = dunet.conv_in.register_forward_hook(syncing_hook)
    try:
        assert _syncs(dunet, x, ehs, steps, captured=False) - plain == steps  # can fail
    finally:
        handle.remove()


# ------------------------------------------------------------------ fused projections
def test_fused_qkv_projections_are_read(dunet):
    x, ehs = _inputs()
    opts = dict(
        attention_dtype=torch.float32,
        per_head=True,
        self_attention_layers=["up_blocks.1"],
        self_attention_points=[(0.5, 0.5)],
    )
    with torch.no_grad(), capture(dunet, **opts) as plain:
        want = dunet(x, 500, ehs).sample
    dunet.fuse_qkv_projections()
    try:
        with torch.no_grad(), capture(dunet, **opts) as fused:
            got = dunet(x, 500, ehs).sample
    finally:
        dunet.unfuse_qkv_projections()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(fused.attention) == len(plain.attention)
    for name, rec in plain.attention.items():
        assert fused.attention[name].captured, name
        torch.testing.assert_close(fused.attention[name].maps[0], rec.maps[0], atol=1e-5, rtol=0)
    for name, rec in plain.self_attention.items():
        torch.testing.assert_close(fused.self_attention[name].maps[0], rec.maps[0], atol=1e-5, rtol=0)  # fmt: skip


def test_fused_projections_it_cannot_read_are_refused_at_entry():
    class Odd(torch.nn.Module):  # fused, but neither to_kv nor to_qkv
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.heads = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), 2
            self.fused_projections = True

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn2 = Odd()

    with pytest.raises(TraceError, match="unfuse_qkv_projections"):
        capture(Net())

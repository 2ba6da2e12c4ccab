"""Host reads of a captured forward, counted structurally: on a GPU each read of a device
tensor from Python (``.item()``, ``.cpu()``, ``.tolist()``, ``float()``, ``bool()``...) waits
for the device. A capture reads once per forward (the end-of-forward flush), edits never.

The CPU-only machine cannot see a sync, so the test makes every tensor report ``is_cpu``
False (the path a CUDA capture takes) and records each host read with the function that made
it; ``bench/capture_overhead.py`` counts real syncs with ``torch.cuda.set_sync_debug_mode``
when a GPU is present."""

from __future__ import annotations

import collections
import sys

import pytest
import torch

from unetviz import capture, edits, intervene
from unetviz.config import UNetConfig
from unetviz.model import UNet2DConditionModel

CFG = dict(
    sample_size=16,
    block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture()
def reads(monkeypatch):
    """Every host read of a tensor: (reader function, what) -> count; ``to(cpu)`` included."""
    seen: collections.Counter = collections.Counter()

    def counted(name, fn):
        def read(self, *args, **kwargs):
            seen[(sys._getframe(1).f_code.co_name, name)] += 1
            return fn(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    to = torch.Tensor.to

    def to_host(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        blocking = not kwargs.get("non_blocking", False)
        if blocking and str(target) == "cpu":
            seen[(sys._getframe(1).f_code.co_name, "to(cpu)")] += 1
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to_host)
    monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
    return seen


def test_a_captured_forward_reads_the_host_once(reads):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(CFG)).eval()
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 8, 32, generator=g)
    t = torch.tensor(500)
    with torch.no_grad():
        unet(x, t, ehs)
        reads.clear()
        unet(x, t, ehs)
        plain = dict(reads)
        with intervene(unet, [edits.Reweight(3, 0.5)]), capture(unet, daam=True) as trace:
            unet(x, t, ehs)  # the first forward also reads shapes: not counted
            reads.clear()
            unet(x, t, ehs)
            captured = dict(reads)
    assert trace.steps == 2 and trace.timesteps == [500.0, 500.0]
    assert all(r.temb_rms > 0 for r in trace.temb)
    extra = {k: v - plain.get(k, 0) for k, v in captured.items() if v != plain.get(k, 0)}
    # one transfer to the host in the flush (its .tolist() reads the host copy)
    assert extra == {("_to_floats", "cpu"): 1, ("_to_floats", "tolist"): 1}, extra

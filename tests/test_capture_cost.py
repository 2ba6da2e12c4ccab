"""What a capture costs beyond its records: no reference cycles (nothing for the garbage
collector to find), no module-tree walk once a model's plan is cached, and first-pass facts
replayed only for the input shapes they were taken with."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from unetviz import capture
from unetviz.capture import plan as plan_module
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


@pytest.fixture(autouse=True)
def one_thread():
    """Small forwards: one thread (two spin-wait for each other on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConfig.from_dict(CFG)).eval()


def _inputs(side: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, side, side, generator=g), torch.randn(2, 8, 32, generator=g)


def test_captured_forwards_and_captures_leave_no_reference_cycles(unet):
    x, ehs = _inputs(8)
    resnets = len(plan_module.plan_of(unet).resnets)
    with torch.no_grad():
        with capture(unet):  # the plan and the first-pass facts of these shapes
            unet(x, 999, ehs)
        gc.collect()
        gc.disable()
        try:
            with capture(unet, mode="stream") as trace:
                for t in range(3):  # the first forwards fill the capture's per-layout caches
                    unet(x, 999 - t, ehs)
                before = gc.get_count()[0]
                for t in range(40):
                    unet(x, t, ehs)
                grown = gc.get_count()[0] - before
            for t in range(5):
                with capture(unet) as other:
                    unet(x, t, ehs)
            cycles = gc.collect()
        finally:
            gc.enable()
    assert trace.steps == 43 and other.steps == 1
    assert cycles == 0
    # what a forward keeps is its records (a temb record per resnet, a temb-source row):
    # about one tracked object per resnet, far below a young collection's 700
    assert grown <= 40 * (resnets + 4), grown


def test_a_cached_plan_walks_no_module_tree(unet, monkeypatch):
    x, ehs = _inputs()
    with torch.no_grad(), capture(unet):
        unet(x, 999, ehs)

    def walk(*args, **kwargs):
        raise AssertionError("named_modules() walked on a cached plan")

    monkeypatch.setattr(unet, "named_modules", walk)
    with torch.no_grad(), capture(unet) as trace:
        unet(x, 500, ehs)
        unet(x, 400, ehs)
    assert trace.steps == 2 and trace["down_blocks.0"].calls == 2


def test_a_changed_module_tree_gets_a_new_plan(unet):
    x, ehs = _inputs()
    first = plan_module.plan_of(unet)
    assert plan_module.plan_of(unet) is first
    unet.conv_out = torch.nn.Conv2d(32, 4, 3, padding=1)
    second = plan_module.plan_of(unet)
    assert second is not first and second.modules["conv_out"] is unet.conv_out
    with torch.no_grad(), capture(unet) as trace:
        unet(x, 999, ehs)
    assert trace["conv_out"].calls == 1


def _first_pass(trace) -> dict:
    blocks = [
        {k: v for k, v in dataclasses.asdict(b).items() if k != "time_ms"} for b in trace.blocks
    ]
    attention = {
        n: (r.res, r.q_shape, r.k_shape, r.tokens, r.heads) for n, r in trace.attention.items()
    }
    skips = [dataclasses.asdict(s) for s in trace.skips]
    return {"blocks": blocks, "attention": attention, "skips": skips, "meta": trace.meta}


@pytest.mark.parametrize("detail", ["blocks", "modules"])
def test_replayed_first_pass_facts_equal_a_cold_first_pass(unet, detail):
    x, ehs = _inputs()

    def run(side: int = 16):
        xs, es = _inputs(side)
        with torch.no_grad(), capture(unet, detail=detail, attention=False) as trace:
            unet(xs, 999, es)
            unet(xs, 500, es)
        return trace

    plan_module._PLANS.pop(unet, None)
    cold = run()
    plan = plan_module.plan_of(unet)
    assert len(plan._facts) == 1
    warm = run()
    assert _first_pass(warm) == _first_pass(cold)
    assert sum(b.macs for b in warm.blocks) > 0 and warm.skips
    other = run(8)  # other input shapes: a first pass of their own
    assert len(plan._facts) == 2
    assert other["conv_in"].outputs["sample"] == [2, 32, 8, 8]
    assert other.meta["latent"] == [8, 8]


def _hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


@pytest.mark.parametrize("direct", [True, False])
def test_hooks_entered_directly_or_through_torch_record_the_same(unet, monkeypatch, direct):
    """Hooks go straight into torch's hook dicts (ids from torch's own counter) or, where that
    self-check failed, through ``register_forward_hook``: the same records either way, and
    nothing left behind."""
    from torch.utils.hooks import RemovableHandle

    from unetviz.capture import probe as probe_module

    x, ehs = _inputs()

    def run():
        with torch.no_grad(), capture(unet) as trace:
            unet(x, 999, ehs)
            unet(x, 500, ehs)
        return trace

    reference = run()
    monkeypatch.setattr(probe_module, "_DIRECT", direct)
    start = RemovableHandle.next_id
    trace = run()
    assert _first_pass(trace) == _first_pass(reference)
    for name, rec in reference.attention.items():
        assert all(torch.equal(a, b) for a, b in zip(rec.maps, trace[name].maps, strict=True))
    assert [r.temb_rms for r in trace.temb] == [r.temb_rms for r in reference.temb]
    assert _hooks(unet) == 0
    assert RemovableHandle.next_id > start  # ids taken from torch's counter: never reused

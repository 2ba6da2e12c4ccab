"""The probe interface interventions build on (unetviz/capture/probe.py): an ``edits = True``
probe runs before every capture hook on a module whichever ``with`` is entered first, declared
probability edits reach the recorded maps, and every hook is gone after the block."""

from __future__ import annotations

import pytest
import torch

from unetviz.capture import MemoryBudgetError, Probe, ProbeSession, capture
from unetviz.capture.probe import add_probability_edit, probability_edits
from unetviz.config import UNetConfig
from unetviz.model import UNet2DConditionModel

CFG = dict(
    sample_size=64,  # x 8 = 512 (run at 16x16): DAAM's 64x64 grid, the 16x16 maps kept
    block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
)
RESNET = "down_blocks.0.resnets.0"
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConfig.from_dict(CFG)).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 8, 32, generator=g)


class DoubleConv1(Probe):
    """A toy intervention: doubles one resnet's conv1 output."""

    edits = True

    def install(self, session: ProbeSession) -> None:
        session.hook(session.modules[f"{RESNET}.conv1"], post=lambda m, a, k, out: out * 2)


def _feature_rms(unet, order: str) -> float:
    x, ehs = _inputs()
    with torch.no_grad():
        if order == "none":
            with capture(unet) as trace:
                unet(x, 500, ehs)
        elif order == "edit first":
            with ProbeSession(unet, [DoubleConv1()]), capture(unet) as trace:
                unet(x, 500, ehs)
        else:
            with capture(unet) as trace, ProbeSession(unet, [DoubleConv1()]):
                unet(x, 500, ehs)
    return trace.temb_for(RESNET)[0].feature_rms


def test_edits_run_before_capture_hooks_in_either_order(unet):
    plain = _feature_rms(unet, "none")
    for order in ("edit first", "capture first"):
        assert _feature_rms(unet, order) == pytest.approx(2 * plain, rel=1e-5), order
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_declared_probability_edits_reach_the_recorded_maps(unet):
    x, ehs = _inputs()
    attn = dict(unet.named_modules())[ATTN]

    def drop_token_3(p: torch.Tensor) -> torch.Tensor:
        p = p.clone()
        p[..., 3] = 0
        return p / p.sum(-1, keepdim=True)

    remove = add_probability_edit(attn, drop_token_3)
    try:
        with torch.no_grad(), capture(unet, attention_dtype=torch.float32) as trace:
            unet(x, 500, ehs)
    finally:
        remove()
    assert probability_edits(attn) == []
    edited = trace[ATTN].maps[0]
    assert edited[..., 3].abs().max() == 0
    assert torch.allclose(edited.sum(-1), torch.ones_like(edited[..., 0]), atol=1e-5)
    other = trace["up_blocks.1.attentions.0.transformer_blocks.0.attn2"].maps[0]
    assert other[..., 3].abs().max() > 0  # only the declared layer


def test_daam_sums_count_against_the_memory_budget(unet):
    x, ehs = _inputs()
    with pytest.raises(MemoryBudgetError, match="DAAM per-head sums"):
        with torch.no_grad(), capture(unet, daam=True, mode="stream", memory_budget=1000):
            unet(x, 500, ehs)
    with torch.no_grad(), capture(unet, daam=True, mode="stream") as trace:
        unet(x, 500, ehs)
        unet(x, 100, ehs)
    rec = trace[ATTN]
    assert rec.head_count == 2 and rec.head_sum.shape == (4, 16, 16, 8)
    assert rec.head_sum.dtype == torch.float32 and rec.head_sum.device.type == "cpu"
    # the per-head sums average to the head-mean sum that stream mode keeps
    torch.testing.assert_close(rec.head_sum.mean(0, keepdim=True), rec.sum, atol=1e-5, rtol=0)
    assert trace["mid_block.attentions.0.transformer_blocks.0.attn2"].head_sum is None


def test_daam_needs_the_conditional_half(unet):
    from unetviz.capture import TraceError

    x, ehs = _inputs()
    with torch.no_grad(), capture(unet, daam=True, half="both") as trace:
        unet(x, 500, ehs)
    with pytest.raises(TraceError, match="half='cond'"):
        trace.heatmap(0, preset="daam")
    with torch.no_grad(), capture(unet, daam=True) as trace:
        unet(x, 500, ehs)
    with pytest.raises(TraceError, match="never the mid block"):
        trace.heatmap(0, preset="daam", layers="mid")
    assert trace.heatmap(0, preset="daam", layers="up").shape == (64, 64)

"""Shared fixtures: offline environment and small real models written to disk."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread (``UNETVIZ_TEST_THREADS`` overrides): the suite's models are small, so a
    second thread mostly spins — measured on 2 cores, a third less CPU for the same tests."""
    import torch

    torch.set_num_threads(int(os.environ.get("UNETVIZ_TEST_THREADS", "1")))


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


#: a small SD1-shaped UNet (one cross-attention level) for diffusers-vs-unetviz capture tests
SMALL = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright: use Debian's Chromium, never a downloaded browser."""
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "args": CHROMIUM_ARGS,
    }


def tiny_capture(timesteps=(900, 500, 100), tokens: int = 8):
    """A real capture of a tiny random-weight UNet (one cross-attention level, 16x16 latent)
    run for ``timesteps``: attention, temb and skips, in well under a second."""
    import torch

    from unetviz import UNet2DConditionModel, UNetConfig, capture

    cfg = UNetConfig.from_dict(
        dict(
            sample_size=16,
            block_out_channels=[32, 64],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        )
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, tokens, 32, generator=g)
    with torch.no_grad(), capture(unet, detail="layers") as trace:
        for t in timesteps:
            unet(x, t, ehs)
    return trace

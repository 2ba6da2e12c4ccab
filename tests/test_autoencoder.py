"""unetviz's AutoencoderKL in miniature is diffusers' AutoencoderKL: same names, same numbers."""

from __future__ import annotations

import json

import pytest
import torch

from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL


def test_weights_load_strictly_into_diffusers_and_outputs_match():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ours = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16, 16), sample_size=32)).eval()
    theirs = diffusers.AutoencoderKL.from_config(ours.config.to_dict()).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # every key, every shape
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = ours.encode(x)
        dist = theirs.encode(x).latent_dist
        assert mean.shape == (2, 4, 8, 8)  # factor 4, 4 latent channels
        assert torch.allclose(mean, dist.mean, atol=1e-5)
        assert torch.allclose(logvar, dist.logvar, atol=1e-5)
        assert torch.allclose(ours.decode(mean), theirs.decode(dist.mean).sample, atol=1e-4)


def test_latent_scaling_round_trips_and_config_reads_back(tmp_path):
    config = AutoencoderConfig(scaling_factor=0.5, shift_factor=-1.5)
    vae = AutoencoderKL(config)
    z = torch.randn(1, 4, 6, 6)
    assert torch.allclose(vae.unscale(vae.scale(z)), z, atol=1e-6)
    assert torch.allclose(vae.scale(z), (z + 1.5) * 0.5)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    again = AutoencoderConfig.from_json(path)
    assert again == config and again.downsampling_factor == 4

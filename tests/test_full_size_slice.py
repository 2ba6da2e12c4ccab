"""A slice of the full-size walk in the suite: an SD 1.5-shaped A1111 single file (the real LDM
key layout of UNet, VAE and CLIP, written by scripts/make_full_size.py at a tenth of the width)
loads with unetviz and goes through one CLI command."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _maker():
    spec = importlib.util.spec_from_file_location(
        "make_full_size", ROOT / "scripts" / "make_full_size.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("fullsize")
    return _maker().make(out, "sd15", tiny=True)


@pytest.mark.slow
def test_sd15_single_file_loads_and_runs_the_cli(sd15_file, tmp_path):
    from unetviz.names import LDM_PREFIX
    from unetviz.single_file import SingleFile, detect_family, load_single_file

    with SingleFile(sd15_file) as sf:
        keys = set(sf.keys)
        assert detect_family(keys, sf.shapes) == "sd1"
    # the real layout: UNet input/middle/output blocks, VAE encoder/decoder, CLIP text model
    for key in (
        f"{LDM_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        f"{LDM_PREFIX}middle_block.1.proj_in.weight",
        f"{LDM_PREFIX}output_blocks.11.0.skip_connection.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight",
    ):
        assert key in keys, key
    parts = load_single_file(sd15_file, config=sd15_file.with_suffix(""))
    unet = parts.unet
    assert unet.config.block_out_channels == (32, 64, 128, 128)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetviz.cli",
            "attention",
            "a photo of a cat",
            "-m",
            str(sd15_file),
            "--config",
            str(sd15_file.with_suffix("")),
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "-o",
            str(tmp_path / "attn"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tokens = json.loads((tmp_path / "attn" / "tokens.json").read_text())
    assert "cat" in json.dumps(tokens)
    assert len(list((tmp_path / "attn" / "heatmaps").glob("*.png"))) >= 4

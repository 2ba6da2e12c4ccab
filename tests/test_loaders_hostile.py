"""Issue 10 items 6, 7, 8, 13 for the loaders: files confined to the model folder, floating
dtypes only (one rule for mixed files), NaN/Inf refused, clear errors for loops and permissions.

A two-block UNet (real safetensors on disk) keeps every case well under a second.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unetviz.config import ConfigError, UNetConfig
from unetviz.errors import UnetvizError
from unetviz.weights import WeightsError, build_unet, load_unet

TINY = UNetConfig.preset("sd15").to_dict()
TINY.update(
    block_out_channels=[8, 16],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=2,
    layers_per_block=1,
    sample_size=8,
)


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    model = build_unet(TINY, device="cpu")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _folder(path, state, config=TINY, name="diffusion_pytorch_model.safetensors"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(state, path / name)
    return path


def test_loads_and_keeps_dtype(state, tmp_path):
    model = load_unet(_folder(tmp_path / "u", state))
    assert model.dtype == torch.float32
    assert torch.equal(model.conv_in.weight, state["conv_in.weight"])
    half = load_unet(tmp_path / "u", dtype="float16")
    assert half.dtype == torch.float16
    assert torch.equal(half.conv_in.weight, state["conv_in.weight"].half())


@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.bool, torch.int64, torch.complex64, torch.float8_e4m3fn]
)
def test_non_float_weights_refused_naming_the_tensor(state, tmp_path, dtype):
    bad = dict(state)
    bad["conv_in.weight"] = torch.zeros_like(state["conv_in.weight"]).to(dtype)
    with pytest.raises(WeightsError, match=r"tensor 'conv_in.weight' is \w+: .*floating-point"):
        load_unet(_folder(tmp_path, bad))


def test_mixed_float_dtypes_load_as_float32(state, tmp_path):
    """The documented rule (weights.load_dtype): mixed floating dtypes -> float32, exactly."""
    mixed = dict(state)
    mixed["conv_in.weight"] = state["conv_in.weight"].half()
    mixed["conv_out.weight"] = state["conv_out.weight"].bfloat16()
    model = load_unet(_folder(tmp_path, mixed))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.conv_in.weight, state["conv_in.weight"].half().float())
    assert torch.equal(model.conv_out.weight, state["conv_out.weight"].bfloat16().float())
    assert load_unet(tmp_path, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_refused(state, tmp_path, value):
    bad = dict(state)
    bad["mid_block.resnets.0.conv1.bias"] = state["mid_block.resnets.0.conv1.bias"].clone()
    bad["mid_block.resnets.0.conv1.bias"][3] = value
    with pytest.raises(WeightsError, match=r"'mid_block.resnets.0.conv1.bias' holds NaN or inf"):
        load_unet(_folder(tmp_path, bad))


def test_overflow_when_casting_is_refused(state, tmp_path):
    big = dict(state)
    big["conv_in.bias"] = state["conv_in.bias"].clone()
    big["conv_in.bias"][0] = 1e6  # finite in float32, inf in float16
    _folder(tmp_path, big)
    load_unet(tmp_path)
    with pytest.raises(WeightsError, match="after casting F32 to torch.float16"):
        load_unet(tmp_path, dtype="float16")


def test_norm_eps_nan_refused(state, tmp_path):
    with pytest.raises(ConfigError, match="norm_eps"):
        load_unet(_folder(tmp_path, state, {**TINY, "norm_eps": math.nan}))


def test_shard_index_confined_to_the_folder(state, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file(state, outside / "stolen.safetensors")
    unet = tmp_path / "root" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps(TINY))
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    for name in (str(outside / "stolen.safetensors"), "../../outside/stolen.safetensors"):
        index.write_text(json.dumps({"weight_map": dict.fromkeys(state, name)}))
        with pytest.raises(WeightsError, match="outside the model folder"):
            load_unet(tmp_path / "root")


def test_symlinked_subfolders_and_files_confined(state, tmp_path):
    outside = _folder(tmp_path / "outside", state)
    root = tmp_path / "root"
    root.mkdir()
    (root / "unet").symlink_to(outside)
    with pytest.raises(WeightsError, match="outside the model folder"):
        load_unet(root)
    own = _folder(tmp_path / "own", state)
    (own / "config.json").unlink()
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({**TINY, "_note": "TOP-SECRET"}))
    (own / "config.json").symlink_to(secret)
    with pytest.raises(UnetvizError, match="outside the model folder") as err:
        load_unet(own)
    assert "TOP-SECRET" not in str(err.value)


def test_symlink_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(WeightsError, match="symlink loop"):
        load_unet(loop)


#: Root reads every file through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; without them (dropped
#: from the bounding set, so an exec does not get them back) root is held to the mode bits like
#: anyone, yet still reaches a checkout under a 0700 /root, which it owns.
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow  # a child python that imports torch
def test_unreadable_weights_are_permission_denied(state):
    """As root every file is readable: the check then runs in a child without root's
    permission-override capabilities (same user, so the checkout and venv stay reachable
    wherever they were cloned)."""
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        _folder(folder, state)
        (folder / "config.json").chmod(0o644)
        (folder / "diffusion_pytorch_model.safetensors").chmod(0)
        code = (
            "import sys; from unetviz.weights import load_unet, WeightsError\n"
            "try:\n    load_unet(sys.argv[1])\nexcept WeightsError as e:\n    print(e)"
        )
        command = [sys.executable, "-c", code, str(folder)]
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot make a file unreadable")
            probe = subprocess.run([*_NO_DAC, "true"], capture_output=True, text=True)
            if probe.returncode:
                pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE: {probe.stderr}")
            command = [*_NO_DAC, *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert "permission denied" in out.stdout, out.stdout + out.stderr
        assert "No such file" not in out.stdout
    finally:
        shutil.rmtree(folder)


def test_weights_fifo_fails_fast(state, tmp_path):
    folder = _folder(tmp_path / "u", state)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    os.mkfifo(folder / "diffusion_pytorch_model.safetensors")  # an open would block forever
    with pytest.raises(WeightsError, match="not a regular file"):
        load_unet(folder)


@pytest.mark.parametrize(
    ("vae_config", "message"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b" " * (2 << 20) + b"{}", "more than the"),
        (b'{"block_out_channels": [4096, 4096, 4096, 4096], "layers_per_block": 8}', "parameters"),
        (b'{"block_out_channels": [16, 32, 64], "layers_per_block": "1"}', "layers_per_block"),
        (b'{"block_out_channels": [16, 32, 64], "scaling_factor": NaN}', "scaling_factor"),
        (
            b'{"block_out_channels": [16, 32, 64], "down_block_types": ["Evil"] }',
            "down_block_types",
        ),
        (b'{"block_out_channels": [16, 30, 64]}', "not divisible"),
        (b"[1, 2]", "JSON object"),
    ],
    ids=["deep", "huge", "budget", "type", "nan", "block", "groups", "list"],
)
def test_demo_vae_config_is_read_bounded_and_checked(tmp_path, vae_config, message):
    """load_pipeline(<demo-format folder>) reads vae/config.json as every config is read:
    bounded, schema-checked, then built; a hostile one is a ConfigError naming it."""

    from unetviz.detect import DEMO_DIR
    from unetviz.model.autoencoder import AutoencoderConfig
    from unetviz.pipelines import load_pipeline

    folder = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, folder)
    (folder / "vae" / "config.json").write_bytes(vae_config)
    with pytest.raises(ConfigError, match=message):
        AutoencoderConfig.from_json(folder / "vae" / "config.json")
    with pytest.raises(UnetvizError, match=message):
        load_pipeline(folder)


def test_demo_vae_config_fifo_refused(tmp_path):

    from unetviz.model.autoencoder import AutoencoderConfig

    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        AutoencoderConfig.from_json(tmp_path / "config.json")


def test_demo_text_encoder_config_takes_the_same_path(tmp_path):
    """text_encoder/config.json: bounded read, schema, construction; an unknown key or a
    budget-breaking width is a ConfigError, never a TypeError or an allocation."""
    from unetviz.detect import DEMO_DIR
    from unetviz.pipelines import load_pipeline
    from unetviz.pipelines.demo import TextEncoderConfig

    folder = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, folder)
    path = folder / "text_encoder" / "config.json"
    good = json.loads(path.read_text())
    assert TextEncoderConfig.from_json(path).width == good["width"]
    for changes, message in (
        ({"evil": 1}, "unknown text_encoder config keys"),
        ({"width": 4096, "layers": 48}, "parameters"),
        ({"layers": "2"}, "text_encoder.layers"),
    ):
        path.write_text(json.dumps(good | changes))
        with pytest.raises(ConfigError, match=message):
            TextEncoderConfig.from_json(path)
        with pytest.raises(UnetvizError, match=message):
            load_pipeline(folder)

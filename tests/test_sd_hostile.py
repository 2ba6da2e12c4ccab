"""Issue 10 items 6, 7, 8 for the Stable Diffusion loader and pipeline (tiny SD folder on disk):
files confined to the model folder, floating dtypes only, non-finite guidance and UNet outputs
stopped with a clear error."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from tests.sd_tiny import one_thread, tiny_sd_dir  # noqa: E402
from unetviz.config import ConfigError  # noqa: E402
from unetviz.detect import ModelPathError  # noqa: E402
from unetviz.pipelines.base import PipelineError  # noqa: E402
from unetviz.pipelines.sd import load_sd_pipeline  # noqa: E402
from unetviz.weights import WeightsError  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def pipe():
    return load_sd_pipeline(tiny_sd_dir("sd1"))


def _copy(tmp_path):
    return shutil.copytree(tiny_sd_dir("sd1"), tmp_path / "sd1")


@pytest.mark.parametrize("guidance", [math.nan, math.inf, -math.inf, "lots"])
def test_non_finite_guidance_refused(pipe, guidance):
    with pytest.raises(PipelineError, match="guidance="):
        pipe("a cat", guidance=guidance, steps=1)


@pytest.mark.parametrize(("seed", "steps"), [(2**64, 1), (0, 0), (0, 10**9), (0.5, 1)])
def test_seed_and_steps_bounds(pipe, seed, steps):
    with pytest.raises(PipelineError):
        pipe("a cat", seed=seed, steps=steps)


def test_non_finite_unet_output_names_the_step(pipe):
    bias = pipe.unet.conv_out.bias
    saved = bias.detach().clone()
    calls = []

    def poison(module, args, output):
        calls.append(1)
        return output * math.inf if len(calls) == 2 else output

    handle = pipe.unet.register_forward_hook(poison)
    try:
        with pytest.raises(PipelineError, match="output at step 2/3 is not finite"):
            pipe("a cat", steps=3)
    finally:
        handle.remove()
        bias.data.copy_(saved)
    assert len(calls) == 2  # stopped at once, not after the remaining step


def test_subfolder_symlinked_outside_is_refused(tmp_path):
    root = _copy(tmp_path)
    outside = tmp_path / "outside"
    shutil.move(root / "text_encoder", outside)
    (root / "text_encoder").symlink_to(outside)
    with pytest.raises(ModelPathError, match="outside the model folder"):
        load_sd_pipeline(root)


def test_tokenizer_file_symlinked_outside_is_refused(tmp_path):
    root = _copy(tmp_path)
    file = sorted((root / "tokenizer").iterdir())[0]  # tokenizer.json or vocab.json
    secret = tmp_path / file.name
    shutil.move(file, secret)
    file.symlink_to(secret)
    with pytest.raises(ModelPathError, match="outside the model folder"):
        load_sd_pipeline(root)


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_integer_weights_refused(tmp_path, part):
    root = _copy(tmp_path)
    file = next((root / part).glob("*.safetensors"))
    state = load_file(file)
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key] = state[key].to(torch.int8)
    save_file(state, file)
    with pytest.raises(WeightsError, match=rf"tensor '{key}' is \w+: .*floating-point"):
        load_sd_pipeline(root)


def test_nan_unet_weights_refused(tmp_path):
    root = _copy(tmp_path)
    file = root / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    state["conv_out.bias"][0] = math.nan
    save_file(state, file)
    with pytest.raises(WeightsError, match="'conv_out.bias' holds NaN"):
        load_sd_pipeline(root)


@pytest.mark.parametrize(
    ("file", "key", "value", "message"),
    [
        ("scheduler/scheduler_config.json", "num_train_timesteps", 10**9, "num_train_timesteps"),
        ("vae/config.json", "block_out_channels", [10**7] * 4, "vae.block_out_channels[0]"),
        ("text_encoder/config.json", "hidden_size", 16_000, "clip.hidden_size = 16000"),
        ("text_encoder/config.json", "num_hidden_layers", "2", "clip.num_hidden_layers = '2'"),
        ("tokenizer/tokenizer_config.json", "model_max_length", 10**9, "model_max_length"),
    ],
)
def test_part_configs_bounded_before_building(tmp_path, file, key, value, message):
    root = _copy(tmp_path)
    path = root / file
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sd_pipeline(root)

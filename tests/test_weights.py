"""load_unet: every on-disk layout diffusers writes, strict key checks, corrupt files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import unetviz
from unetviz import WeightsError

from .test_model import narrow, reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny SD1.5-shaped diffusers UNet saved with save_pretrained (real files on disk)."""
    root = tmp_path_factory.mktemp("model")
    ref = reference("sd15")
    ref.save_pretrained(root / "unet")
    return root, ref


def _outputs_equal(model_a, model_b) -> bool:
    torch.manual_seed(0)
    sample, context = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32)
    with torch.no_grad():
        a = model_a(sample, 10, context)
        b = model_b(sample, 10, context)
    a = a.sample if hasattr(a, "sample") else a
    b = b.sample if hasattr(b, "sample") else b
    return torch.allclose(a.float(), b.float(), atol=1e-4)


def test_unet_folder_and_model_root(saved):
    root, ref = saved
    for path in (root, root / "unet", str(root)):
        model = unetviz.load_unet(path)
        assert _outputs_equal(model, ref)
        assert not any(p.requires_grad for p in model.parameters())


def test_fp16_variant_and_dtype(saved, tmp_path):
    root, _ = saved
    unet = tmp_path / "unet"
    unet.mkdir()
    shutil.copy(root / "unet" / "config.json", unet)
    state = load_file(root / "unet" / "diffusion_pytorch_model.safetensors")
    save_file(
        {k: v.half() for k, v in state.items()},
        unet / "diffusion_pytorch_model.fp16.safetensors",
    )
    model = unetviz.load_unet(tmp_path)
    assert model.dtype == torch.float16
    model32 = unetviz.load_unet(tmp_path, dtype="float32")
    assert model32.dtype == torch.float32
    with pytest.raises(WeightsError, match="unknown dtype 'float8'"):
        unetviz.load_unet(tmp_path, dtype="float8")


def test_sharded_index(saved, tmp_path):
    root, ref = saved
    shutil.copy(root / "unet" / "config.json", tmp_path)
    state = load_file(root / "unet" / "diffusion_pytorch_model.safetensors")
    keys = sorted(state)
    halves = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert _outputs_equal(unetviz.load_unet(tmp_path), ref)


def _copy_with(saved, tmp_path, edit):
    root, _ = saved
    shutil.copy(root / "unet" / "config.json", tmp_path)
    state = load_file(root / "unet" / "diffusion_pytorch_model.safetensors")
    edit(state)
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    return tmp_path


def test_missing_unexpected_and_misshaped_keys(saved, tmp_path):
    def edit(state):
        del state["conv_in.weight"]
        del state["conv_out.bias"]
        state["extra.weight"] = torch.zeros(3)
        state["conv_in.bias"] = torch.zeros(7)

    path = _copy_with(saved, tmp_path, edit)
    with pytest.raises(WeightsError) as err:
        unetviz.load_unet(path)
    text = str(err.value)
    assert "2 missing keys: conv_in.weight, conv_out.bias" in text
    assert "1 unexpected keys: extra.weight" in text
    assert "1 keys with the wrong shape: conv_in.bias (7,) (expected (32,))" in text


def test_truncated_and_corrupt_files(saved, tmp_path):
    root, _ = saved
    shutil.copy(root / "unet" / "config.json", tmp_path)
    data = (root / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    target = tmp_path / "diffusion_pytorch_model.safetensors"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        unetviz.load_unet(tmp_path)
    target.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        unetviz.load_unet(tmp_path)


def test_pickles_are_refused_and_paths_checked(saved, tmp_path):
    root, _ = saved
    shutil.copy(root / "unet" / "config.json", tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(WeightsError, match="never unpickles"):
        unetviz.load_unet(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        unetviz.load_unet(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="holds no model"):
        unetviz.load_unet(tmp_path / "empty")


def test_build_unet_accepts_preset_dict_and_path(tmp_path):
    cfg = narrow("sd21")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for source in ("sd21", cfg, tmp_path / "config.json"):
        model = unetviz.build_unet(source)
        assert next(model.parameters()).device.type == "meta"
    real = unetviz.build_unet(cfg, device="cpu", dtype="bfloat16")
    assert real.dtype == torch.bfloat16


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@CUDA
def test_load_and_run_on_cuda(saved):
    """device="cuda": every weight lands there and a forward runs there, equal to the CPU's."""
    root, _ = saved
    cpu = unetviz.load_unet(root)
    gpu = unetviz.load_unet(root, device="cuda")
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        want = cpu(sample, 10, context)
        got = gpu(sample.cuda(), 10, context.cuda()).cpu()
    assert (want - got).abs().max().item() < 1e-3


@CUDA
def test_autoencoder_samples_on_cuda_with_a_cpu_generator():
    """The posterior noise is drawn on the generator's device and moved: the same numbers as
    on the CPU, no device mismatch."""
    from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16), sample_size=16)).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = vae(image, generator=torch.Generator().manual_seed(3))[0]
        got = vae.cuda()(image.cuda(), generator=torch.Generator().manual_seed(3))[0].cpu()
    assert (want - got).abs().max().item() < 1e-3


def test_autoencoder_noise_follows_the_generator_device():
    """On the CPU: the sampled reconstruction depends on the generator's seed and only on it."""
    from unetviz.model.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16), sample_size=16)).eval()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a = vae(image, generator=torch.Generator("cpu").manual_seed(3))[0]
        b = vae(image, generator=torch.Generator("cpu").manual_seed(3))[0]
        c = vae(image, generator=torch.Generator("cpu").manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)

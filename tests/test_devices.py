"""``device=`` and ``dtype=`` honoured by load_pipeline for every model; the CUDA checks run
where a GPU is present and skip elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetviz.pipelines import PipelineError, load_pipeline

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _img(run) -> np.ndarray:
    return np.asarray(run.image, dtype=float)


def test_demo_dtype_and_device_are_honoured():
    default = load_pipeline("demo")("a red circle", seed=1, steps=3)
    same = load_pipeline("demo", device="cpu", dtype="float32")("a red circle", seed=1, steps=3)
    assert np.array_equal(_img(default), _img(same))
    half = load_pipeline("demo", dtype="bfloat16")
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    run = half("a red circle", seed=1, steps=3)
    assert run.trace.meta["dtype"] == "bfloat16" and run.latents.dtype == torch.bfloat16
    assert np.abs(_img(run) - _img(default)).mean() < 12  # the same picture, rounded
    with pytest.raises(PipelineError, match="scheduler: only for Stable Diffusion"):
        load_pipeline("demo", scheduler="ddim")


@cuda
def test_demo_on_cuda_matches_cpu():
    cpu = load_pipeline("demo")("a red circle", seed=2, steps=4)
    gpu_pipe = load_pipeline("demo", device="cuda")
    gpu = gpu_pipe("a red circle", seed=2, steps=4)
    assert next(gpu_pipe.unet.parameters()).device.type == "cuda"
    assert gpu.trace.meta["device"].startswith("cuda")
    assert np.abs(_img(gpu) - _img(cpu)).mean() < 2
    assert torch.allclose(gpu.trace.heatmap("red"), cpu.trace.heatmap("red"), atol=1e-2)


@cuda
def test_sd_and_lora_on_cuda(tmp_path):
    pytest.importorskip("diffusers")
    from tests.lora_support import make_lora
    from tests.sd_tiny import tiny_sd_dir

    cpu = load_pipeline(tiny_sd_dir("sdxl"), device="cpu", dtype="float32")
    gpu = load_pipeline(tiny_sd_dir("sdxl"), device="cuda", dtype="float32", offload=False)
    a, b = (p("a red cat, (blue:1.2) house", seed=0, steps=2) for p in (cpu, gpu))
    assert np.abs(_img(a) - _img(b)).mean() < 2
    lora = make_lora(tmp_path / "l.safetensors", cpu.lora_models(), "kohya")
    before = {k: v.clone() for k, v in gpu.unet.state_dict().items()}
    fused = gpu.fuse_loras([(lora, 0.5)])
    assert any(not torch.equal(v, before[k]) for k, v in gpu.unet.state_dict().items())
    fused.unfuse()
    assert all(torch.equal(v, before[k]) for k, v in gpu.unet.state_dict().items())

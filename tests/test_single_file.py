"""Single-file (LDM-keyed) checkpoints: detection, in-memory conversion, equal weights and
equal outputs against the diffusers folder they were written from.

The LDM file is written by a diffusers -> LDM mapping spelled out in this test (independent of
unetviz's converter), and that mapping is itself checked against diffusers' own
single-file converters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from tests.ldm_support import clip_to_openclip, unet_to_ldm, vae_to_ldm  # noqa: E402
from tests.sd_tiny import one_thread, tiny_sd_dir  # noqa: E402
from unetviz.detect import ModelPathError  # noqa: E402
from unetviz.pipelines.sd import load_sd_pipeline  # noqa: E402
from unetviz.single_file import (  # noqa: E402
    SingleFile,
    SingleFileError,
    detect_family,
    load_single_file,
)

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)
ROOT = Path(__file__).resolve().parents[1]


def _parts(folder):
    import json

    def load(sub):
        return load_file(str(next((folder / sub).glob("*.safetensors"))))

    cfg = {s: json.loads((folder / s / "config.json").read_text()) for s in ("unet", "vae")}
    return load, cfg


def write_ldm_file(kind: str, path) -> dict:
    """Write the tiny ``kind`` pipeline as one LDM-keyed safetensors file; returns the LDM dict."""
    folder = tiny_sd_dir(kind)
    load, cfg = _parts(folder)
    ldm = {**unet_to_ldm(load("unet"), cfg["unet"]), **vae_to_ldm(load("vae"), cfg["vae"])}
    te = load("text_encoder")
    if kind == "sd1":
        ldm.update({"cond_stage_model.transformer." + k: v for k, v in te.items()})
    else:
        ldm.update({"conditioner.embedders.0.transformer." + k: v for k, v in te.items()})
        ldm.update(clip_to_openclip(load("text_encoder_2"), "conditioner.embedders.1.model."))
    ldm["alphas_cumprod"] = torch.linspace(1, 0, 10)  # extra non-model tensors are ignored
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    return ldm


def _equal(a: dict, b: dict) -> None:
    # transformers >= 5 flattens CLIPTextModel's state dict (no text_model. level)
    a = {k.removeprefix("text_model."): v for k, v in a.items()}
    b = {k.removeprefix("text_model."): v for k, v in b.items()}
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def ldm_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / f"tiny-{request.param}.safetensors"
    ldm = write_ldm_file(request.param, path)
    return request.param, path, ldm


# ---------------------------------------------------------------- tests
def test_test_mapping_agrees_with_diffusers_converters(ldm_file):
    """The hand-written diffusers -> LDM mapping above inverts diffusers' own converters."""
    su = pytest.importorskip("diffusers.loaders.single_file_utils")
    kind, _, ldm = ldm_file
    folder = tiny_sd_dir(kind)
    load, cfg = _parts(folder)
    _equal(su.convert_ldm_unet_checkpoint(ldm, cfg["unet"]), load("unet"))
    vae = su.convert_ldm_vae_checkpoint(ldm, cfg["vae"])
    _equal({k: v.reshape(load("vae")[k].shape) for k, v in vae.items()}, load("vae"))
    if kind == "sdxl":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        te_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
        model = CLIPTextModelWithProjection(te_cfg)
        conv = su.convert_open_clip_checkpoint(model, ldm, prefix="conditioner.embedders.1.model.")
        conv.pop("text_model.embeddings.position_ids", None)
        _equal(conv, load("text_encoder_2"))


def test_single_file_loads_equal_weights(ldm_file):
    kind, path, _ = ldm_file
    folder = tiny_sd_dir(kind)
    load, _ = _parts(folder)
    parts = load_single_file(path, config=folder)
    assert parts.family == kind
    _equal(parts.unet.state_dict(), load("unet"))
    _equal(parts.vae.state_dict(), load("vae"))
    _equal(parts.text_encoders[0].state_dict(), load("text_encoder"))
    if kind == "sdxl":
        assert len(parts.text_encoders) == 2
        _equal(parts.text_encoders[1].state_dict(), load("text_encoder_2"))


def test_single_file_gives_equal_outputs(ldm_file):
    kind, path, _ = ldm_file
    folder = tiny_sd_dir(kind)
    a = load_sd_pipeline(path, config=folder)(
        "a photo of a cat", negative_prompt="blurry", seed=5, steps=2
    )
    b = load_sd_pipeline(folder)("a photo of a cat", negative_prompt="blurry", seed=5, steps=2)
    # Weights are equal bit for bit (above); the only numeric difference left is memory
    # alignment (mmap-loaded vs freshly allocated tensors pick different SIMD paths: ~1e-7).
    diff = np.abs(np.asarray(a.image, dtype=np.float64) - np.asarray(b.image, dtype=np.float64))
    assert diff.mean() <= 1 / 255 and diff.max() <= 2, (diff.mean(), diff.max())
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-4)
    assert a.trace.meta["family"] == kind


def test_detect_family_by_keys():
    u = "model.diffusion_model."
    base = {u + "input_blocks.0.0.weight": (320, 4, 3, 3)}
    sd1 = {**base, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ()}
    sd2 = {**base, "cond_stage_model.model.token_embedding.weight": ()}
    xl = {
        **base,
        u + "label_emb.0.0.weight": (),
        "conditioner.embedders.1.model.ln_final.weight": (),
    }
    refiner = {**xl, "conditioner.embedders.0.model.ln_final.weight": ()}
    assert detect_family(list(sd1), sd1) == "sd1"
    assert detect_family(list(sd2), sd2) == "sd2"
    assert detect_family(list(xl), xl) == "sdxl"
    with pytest.raises(SingleFileError, match="refiner"):
        detect_family(list(refiner), refiner)
    inpaint = {**sd1, u + "input_blocks.0.0.weight": (320, 9, 3, 3)}
    with pytest.raises(SingleFileError, match="9 input channels"):
        detect_family(list(inpaint), inpaint)
    for keys, what in (
        (["down_blocks.0.resnets.0.conv1.weight"], "diffusers-named"),
        (["lora_unet_down.alpha"], "LoRA"),
        (["double_blocks.0.img_attn.qkv.weight"], "FLUX"),
        (["encoder.down.0.block.0.conv1.weight"], "VAE"),
        (["foo"], "not an original Stable Diffusion"),
    ):
        with pytest.raises(SingleFileError, match=what):
            detect_family(keys)


def test_single_file_without_config_names_the_layout_problem(ldm_file):
    """A tiny (non-release) layout with no config: the shipped preset does not fit, and the
    error says so instead of loading garbage."""
    kind, path, _ = ldm_file
    with pytest.raises(SingleFileError, match="UNet"):
        load_sd_pipeline(path)


def test_ckpt_is_refused_without_unpickling(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04this would be a pickle")
    with pytest.raises(ModelPathError, match="never unpickles.*safetensors"):
        load_sd_pipeline(ckpt)
    with pytest.raises(SingleFileError, match="weights_only=True"):
        load_single_file(ckpt)


def test_truncated_single_file(ldm_file, tmp_path):
    _, path, _ = ldm_file
    bad = tmp_path / "truncated.safetensors"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SingleFileError, match="truncated or corrupt"):
        load_sd_pipeline(bad, config=tiny_sd_dir("sd1"))


def test_release_sized_layouts_convert_on_meta():
    """The shipped VAE config and an SDXL-sized OpenCLIP bigG tower round-trip through the
    converters with every key and shape (meta tensors: no memory)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from unetviz.single_file import (
        VAE_CONFIG,
        _clip_config_from_shapes,
        convert_openclip,
        convert_vae_key,
    )

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(VAE_CONFIG)
    state = vae.state_dict()
    ldm = vae_to_ldm(state, VAE_CONFIG)
    back = {convert_vae_key(k.removeprefix("first_stage_model."), 4): v for k, v in ldm.items()}
    assert sorted(back) == sorted(state)

    big_g = CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    )
    with torch.device("meta"):
        te = CLIPTextModelWithProjection(big_g)
    state = {k: v for k, v in te.state_dict().items() if not k.endswith("position_ids")}
    state = {
        ("text_model." + k if k.startswith(("embeddings", "encoder", "final")) else k): v
        for k, v in state.items()
    }
    oc = clip_to_openclip(state, "")
    back = convert_openclip(oc, 32)
    assert sorted(back) == sorted(state)
    assert all(back[k].shape == state[k].shape for k in state)
    cfg = _clip_config_from_shapes(back, openclip=True)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (1280, 20, 32)
    assert (cfg.intermediate_size, cfg.projection_dim, cfg.hidden_act) == (5120, 1280, "gelu")
    # SD 2.x: the last resblock is dropped (the penultimate layer conditions the UNet)
    assert len({k.split(".")[3] for k in convert_openclip(oc, 31) if ".layers." in k}) == 31


def test_sd2_layout_openclip_with_dropped_last_layer(tmp_path):
    """An SD 2.x-style file: the text tower is OpenCLIP (``cond_stage_model.model.*``) with one
    resblock more than diffusers keeps (SD 2.x conditions on the penultimate layer)."""
    folder = tiny_sd_dir("sd1")
    load, cfg = _parts(folder)
    ldm = {**unet_to_ldm(load("unet"), cfg["unet"]), **vae_to_ldm(load("vae"), cfg["vae"])}
    te = {
        ("text_model." + k if not k.startswith("text_model.") else k): v
        for k, v in load("text_encoder").items()
    }
    hidden = te["text_model.final_layer_norm.weight"].shape[0]
    extra = {
        k.replace(".layers.1.", ".layers.2."): v + 1 for k, v in te.items() if ".layers.1." in k
    }
    te = {**te, **extra, "text_projection.weight": torch.eye(hidden)}
    ldm.update(clip_to_openclip(te, "cond_stage_model.model."))
    path = tmp_path / "sd2-style.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))

    parts = load_single_file(path, config=folder)
    assert parts.family == "sd2"
    assert parts.scheduler_config["prediction_type"] == "epsilon"  # the config folder's
    v = load_single_file(path, config=folder, prediction_type="v_prediction")
    assert v.scheduler_config["prediction_type"] == "v_prediction"
    _equal(parts.text_encoders[0].state_dict(), load("text_encoder"))  # layer 2 dropped
    a = load_sd_pipeline(path, config=folder)("a red house", seed=1, steps=1)
    b = load_sd_pipeline(folder)("a red house", seed=1, steps=1)
    diff = np.abs(np.asarray(a.image, np.float64) - np.asarray(b.image, np.float64))
    assert diff.mean() <= 1 / 255


@pytest.mark.parametrize("preset", ["sd15", "sdxl"])
def test_unet_config_of_a_single_file_header(preset):
    """The config a full-size file implies from its keys and shapes alone: the family's
    published one; a narrowed UNet is refused (it needs its diffusers folder as config)."""
    from types import SimpleNamespace

    from unetviz import UNetConfig, build_unet
    from unetviz.names import ldm_key
    from unetviz.single_file import unet_config_of

    cfg = UNetConfig.preset(preset)
    model = build_unet(cfg, device="meta")
    shapes = {
        "model.diffusion_model." + ldm_key(k, cfg): tuple(v.shape)
        for k, v in model.state_dict().items()
    }
    assert not any(k.endswith(".None") for k in shapes)
    sf = SimpleNamespace(keys=list(shapes), shapes=shapes, path="x.safetensors")
    assert unet_config_of(sf) == cfg
    narrow = {
        k: ((32, *v[1:]) if k.endswith("input_blocks.0.0.weight") else v) for k, v in shapes.items()
    }
    with pytest.raises(SingleFileError, match="not the published"):
        unet_config_of(SimpleNamespace(keys=list(narrow), shapes=narrow, path="x.safetensors"))


def test_single_file_without_config_or_cached_tokenizer_is_one_clear_error():
    """No config folder and no CLIP tokenizer in the (empty, offline) Hugging Face cache: one
    SingleFileError naming config=, never transformers' empty stand-in tokenizer (2 tokens,
    no length limit) that breaks the prompt later."""
    from transformers import CLIPTokenizer

    from unetviz.single_file import TOKENIZER_CACHE_REPO, _tokenizer

    cached = CLIPTokenizer.from_pretrained(TOKENIZER_CACHE_REPO, local_files_only=True)
    if len(cached) > 1000:
        pytest.skip("the CLIP tokenizer is in this machine's Hugging Face cache")
    with pytest.raises(SingleFileError, match="pass config="):
        _tokenizer(None, "tokenizer", openclip=False)


# ---------------------------------------------------------------- memory
def _torch_peak(fn):
    """(result, peak, final): bytes held by torch's CPU allocator while ``fn`` runs, from the
    profiler's allocation and free events in time order. Deterministic: it counts the bytes of
    tensors alive, not pages (so it is blind to a memory-mapped file: the test after checks that
    separately)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    now = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        now += event.self_cpu_memory_usage
        peak = max(peak, now)
    return out, peak, now


@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["file-dtype", "cast-float16"])
def test_single_file_load_holds_one_copy_of_the_weights(ldm_file, dtype):
    """Converting every part (key renames, q/k/v splits, 1x1 convs, a dtype cast) never holds
    more than the loaded model plus two tensors (a cast's reused read buffer and the tensor in
    flight): no upcast or copy of the whole state dict."""
    kind, path, ldm = ldm_file
    parts, peak, final = _torch_peak(
        lambda: load_single_file(path, dtype=dtype, config=tiny_sd_dir(kind))
    )
    assert parts.family == kind
    size = path.stat().st_size  # the tiny files are float32
    largest = max(v.numel() * v.element_size() for v in ldm.values())
    assert final <= size * (0.5 if dtype == torch.float16 else 1.0)
    assert peak <= final + 2 * largest, (peak, final, largest)


def test_single_file_is_read_not_mapped(ldm_file):
    """Tensors are read into their own storage: the file is never memory-mapped, whose pages
    would count towards the process's memory on top of the converted model (a full-size
    SD 1.5 file loaded at 3.1x its size that way, against 2.1x read)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps on this system")
    _, path, _ = ldm_file
    with SingleFile(path) as sf:
        assert sf.tensor(sf.keys[0]).numel() > 0
        assert str(path) not in maps.read_text()


def test_openclip_conversion_can_consume_its_input():
    """``consume=True`` pops each tensor as it converts it, so a split in_proj is never held
    twice (a quarter of OpenCLIP bigG's weights); the default leaves the input as it was."""
    from unetviz.single_file import convert_openclip

    width = 8
    raw = {
        "token_embedding.weight": torch.zeros(10, width),
        "positional_embedding": torch.zeros(4, width),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3 * width, width),
        "transformer.resblocks.0.attn.in_proj_bias": torch.zeros(3 * width),
    }
    kept = convert_openclip(dict(raw), 1)
    consumed = dict(raw)
    assert convert_openclip(consumed, 1, consume=True).keys() == kept.keys()
    assert consumed == {}


def test_asymmetric_single_file_loads_with_its_config(tmp_path):
    """An SSD-1B-layout UNet (per-layer depths, a one-resnet mid block) as LDM keys loads with
    its config, tensor for tensor."""
    import json

    from unetviz import build_unet
    from unetviz.config import UNetConfig
    from unetviz.single_file import load_unet_from_single_file

    data = json.loads((ROOT / "tests/data/unet_configs/ssd_1b.json").read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    data.update(
        block_out_channels=[16, 32, 64],
        attention_head_dim=[1, 2, 4],
        cross_attention_dim=16,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
        norm_num_groups=8,
    )
    cfg = UNetConfig.from_dict(data)
    model = build_unet(cfg, device="cpu")
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_()
    ldm = unet_to_ldm(model.state_dict(), cfg.to_dict())
    path = tmp_path / "ssd.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    with SingleFile(path) as sf:
        loaded = load_unet_from_single_file(sf, cfg)
    _equal(loaded.state_dict(), model.state_dict())


def test_missing_tokenizer_fails_before_any_weight_is_read(ldm_file, monkeypatch):
    """No config folder and no cached tokenizer: the one clear error comes before the
    gigabytes of a full-size file are read (only its header is)."""
    from transformers import CLIPTokenizer

    from unetviz.single_file import TOKENIZER_CACHE_REPO

    if len(CLIPTokenizer.from_pretrained(TOKENIZER_CACHE_REPO, local_files_only=True)) > 1000:
        pytest.skip("the CLIP tokenizer is in this machine's Hugging Face cache")
    kind, path, _ = ldm_file
    read: list[str] = []
    monkeypatch.setattr(SingleFile, "tensor", lambda self, key: read.append(key))
    monkeypatch.setattr("unetviz.single_file.unet_config_of", lambda sf, family=None: None)
    with pytest.raises(SingleFileError, match="pass config="):
        load_single_file(path)
    assert read == []

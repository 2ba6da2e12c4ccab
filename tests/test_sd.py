"""Real Stable Diffusion pipelines (issue 7): parity with diffusers on tiny random SD 1.x and
SDXL pipelines saved with save_pretrained, token maps, prompts, and bad inputs."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests.sd_tiny import one_thread, tiny_sd_dir  # noqa: E402
from unetviz.config import ConfigError  # noqa: E402
from unetviz.detect import ModelPathError  # noqa: E402
from unetviz.pipelines.base import PipelineError, Run  # noqa: E402
from unetviz.pipelines.sd import (  # noqa: E402
    PromptTruncatedWarning,
    SDPipeline,
    load_sd_pipeline,
    require_sd_extra,
)
from unetviz.weights import WeightsError  # noqa: E402

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

PROMPT = "a photo of a zebra cat"


def _reference(kind: str, scheduler_cls: type):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if kind == "sd1" else StableDiffusionXLPipeline
    ref = cls.from_pretrained(tiny_sd_dir(kind))
    ref.scheduler = scheduler_cls.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    return ref


def _mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


@pytest.mark.parametrize(
    "kind,scheduler,negative",
    [
        ("sd1", "ddim", ""),
        ("sd1", "euler", "blurry ugly"),
        ("sd1", "dpm", "blurry"),
        ("sdxl", "euler", ""),
        ("sdxl", "dpm", "low quality"),
    ],
)
def test_image_matches_diffusers(kind, scheduler, negative):
    pipe = load_sd_pipeline(tiny_sd_dir(kind), scheduler=scheduler)
    steps = []
    run = pipe(
        PROMPT,
        negative_prompt=negative,
        seed=7,
        steps=3,
        progress=lambda i, n: steps.append((i, n)),
    )
    ref = _reference(kind, type(pipe.scheduler))
    image = ref(
        PROMPT,
        negative_prompt=negative or None,  # diffusers' default: SDXL zeroes an empty negative
        generator=torch.Generator("cpu").manual_seed(7),
        num_inference_steps=3,
        guidance_scale=pipe.default_guidance,
    ).images[0]
    assert isinstance(run, Run)
    assert run.image.size == image.size == (32, 32)
    assert _mean_abs(run.image, image) <= 1 / 255
    assert steps == [(1, 3), (2, 3), (3, 3)]

    trace = run.trace
    assert trace.meta["cfg"] is True and trace.meta["family"] == kind
    assert trace.meta["scheduler"] == type(pipe.scheduler).__name__
    assert len(trace.timesteps) == 3
    assert len(trace.tokens) == len(trace.words) == 77
    assert trace.attention and all(len(r.maps) == 3 for r in trace.attention.values())
    for rec in trace.attention.values():
        assert rec.maps[-1].shape[-1] == 77  # a map for every token position
    eos = trace.tokens.index("<|endoftext|>")
    for i in range(eos + 2):  # every prompt token, SOS, EOS and the first padding token
        hm = trace.heatmap(i, size=32)
        assert hm.shape == (32, 32) and torch.isfinite(hm).all()


def test_tokens_labels_and_words():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    run = pipe(PROMPT, seed=0, steps=1)
    assert run.tokens[:6] == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "z"]
    eos = run.tokens.index("<|endoftext|>")
    assert run.tokens[eos - 1] == "cat</w>"
    assert run.words[:6] == [None, "a", "photo", "of", "a", "zebra"]
    assert run.words[eos - 5 : eos] == ["zebra"] * 4 + ["cat"]  # z e b r a</w> merged
    assert run.words[eos:] == [None] * (77 - eos)
    assert run.trace.tokens == run.tokens and run.trace.words == run.words
    zebra = run.trace.heatmap("zebra")
    assert zebra.ndim == 2 and torch.isfinite(zebra).all()
    assert run.trace.token_indices("zebra") == list(range(5, 10))


def test_negative_prompt_maps_from_the_unconditional_half():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    cond = pipe(PROMPT, negative_prompt="blurry house", seed=1, steps=2)
    uncond = pipe(PROMPT, negative_prompt="blurry house", seed=1, steps=2, half="uncond")
    assert np.array_equal(np.asarray(cond.image), np.asarray(uncond.image))
    assert uncond.trace.tokens[:4] == [
        "<|startoftext|>",
        "blurry</w>",
        "house</w>",
        "<|endoftext|>",
    ]
    assert uncond.trace.meta["tokens_of"] == "negative_prompt"
    assert uncond.extra["negative_words"][1:3] == ["blurry", "house"]
    name = next(iter(cond.trace.attention))
    a, b = cond.trace.attention[name].maps[0], uncond.trace.attention[name].maps[0]
    assert not torch.equal(a, b)
    assert uncond.trace.heatmap("house").shape == cond.trace.heatmap("cat").shape


def test_long_prompt_in_chunks_every_token_keeps_its_map():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    prompt = " ".join(["red cat"] * 40) + " astronaut riding horse"  # 83 tokens: 2 chunks
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        run = pipe(prompt, negative_prompt="blurry", seed=0, steps=1)
    assert len(run.tokens) == len(run.trace.tokens) == 154 and run.trace.meta["chunks"] == 2
    assert run.tokens[77] == "<|startoftext|>" and run.tokens[76] == "<|endoftext|>"
    second = run.trace.token_indices("astronaut")
    assert second and min(second) > 77 and run.words[second[0]] == "astronaut"  # chunk 2
    assert run.trace.heatmap("horse").ndim == 2
    assert len(run.extra["negative_tokens"]) == 154  # padded with an empty chunk
    for rec in run.trace.attention.values():
        assert rec.maps[-1].shape[-1] == 154
    assert run.trace.meta["truncated"] == ""


def test_prompt_beyond_four_chunks_is_truncated_with_a_warning(tmp_path):
    from unetviz import Trace

    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    prompt = " ".join(["red cat"] * 200)  # 400 tokens
    with pytest.warns(PromptTruncatedWarning, match="400 tokens.*4 chunks of 75.*truncated"):
        run = pipe(prompt, seed=0, steps=1)
    assert run.extra["truncated"].startswith("red cat red cat")
    assert run.trace.meta["truncated"] == run.extra["truncated"]
    assert len(run.tokens) == 4 * 77 and run.tokens[-1] == "<|endoftext|>"
    run.trace.save(tmp_path / "long.trace")  # 308 tokens: the most a trace bundle holds
    back = Trace.load(tmp_path / "long.trace")
    assert back.tokens == run.tokens and back.meta["chunks"] == 4


def test_emphasis_weights_tokens_meta_and_embeddings():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    plain = pipe.encode("a red (cat:1.5) on a [mat]", "", False)
    bare = pipe.encode("a red cat on a mat", "", False)
    assert plain[2].labels == bare[2].labels  # no bracket tokens
    assert not torch.equal(plain[0], bare[0])
    z, w = bare[0], torch.tensor(plain[2].weights).view(1, -1, 1)
    expected = z * w * (z.mean() / (z * w).mean())  # sd_emphasis.py EmphasisOriginal
    assert torch.allclose(plain[0], expected, atol=1e-6)
    literal = pipe.encode("a (cat:1.5)", "", False, syntax="literal")[2]
    assert "(</w>" in literal.labels or "(" in literal.labels
    run = pipe("a red (cat:1.5) on a [mat]", seed=0, steps=1)
    meta = run.trace.meta
    assert meta["syntax"] == "a1111" and meta["emphasis_mode"] == "embeddings"
    assert meta["emphasis"] == [
        {"word": "cat", "weight": 1.5, "tokens": [3]},
        {"word": "mat", "weight": pytest.approx(1 / 1.1), "tokens": [6]},
    ]
    assert meta["token_weights"][3] == 1.5 and run.words[3] == "cat"
    rew = pipe("a red (cat:1.5) on a [mat]", seed=0, steps=1, emphasis="reweight")
    edits = rew.trace.meta["edits"]
    assert [(e["edit"], e["scale"]) for e in edits][0] == ("Reweight", 1.5)
    with pytest.raises(ValueError, match="syntax='a1112'"):
        pipe("a cat", steps=1, syntax="a1112")


def test_long_prompt_embeddings_equal_compel():
    """SD pipeline embeddings of a 2-chunk prompt = compel's with truncate_long_prompts=False
    (split at the 75-token boundary: compel's BRUTAL split, which A1111's equals when no comma
    is within 20 tokens of it)."""
    compel = pytest.importorskip("compel")
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    prompt = " ".join(["red cat"] * 40) + " astronaut riding horse"
    ours = pipe.encode(prompt, "", False)[0]
    comp = compel.Compel(
        tokenizer=pipe.tokenizers[0],
        text_encoder=pipe.text_encoders[0],
        truncate_long_prompts=False,
        split_long_text_mode=compel.SplitLongTextMode.BRUTAL,
    )
    with torch.no_grad():
        ref = comp(prompt)
    assert ours.shape == ref.shape == (1, 154, 32)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


def test_no_guidance_runs_without_cfg_batch():
    pipe = load_sd_pipeline(tiny_sd_dir("sdxl"))
    run = pipe("a red house", seed=0, steps=2, guidance=1.0)
    assert run.trace.meta["cfg"] is False and run.trace.meta["batch"] == 1
    assert run.image.size == (32, 32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_dtypes(dtype):
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"), dtype=dtype)
    assert pipe.dtype == getattr(torch, dtype)
    assert pipe.text_encoders[0].dtype == pipe.vae.dtype == pipe.dtype
    ref = load_sd_pipeline(tiny_sd_dir("sd1"))
    a = pipe("a cat", seed=2, steps=1)
    b = ref("a cat", seed=2, steps=1)
    assert _mean_abs(a.image, b.image) < 8  # same picture, lower precision
    assert a.trace.meta["dtype"] == dtype


def test_load_pipeline_routes_sd_folders():
    import unetviz

    pipe = unetviz.load_pipeline(tiny_sd_dir("sd1"))
    assert isinstance(pipe, SDPipeline)
    assert pipe.family == "sd1" and pipe.name == "sd1"


def test_trace_bundle_roundtrip(tmp_path):
    from unetviz import Trace

    run = load_sd_pipeline(tiny_sd_dir("sd1"))("a cat on a mat", seed=0, steps=2)
    path = run.trace.save(tmp_path / "run.trace")
    back = Trace.load(path)
    assert back.tokens == run.trace.tokens and back.words == run.trace.words
    assert back.meta["prompt"] == "a cat on a mat"
    torch.testing.assert_close(back.heatmap("mat"), run.trace.heatmap("mat"))


# ---------------------------------------------------------------------------- bad inputs
def _copy(tmp_path, kind="sd1"):
    dst = tmp_path / f"copy-{kind}"
    shutil.copytree(tiny_sd_dir(kind), dst)
    return dst


def test_missing_subfolder(tmp_path):
    folder = _copy(tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(PipelineError, match=r"missing its vae/ subfolder"):
        load_sd_pipeline(folder)


def test_folder_of_another_model_type(tmp_path):
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(PipelineError, match="FluxPipeline.*FLUX"):
        load_sd_pipeline(flux)
    # a transformers model folder (no model_index.json): say what it is
    with pytest.raises(PipelineError, match="CLIPTextModel model"):
        load_sd_pipeline(tiny_sd_dir("sd1") / "text_encoder")
    with pytest.raises(PipelineError, match="single UNet2DConditionModel folder"):
        load_sd_pipeline(tiny_sd_dir("sd1") / "unet")
    other = _copy(tmp_path)
    index = json.loads((other / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match="UNet2DModel"):
        load_sd_pipeline(other)
    with pytest.raises(ModelPathError, match="not found"):
        load_sd_pipeline(tmp_path / "nowhere")


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder"])
def test_truncated_safetensors(tmp_path, part):
    folder = _copy(tmp_path)
    file = next((folder / part).glob("*.safetensors"))
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_sd_pipeline(folder)
    assert str(file) in str(info.value)


def test_pickle_only_folder_and_ckpt(tmp_path):
    ckpt = tmp_path / "v1-5-pruned.ckpt"
    ckpt.write_bytes(b"not unpickled")
    with pytest.raises(ModelPathError, match="never unpickles"):
        load_sd_pipeline(ckpt)


def test_bad_call_arguments():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    with pytest.raises(ConfigError, match="height=30"):
        pipe("a cat", height=30, steps=1)
    with pytest.raises(PipelineError, match="steps=0: expected a whole number 1..1000"):
        pipe("a cat", steps=0)
    with pytest.raises(PipelineError, match="unknown scheduler 'heun2'"):
        load_sd_pipeline(tiny_sd_dir("sd1"), scheduler="heun2")
    with pytest.raises(WeightsError, match="unknown dtype"):
        load_sd_pipeline(tiny_sd_dir("sd1"), dtype="float8")


def test_missing_sd_extra_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(PipelineError, match=r"unetviz\[sd\]"):
        require_sd_extra()


def test_no_warning_for_short_prompt():
    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        pipe("a cat", seed=0, steps=1)


def test_fp16_variant_files_and_pickle_only_parts(tmp_path):
    folder = _copy(tmp_path)
    for sub in ("unet", "vae", "text_encoder"):
        for f in (folder / sub).glob("*.safetensors"):
            f.rename(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")))
    a = load_sd_pipeline(folder)("a cat", seed=0, steps=1)
    b = load_sd_pipeline(tiny_sd_dir("sd1"))("a cat", seed=0, steps=1)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.trace.meta["model_path"] == str(folder)

    pickled = _copy(tmp_path / "p")
    vae_file = next((pickled / "vae").glob("*.safetensors"))
    vae_file.rename(vae_file.with_suffix(".bin"))
    with pytest.raises(PipelineError, match=r"only has pickle weights .*never unpickles"):
        load_sd_pipeline(pickled)


def test_repo_id_from_the_local_hf_cache(tmp_path, monkeypatch):
    """``org/name`` resolves offline to a snapshot already in the Hugging Face cache."""
    import huggingface_hub.constants as hf_constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd"
    shutil.copytree(tiny_sd_dir("sd1"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_sd_pipeline("tiny-org/tiny-sd")
    assert pipe.family == "sd1"
    assert pipe.parts.extra["path"] == str(repo / "snapshots" / commit)
    with pytest.raises(PipelineError, match="nor a repo id in the local Hugging Face cache"):
        load_sd_pipeline("tiny-org/not-cached")


def test_both_pipelines_write_one_meta_schema_and_keep_daam_sums():
    """The demo and SD runs share one skeleton: the same trace meta keys, DAAM's per-head sums
    kept by default (``daam=False`` drops them), CFG on by diffusers' ``guidance > 1`` rule."""
    from unetviz.pipelines import load_pipeline

    pipe = load_sd_pipeline(tiny_sd_dir("sd1"))
    sd = pipe(PROMPT, seed=0, steps=1)
    demo = load_pipeline("demo")("a red circle", seed=0, steps=1)
    assert set(sd.trace.meta) == set(demo.trace.meta)
    side = 32 // pipe.vae_scale_factor
    assert sd.trace.meta["vae_scale_factor"] == pipe.vae_scale_factor == 2
    assert sd.trace.meta["latent_shape"] == [4, side, side]
    assert demo.trace.meta["vae_scale_factor"] == 4 and demo.trace.meta["latent_shape"] == [
        4,
        24,
        24,
    ]
    assert any(r.head_sum is not None for r in sd.trace.attention.values())
    assert demo.trace.heatmap("red", preset="daam").shape == (96, 96)
    lean = load_pipeline("demo")("a red circle", seed=0, steps=1, daam=False)
    assert all(r.head_sum is None for r in lean.trace.attention.values())
    for guidance, cfg in ((0.0, False), (1.0, False), (1.5, True)):
        run = load_pipeline("demo")("a red circle", seed=0, steps=1, guidance=guidance)
        assert run.trace.meta["cfg"] is cfg and run.trace.meta["batch"] == (2 if cfg else 1)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_compel_syntax_is_compels_own_encoding(kind):
    compel = pytest.importorskip("compel")
    pipe = load_sd_pipeline(tiny_sd_dir(kind))
    prompt = "a red++ cat on a (mat)0.8"
    embeds, pooled, pos, _ = pipe.encode(prompt, "blurry", True, syntax="compel")
    if kind == "sd1":
        ref = compel.Compel(pipe.tokenizers[0], pipe.text_encoders[0], truncate_long_prompts=False)
        cond = ref(prompt)
    else:
        ref = compel.Compel(
            pipe.tokenizers,
            pipe.text_encoders,
            returned_embeddings_type=compel.ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled=[False, True],
            truncate_long_prompts=False,
        )
        cond, ref_pooled = ref(prompt)
        assert torch.equal(pooled[1:], ref_pooled)
    assert torch.equal(embeds[1:], cond)
    assert pos.words[1:6] == ["a", "red", "cat", "on", "a"] and pos.labels[6] == "mat</w>"
    assert pos.weights[2] == pytest.approx(1.1**2) and pos.weights[6] == pytest.approx(0.8)
    run = pipe(prompt, seed=0, steps=1, syntax="compel")
    assert run.trace.meta["syntax"] == "compel" and run.trace.heatmap("red").ndim == 2
    with pytest.raises(ValueError, match="blends, conjunctions or swaps"):
        pipe('("a cat", "a dog").blend(0.5, 0.5)', steps=1, syntax="compel")

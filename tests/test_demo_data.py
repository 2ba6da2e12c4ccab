"""The demo model's data, tokenizer, text encoder, schedule and pixel scoring (no weights)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from unetviz.pipelines.demo import (
    DEMO_DIR,
    DDIMSchedule,
    DemoTextEncoder,
    TextEncoderConfig,
    UnknownWordError,
    WordTokenizer,
    added_conditions,
    demo_unet_config,
)
from unetviz.training.data import (
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZE_SPLIT,
    SIZES,
    WORDS,
    eval_scenes,
    make_batch,
    make_scene,
    shape_mask,
)
from unetviz.training.evaluate import (
    adherence,
    centred_blob,
    classify_pixels,
    classify_shape,
    daam_binary,
    iou,
    largest_component,
    probe,
    score_scenes,
    size_ok,
)

V1_WORDS = ("a", "on", "the", "and", "red", "green", "blue", "yellow", "circle", "square")
V1_WORDS += ("triangle", *POSITIONS)


def test_scenes_have_exact_disjoint_masks_and_captions_in_the_grammar():
    rng = random.Random(0)
    seen: set[str] = set()
    for _ in range(150):
        scene = make_scene(rng, 96)
        words = scene.caption.split()
        seen |= set(words)
        assert 1 <= len(scene.objects) <= 2 and set(words) <= set(WORDS)
        painted = scene.image.max(-1) > 0
        union = np.zeros_like(painted)
        for obj in scene.objects:
            assert obj.mask.sum() >= 60, obj
            assert np.allclose(scene.image[obj.mask], PALETTE[obj.colour])
            assert not (union & obj.mask).any()
            union |= obj.mask
            assert scene.word_mask(obj.shape) is obj.mask
            assert scene.word_mask(obj.colour) is obj.mask
            assert obj.phrase() in scene.caption
        assert (painted == union).all()
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert a.shape != b.shape and a.colour != b.colour
    assert seen == set(WORDS)  # every vocabulary word occurs in the data


def test_position_and_size_words_match_the_object():
    rng = random.Random(1)
    seen = {"position": 0, "size": 0}
    for _ in range(300):
        scene = make_scene(rng, 96)
        for obj in scene.objects:
            if obj.position is not None:
                seen["position"] += 1
                ys, xs = np.nonzero(obj.mask)
                cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
                expect = {"left": cx < 48, "right": cx > 48, "top": cy < 48, "bottom": cy > 48}
                assert expect[obj.position], (obj.position, cx, cy)
            if obj.size_word is not None:
                seen["size"] += 1
                n = len(scene.objects)
                assert (obj.r / 96 < SIZE_SPLIT[n]) == (obj.size_word == "small"), obj
                if n == 2:  # two-object scores read the object's own colour pixels
                    assert size_ok(obj.mask, obj.shape, obj.size_word, n), obj
    assert seen["position"] > 100 and seen["size"] > 100


def test_draws_restricted_to_a_vocabulary_use_only_its_words():
    for n in (1, 2):
        for scene in eval_scenes(40, 24, n, words=V1_WORDS):
            assert set(scene.caption.split()) <= set(V1_WORDS), scene.caption
    assert eval_scenes(3, 96, 2)[0].caption == eval_scenes(3, 96, 2)[0].caption


def test_batches_and_eval_sets_are_deterministic():
    a = make_batch(random.Random(3), 4, 96)
    b = make_batch(random.Random(3), 4, 96)
    assert a[0].shape == (4, 3, 96, 96) and a[0].min() >= -1 and a[0].max() <= 1
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert all(len(s.objects) == 2 for s in eval_scenes(5, 96, 2))


def test_tokenizer_labels_words_and_errors():
    tok = WordTokenizer(WORDS, max_length=16)
    ids, labels, words = tok.encode("A small red circle, on the left.")
    assert len(ids) == len(labels) == len(words) == 16
    assert labels[:8] == ["<bos>", "a", "small", "red", "circle", "on", "the", "left"]
    assert labels[8] == "<eos>" and labels[9] == "<pad>"
    assert words[0] is None and words[4] == "circle" and words[8] is None
    assert tok.encode("")[1][:3] == ["<bos>", "<eos>", "<pad>"]
    with pytest.raises(UnknownWordError, match=r"'purple'.*knows only: a on the and red"):
        tok.encode("a purple circle")
    with pytest.raises(UnknownWordError, match="'<pad>'"):
        tok.encode("a <pad> circle")
    with pytest.raises(ValueError, match="at most 14"):
        tok.encode(" ".join(["a"] * 15))


def test_tokenizer_round_trip(tmp_path):
    tok = WordTokenizer(WORDS, max_length=16)
    tok.save(tmp_path)
    again = WordTokenizer.load(tmp_path)
    assert again.vocab == tok.vocab and again.max_length == 16


def test_text_encoder_special_tokens_carry_no_caption_content_and_pooling_sees_it_all():
    torch.manual_seed(0)
    tok = WordTokenizer(WORDS)
    config = TextEncoderConfig(vocab_size=len(tok.vocab), projection_dim=64)
    enc = DemoTextEncoder(config).eval()
    with torch.no_grad():
        a, pa = enc.encode(tok(["a red circle on the left"]))
        b, pb = enc.encode(tok(["a red circle on the right"]))
        _, empty = enc.encode(tok([""]))
    assert a.shape == (1, 16, 64) and pa.shape == (1, 64)
    # <bos> and the <pad>s are identical; causal: "circle" does not see "left"/"right"
    assert torch.allclose(a[0, 0], b[0, 0]) and torch.allclose(a[0, -1], b[0, -1])
    assert torch.allclose(a[0, 3], b[0, 3]) and not torch.allclose(a[0, 6], b[0, 6])
    # the pooled embedding is the last word's state: it tells left from right
    assert not torch.allclose(pa, pb) and torch.equal(empty, torch.zeros(1, 64))
    added = added_conditions(pa, 96)
    assert added["time_ids"].tolist() == [[96, 96, 0, 0, 96, 96]]
    v1 = DemoTextEncoder(TextEncoderConfig(vocab_size=len(tok.vocab)))
    assert v1.encode(tok(["a red circle"]))[1] is None and not hasattr(v1, "text_projection")


def test_schedule_noise_and_ddim_step_invert_exactly():
    sched = DDIMSchedule()
    ab = sched.alphas_cumprod
    assert ab[0] > 0.999 and ab[-1] < 1e-3 and (ab[1:] <= ab[:-1]).all()
    ts = sched.timesteps(25)
    assert ts[0] == 999 and len(ts) == 25 and ts == sorted(ts, reverse=True)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn(2, 3, 8, 8)
    x_t, v = sched.add_noise(x0, noise, torch.tensor([500, 500]))
    # with the true v, a DDIM step to "clean" returns x0
    assert torch.allclose(sched.step(v, 500, -1, x_t), x0, atol=1e-4)
    # latents are not clipped to [-1, 1]
    latent = x0 * 3
    x_t, v = sched.add_noise(latent, noise, torch.tensor([500, 500]))
    assert torch.allclose(DDIMSchedule(clip_sample=False).step(v, 500, -1, x_t), latent, atol=1e-4)
    assert DDIMSchedule(clip_sample=False).to_dict()["clip_sample"] is False


def test_demo_unet_config_is_the_shipped_one_with_the_seed_structure():
    from unetviz import UNetConfig

    shipped = json.loads((DEMO_DIR / "unet" / "config.json").read_text())
    assert demo_unet_config() == shipped
    cfg = UNetConfig.from_dict(demo_unet_config())
    assert cfg.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert cfg.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    for ch, heads in zip(cfg.block_out_channels, cfg.heads, strict=True):
        assert ch // heads >= 16


def test_pixel_scoring_on_ground_truth_images_is_perfect():
    for n_obj in (1, 2):
        scenes = eval_scenes(16, 96, n_obj)
        images = np.stack([s.image for s in scenes])
        maps = [
            {
                w: torch.from_numpy(s.word_mask(w).astype(np.float32))
                for w in SHAPES + COLOURS
                if s.word_mask(w) is not None
            }
            for s in scenes
        ]
        scores = score_scenes(scenes, images, maps)
        assert scores["colour_acc"] == 1.0 and scores["shape_acc"] == 1.0
        assert scores["position_acc"] == 1.0 and scores["size_acc"] == 1.0
        assert scores["noun_miou"] == 1.0 and scores["colour_miou"] == 1.0
        assert scores["blob_noun_miou"] < 0.5


def test_shape_classifier_tells_every_shape_apart():
    for shape in SHAPES:
        for r in (6.0, 11.0, 25.0):
            mask = shape_mask(shape, 40.3, 51.7, r, 96)
            assert classify_shape(mask) == shape, (shape, r)
    assert classify_shape(np.zeros((96, 96), bool)) is None
    # with the v1 shapes only, a diamond-looking mask is still named among them
    assert classify_shape(shape_mask("square", 48, 48, 10, 96), SHAPES[:3]) == "square"


def test_shape_reader_ignores_stray_pixels_of_the_colour():
    """Where two colours blend, single pixels of a third colour appear; the reader reads the
    object (its largest 4-connected region), not a bounding box stretched by those pixels."""
    scene = eval_scenes(4, 96, 2)[1]
    image = scene.image.copy()
    first = scene.objects[0]
    ys, xs = np.nonzero(first.mask)
    far = (95 if ys.mean() < 48 else 0, 95 if xs.mean() < 48 else 0)
    image[far] = PALETTE[first.colour]  # one stray pixel in the far corner
    own = classify_pixels(image) == COLOURS.index(first.colour)
    assert classify_shape(own) != first.shape  # the stray pixel fools a bounding-box fit
    assert largest_component(own).sum() == first.mask.sum()
    assert all(all(v) for v in adherence(scene, image).values())
    two = np.zeros((20, 20), bool)
    two[1:4, 1:4] = two[10:18, 10:18] = True
    assert largest_component(two).sum() == 64 and not largest_component(two)[2, 2]
    assert not largest_component(np.zeros((5, 5), bool)).any()


def test_pixel_helpers():
    img = np.zeros((96, 96, 3), np.float32)
    img[8:40, 8:40] = PALETTE["blue"]
    img[60:70, 60:70] = PALETTE["white"]
    labels = classify_pixels(img)
    assert (labels[8:40, 8:40] == COLOURS.index("blue")).all() and labels[90, 90] == -1
    assert (labels[60:70, 60:70] == COLOURS.index("white")).all()
    blob = daam_binary(centred_blob(96))
    assert blob[48, 48] and not blob[0, 0]
    assert iou(blob, blob) == 1.0 and iou(blob, ~blob) == 0.0
    scene = eval_scenes(1, 96, 1)[0]
    assert all(all(v) for v in adherence(scene, scene.image).values())
    assert set(SIZES) == {"small", "big"}


def test_probe_matches_capture_heatmap():
    """The training-time hook aggregation and unetviz.capture's DAAM preset agree."""
    from unetviz.capture import capture
    from unetviz.config import UNetConfig
    from unetviz.model.unet import UNet2DConditionModel

    torch.manual_seed(0)
    cfg = dict(demo_unet_config(added_conditions=False), in_channels=4, out_channels=4)
    unet = UNet2DConditionModel(UNetConfig.from_dict(cfg)).eval()
    ctx = torch.randn(2, 16, 64)
    x = torch.randn(2, 4, 24, 24)
    with torch.no_grad(), probe(unet, 96) as p, capture(unet, cfg=True, daam=True) as trace:
        unet(x, torch.tensor(500), ctx)
        unet(x, torch.tensor(300), ctx)
    trace.tokens = [str(i) for i in range(16)]
    for token in (1, 5):
        ours = p.sum[0, token]
        ours = (ours - ours.min()) / (ours.max() - ours.min())
        theirs = trace.heatmap(token, preset="daam", size=96)
        assert torch.allclose(ours, theirs, atol=2e-2), (ours - theirs).abs().max()


def test_unet_input_appends_coordinate_channels_only_when_configured():
    from unetviz.config import UNetConfig
    from unetviz.model.unet import UNet2DConditionModel
    from unetviz.pipelines.demo import unet_input

    cfg = demo_unet_config(added_conditions=False)
    unet5 = UNet2DConditionModel(UNetConfig.from_dict(dict(cfg, in_channels=5, out_channels=3)))
    x = torch.zeros(2, 3, 24, 24)
    inp = unet_input(unet5, x)
    assert inp.shape == (2, 5, 24, 24)
    assert inp[0, 3, 0, 0] == -1 and inp[0, 3, 0, -1] == 1  # x runs left to right
    assert inp[0, 4, 0, 0] == -1 and inp[0, 4, -1, 0] == 1  # y runs top to bottom
    unet3 = UNet2DConditionModel(UNetConfig.from_dict(dict(cfg, in_channels=3, out_channels=3)))
    assert unet_input(unet3, x) is x

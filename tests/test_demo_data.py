"""The demo model's data, tokenizer, text encoder, schedule and pixel scoring (no weights)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from unetviz.demo.data import COLOURS, PALETTE, SHAPES, WORDS, eval_scenes, make_batch, make_scene
from unetviz.demo.evaluate import (
    adherence,
    centred_blob,
    classify_pixels,
    classify_shape,
    daam_binary,
    iou,
    probe,
    score_scenes,
)
from unetviz.pipelines.demo import (
    DDIMSchedule,
    DemoTextEncoder,
    TextEncoderConfig,
    UnknownWordError,
    WordTokenizer,
    demo_unet_config,
)


def test_scenes_have_exact_disjoint_masks_and_captions_in_the_grammar():
    rng = random.Random(0)
    for _ in range(200):
        scene = make_scene(rng, 24)
        assert 1 <= len(scene.objects) <= 2
        assert set(scene.caption.split()) <= set(WORDS)
        painted = scene.image.max(-1) > 0
        union = np.zeros_like(painted)
        for obj in scene.objects:
            assert obj.mask.sum() >= 9, obj
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


def test_position_words_match_the_object_centre():
    rng = random.Random(1)
    seen = 0
    for _ in range(300):
        for obj in make_scene(rng, 24).objects:
            if obj.position is None:
                continue
            seen += 1
            ys, xs = np.nonzero(obj.mask)
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            expect = {"left": cx < 12, "right": cx > 12, "top": cy < 12, "bottom": cy > 12}
            assert expect[obj.position], (obj.position, cx, cy)
    assert seen > 100


def test_batches_and_eval_sets_are_deterministic():
    a = make_batch(random.Random(3), 8, 24)
    b = make_batch(random.Random(3), 8, 24)
    assert a[0].shape == (8, 3, 24, 24) and a[0].min() >= -1 and a[0].max() <= 1
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert [s.caption for s in eval_scenes(5, 24, 2)] == [s.caption for s in eval_scenes(5, 24, 2)]
    assert all(len(s.objects) == 2 for s in eval_scenes(5, 24, 2))


def test_tokenizer_labels_words_and_errors():
    tok = WordTokenizer(WORDS, max_length=16)
    ids, labels, words = tok.encode("A red circle, on the left.")
    assert len(ids) == len(labels) == len(words) == 16
    assert labels[:7] == ["<bos>", "a", "red", "circle", "on", "the", "left"]
    assert labels[7] == "<eos>" and labels[8] == "<pad>"
    assert words[0] is None and words[3] == "circle" and words[7] is None
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


def test_text_encoder_special_tokens_carry_no_caption_content():
    torch.manual_seed(0)
    tok = WordTokenizer(WORDS)
    enc = DemoTextEncoder(TextEncoderConfig(vocab_size=len(tok.vocab))).eval()
    with torch.no_grad():
        a = enc(tok(["a red circle"]))
        b = enc(tok(["a blue square on the left"]))
    assert a.shape == (1, 16, 64)
    # <bos> is identical; the <pad>s after both captions are identical too
    assert torch.allclose(a[0, 0], b[0, 0]) and torch.allclose(a[0, -1], b[0, -1])
    # causal: "a" (position 1) does not see the words after it
    assert torch.allclose(a[0, 1], b[0, 1])
    assert not torch.allclose(a[0, 2], b[0, 2])


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


def test_demo_unet_config_keeps_the_seed_structure_and_head_size():
    from unetviz import UNetConfig

    cfg = UNetConfig.from_dict(demo_unet_config())
    assert cfg.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert cfg.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    for ch, heads in zip(cfg.block_out_channels, cfg.heads, strict=True):
        assert ch // heads >= 16


def test_pixel_scoring_on_ground_truth_images_is_perfect():
    for n_obj in (1, 2):
        scenes = eval_scenes(16, 24, n_obj)
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
        assert scores["colour_acc"] == 1.0
        assert scores["shape_acc"] >= 0.9
        assert scores["noun_miou"] == 1.0 and scores["colour_miou"] == 1.0
        assert scores["blob_noun_miou"] < 0.4


def test_pixel_helpers():
    img = np.zeros((24, 24, 3), np.float32)
    img[2:10, 2:10] = PALETTE["blue"]
    labels = classify_pixels(img)
    assert (labels[2:10, 2:10] == COLOURS.index("blue")).all() and labels[20, 20] == -1
    assert classify_shape(labels >= 0) == "square"
    assert classify_shape(np.zeros((24, 24), bool)) is None
    blob = daam_binary(centred_blob(24))
    assert blob[12, 12] and not blob[0, 0]
    assert iou(blob, blob) == 1.0 and iou(blob, ~blob) == 0.0
    scene = eval_scenes(1, 24, 1)[0]
    assert all(all(v) for v in adherence(scene, scene.image).values())


def test_probe_matches_capture_heatmap():
    """The training-time hook aggregation and unetviz.capture's DAAM preset agree."""
    import unetviz
    from unetviz import UNet2DConditionModel, UNetConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(demo_unet_config())).eval()
    ctx = torch.randn(2, 16, 64)
    x = torch.randn(2, 5, 24, 24)
    with torch.no_grad(), probe(unet, 24) as p, unetviz.capture(unet, cfg=True) as trace:
        unet(x, torch.tensor(500), ctx)
        unet(x, torch.tensor(300), ctx)
    trace.tokens = [str(i) for i in range(16)]
    for token in (1, 5):
        ours = p.sum[0, token]
        ours = (ours - ours.min()) / (ours.max() - ours.min())
        theirs = trace.heatmap(token, preset="daam", size=24)
        assert torch.allclose(ours, theirs, atol=2e-2), (ours - theirs).abs().max()


def test_unet_input_appends_coordinate_channels_only_when_configured():
    from unetviz import UNet2DConditionModel, UNetConfig
    from unetviz.pipelines.demo import unet_input

    cfg = demo_unet_config()
    unet5 = UNet2DConditionModel(UNetConfig.from_dict(cfg))
    x = torch.zeros(2, 3, 24, 24)
    inp = unet_input(unet5, x)
    assert inp.shape == (2, 5, 24, 24)
    assert inp[0, 3, 0, 0] == -1 and inp[0, 3, 0, -1] == 1  # x runs left to right
    assert inp[0, 4, 0, 0] == -1 and inp[0, 4, -1, 0] == 1  # y runs top to bottom
    unet3 = UNet2DConditionModel(UNetConfig.from_dict(dict(cfg, in_channels=3)))
    assert unet_input(unet3, x) is x

"""Training tools of the demo model: the token grounding loss, the bidirectional text encoder,
dropping a word class and adding coordinate channels to a checkpoint (no shipped weights)."""

from __future__ import annotations

import random

import torch

from unetviz.config import UNetConfig
from unetviz.model.unet import UNet2DConditionModel
from unetviz.pipelines.demo import DemoTextEncoder, TextEncoderConfig, WordTokenizer
from unetviz.training.data import MAX_TOKENS, WORDS, make_batch
from unetviz.training.ground import grounding_loss, recording, scene_masks, token_objects
from unetviz.training.unet import latent_unet_config


def test_token_objects_follow_the_caption_grammar():
    caption = "a small red circle on the left and a blue square on the right"
    got = token_objects(caption, MAX_TOKENS)
    words = ["<bos>", *caption.split()]
    named = {w: o for w, o in zip(words, got, strict=False) if o >= 0}
    assert named == {"small": 0, "red": 0, "circle": 0, "left": 0}.__or__(
        {"blue": 1, "square": 1, "right": 1}
    )
    assert got[0] == -1 and got[words.index("and")] == -1 and len(got) == MAX_TOKENS


def test_scene_masks_are_the_exact_masks_pooled_to_the_latent_grid():
    _, captions, scenes = make_batch(random.Random(3), 6, 96)
    masks, index = scene_masks(scenes, MAX_TOKENS)
    assert masks.shape == (6, 2, 24, 24) and index.shape == (6, MAX_TOKENS)
    for k, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):  # area is kept: 16 pixels per latent cell
            assert abs(masks[k, j].float().sum().item() * 16 - obj.mask.sum()) < 1.0
        assert index[k].tolist() == token_objects(captions[k], MAX_TOKENS)


def test_grounding_loss_is_zero_inside_the_mask_and_grows_outside():
    masks = torch.zeros(1, 2, 24, 24)
    masks[0, 0, :, :12] = 1  # object 0 fills the left half
    index = torch.full((1, 5), -1, dtype=torch.int8)
    index[0, 2] = 0
    keep = torch.tensor([True])
    inside = torch.zeros(1, 1, 576, 5)
    inside[0, 0].view(24, 24, 5)[:, :12, 2] = 1 / 288  # all of token 2's attention on the left
    outside = torch.zeros(1, 1, 576, 5)
    outside[0, 0].view(24, 24, 5)[:, 12:, 2] = 1 / 288
    uniform = torch.full((1, 1, 576, 5), 1 / 576)
    assert grounding_loss([inside], masks, index, keep).item() < 1e-6
    assert abs(grounding_loss([outside], masks, index, keep).item() - 1.0) < 1e-6
    assert abs(grounding_loss([uniform], masks, index, keep).item() - 0.25) < 1e-6
    # 12 x 12 maps are scored against the pooled mask; a dropped caption contributes nothing
    half = torch.zeros(1, 1, 144, 5)
    half[0, 0].view(12, 12, 5)[:, :6, 2] = 1 / 72
    assert grounding_loss([half], masks, index, keep).item() < 1e-6
    assert grounding_loss([outside], masks, index, ~keep).item() == 0.0


def test_recording_gives_the_unets_own_attention_probabilities_with_gradients():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.from_dict(latent_unet_config(24)))
    x, context = torch.randn(2, 4, 24, 24), torch.randn(2, MAX_TOKENS, 64)
    added = {"text_embeds": torch.randn(2, 64), "time_ids": torch.zeros(2, 6)}
    with recording(unet) as probs:
        unet(x, torch.tensor([10, 500]), context, added_cond_kwargs=added)
    # cross-attention at 24 x 24 (down 0: 1, up 2: 2) and 12 x 12 (down 1, up 1); not the 6 x 6 mid
    assert sorted(p.shape[2] for p in probs) == [144] * 3 + [576] * 3
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in probs)
    probs[0][..., 3].sum().backward()
    assert (
        unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q.weight.grad is not None
    )
    with recording(unet) as after:  # the hooks are gone after the block
        pass
    assert after == [] and not any(m._forward_hooks for m in unet.modules())


def test_bidirectional_text_encoder_lets_a_noun_see_its_position_and_ignores_padding():
    torch.manual_seed(0)
    tok = WordTokenizer(WORDS, max_length=MAX_TOKENS)
    config = TextEncoderConfig(len(tok.vocab), MAX_TOKENS, projection_dim=64, causal=False)
    enc = DemoTextEncoder(config).eval()
    with torch.no_grad():
        a, _ = enc.encode(tok(["a red circle on the left"]))
        b, _ = enc.encode(tok(["a red circle on the right"]))
        short = WordTokenizer(WORDS, max_length=8)  # fewer <pad>s: the words must not change
        c, _ = enc.encode(short(["a red circle on the left"]))
    assert not torch.allclose(a[0, 3], b[0, 3])  # "circle" knows "left" from "right"
    assert torch.allclose(a[0, :8], c[0], atol=1e-6)
    assert torch.allclose(a[0, 0], b[0, 0])  # <bos> still carries no caption content


def _state(model: torch.nn.Module) -> dict:
    """A checkpoint as ``Trainer.save`` writes it, after one optimiser step (Adam moments)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return {"model": sd, "ema": {k: v.clone() for k, v in sd.items()}, "opt": opt.state_dict()}


def test_a_model_without_position_words_keeps_the_other_words_embeddings():
    from unetviz.training.data import POSITIONS, without_positions
    from unetviz.training.latents import vocabulary
    from unetviz.training.train import parse_args
    from unetviz.training.unet import build, narrow_vocab

    caption = "a small red circle on the left and a big blue square on the right"
    assert without_positions(caption) == "a small red circle and a big blue square"
    words = vocabulary(parse_args(["--drop-words", "left"]))  # one position drops the class
    assert not {*POSITIONS, "on", "the"} & set(words) and {"red", "small", "and"} <= set(words)
    assert vocabulary(parse_args(["--drop-words", ""])) == list(WORDS)
    assert vocabulary(parse_args([])) == words  # the shipped recipe has no position words
    torch.manual_seed(0)
    full, _, tok_full = build(24)
    state = _state(full)
    small, _, tok = build(24, words=words)
    names = [n for n, _ in small.named_parameters()]
    narrow_vocab(state, names, tok.vocab)
    small.load_state_dict(state["model"])
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    opt.load_state_dict(state["opt"])  # shapes agree: the next step runs
    sum(p.sum() for p in small.parameters()).backward()
    opt.step()
    before = full.text_encoder.token_embedding.weight
    after = state["model"]["text_encoder.token_embedding.weight"]
    for word in ("red", "square", "big", "<bos>"):
        assert torch.equal(after[tok.index[word]], before[tok_full.index[word]])


def test_coordinate_channels_join_a_checkpoint_without_changing_its_function():
    from unetviz.pipelines.demo import unet_input
    from unetviz.training.unet import build, widen_conv_in

    torch.manual_seed(0)
    plain, _, _ = build(24)
    state = _state(plain)
    coord, config, _ = build(24, coords=True)
    assert config["in_channels"] == 6
    widen_conv_in(state, 6, [n for n, _ in coord.named_parameters()])
    coord.load_state_dict(state["model"])
    x, ctx = torch.randn(1, 4, 24, 24), torch.randn(1, MAX_TOKENS, 64)
    added = {"text_embeds": torch.randn(1, 64), "time_ids": torch.zeros(1, 6)}
    with torch.no_grad():
        a = plain.unet(x, torch.tensor([500]), ctx, added_cond_kwargs=added)
        b = coord.unet(unet_input(coord.unet, x), torch.tensor([500]), ctx, added_cond_kwargs=added)
    assert torch.allclose(a, b, atol=1e-6)
    assert state["opt"]["state"][0]["exp_avg"].shape == (16, 6, 3, 3)

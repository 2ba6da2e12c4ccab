"""Interventions on the UNet: exactness against prompt-to-prompt's equalizer on diffusers'
Attention, bit-identity when nothing changes, cleanup, errors before any forward, and order
with capture."""

from __future__ import annotations

import copy

import pytest
import torch

import unetviz
from unetviz import edits
from unetviz.edits import EditError, ModelMap, intervene
from unetviz.edits.intervene import record

diffusers = pytest.importorskip("diffusers")

from tests.test_model import narrow  # noqa: E402  (the narrow SD1.5 / 2.1 / SDXL configs)

TOKENS = 7


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _diffusers_unet(name: str, seed: int = 0):
    data = narrow(name)
    if name == "sd15":  # two levels are enough here and twice as fast
        data.update(
            block_out_channels=[32, 64],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        )
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**{k: v for k, v in data.items() if k[0] != "_"}).eval()


@pytest.fixture(scope="module")
def sd15():
    return _diffusers_unet("sd15")


def _inputs(name: str, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 4, 16, 16, generator=g)
    context = torch.randn(batch, TOKENS, 32, generator=g)
    kwargs = {}
    if name == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
        }
    return sample, context, kwargs


def _out(unet, sample, context, kwargs, t=500):
    with torch.no_grad():
        out = unet(sample, t, context, **kwargs)
    return out.sample if hasattr(out, "sample") else out


class P2PEqualizer:
    """Reference: diffusers' explicit attention (``get_attention_scores``) with P2P's
    equalizer applied to the conditional half, no renormalisation (google/prompt-to-prompt,
    AttentionReweight.replace_cross_attention: ``attn_base * equalizer[:, None, None, :]``)."""

    def __init__(self, weights: dict[int, float]):
        self.weights = weights

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        probs = probs.view(b, attn.heads, *probs.shape[1:]).clone()
        equalizer = torch.ones(probs.shape[-1])
        for index, scale in self.weights.items():
            equalizer[index] = scale
        probs[b // 2 :] = probs[b // 2 :] * equalizer
        out = torch.bmm(probs.view(b * attn.heads, *probs.shape[2:]), v)
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_reweight_equals_p2p_equalizer_on_diffusers(name, tmp_path):
    """Token 2 removed from every cross-attention, token 4 boosted x2.5 in the up path."""
    unet = _diffusers_unet(name)
    ref = copy.deepcopy(unet)
    mm = ModelMap(unet)
    up = mm.attention_layers(["up"], True, "test")
    modules = dict(ref.named_modules())
    for n in mm.cross:
        weights = {2: 0.0, 4: 2.5} if n in up else {2: 0.0}
        modules[n].set_processor(P2PEqualizer(weights))
    chosen = [edits.Reweight(2, 0.0), edits.Reweight(4, 2.5, layers="up")]
    sample, context, kwargs = _inputs(name)
    base = _out(unet, sample, context, kwargs)
    expected = _out(ref, sample, context, kwargs)
    with intervene(unet, chosen):
        got = _out(unet, sample, context, kwargs)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - base).abs().max().item() > 1e-3  # the edit did something
    # unetviz's UNet on the same weights: same edit, same numbers
    unet.save_pretrained(tmp_path)
    ours = unetviz.load_unet(tmp_path)
    with intervene(ours, chosen):
        mine = _out(ours, sample, context, kwargs)
    assert (mine - expected).abs().max().item() <= 1e-4


def _our_unet():
    torch.manual_seed(0)
    return unetviz.UNet2DConditionModel(unetviz.UNetConfig.from_dict(narrow("sd15"))).eval()


NEUTRAL = [
    edits.Reweight(3, 1.0),
    edits.AblateSkip(2, mode=1.0),
    edits.AblateBlock("mid_block", 1.0),
    edits.AblateBlock("down_blocks.1", 1.0),
    edits.ScaleTemb("all", 1.0),
]


def _hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


def test_no_edit_and_scale_one_are_bit_identical_and_leave_nothing():
    unet = _our_unet()
    sample, context, kwargs = _inputs("sd15")
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    base = _out(unet, sample, context, kwargs)
    hooks = _hooks(unet)
    with intervene(unet, []) as iv:
        assert _hooks(unet) == hooks  # no edit: nothing hooked at all
        assert torch.equal(_out(unet, sample, context, kwargs), base)
    assert iv.meta == {}
    with intervene(unet, NEUTRAL) as iv:
        assert _hooks(unet) > hooks
        assert torch.equal(_out(unet, sample, context, kwargs), base)
    assert [d["edit"] for d in iv.describe()] == [type(e).__name__ for e in NEUTRAL]
    assert _hooks(unet) == hooks
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(unet, [edits.AblateBlock("mid_block", "zero")]):
            _out(unet, sample, context, kwargs)
            raise RuntimeError("boom")
    assert _hooks(unet) == hooks
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert torch.equal(_out(unet, sample, context, kwargs), base)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (edits.Reweight("dog", 0.0), "its words are: a, red, circle"),
        (edits.Reweight(9, 0.0), "has 5 token positions"),
        (edits.Reweight("red", 0.0, layers="sideways"), "up_blocks.1.attentions.0"),
        (edits.AblateSkip(42), "0: conv_in -> up_blocks.1.resnets.2"),
        (edits.AblateSkip("down_blocks.9 -> up_blocks.0"), "matches no skip"),
        (edits.AblateBlock("up_blocks.7"), "down_blocks.0.attentions.0"),
        (edits.ScaleTemb("conv_in", 0.0), "up_blocks.1.resnets.0"),
        (edits.Patch("nowhere", "a red circle"), "has no module 'nowhere'"),
        (edits.Patch("mid_block", "a red circle"), "has not been run"),
        (edits.Reweight("red", 0.0, steps=(0.0, 0.5)), "number of sampling steps is unknown"),
    ],
)
def test_bad_edits_fail_before_any_forward_listing_what_exists(edit, message, sd15):
    unet = sd15
    calls = []
    handle = unet.register_forward_pre_hook(lambda *a: calls.append(1))
    hooks = _hooks(unet)
    tokens = ["<bos>", "a", "red", "circle", "<eos>"]
    with pytest.raises(EditError, match=message):
        intervene(unet, [edit], tokens=tokens, words=[None, "a", "red", "circle", None])
    handle.remove()
    assert not calls and _hooks(unet) == hooks - 1


@pytest.mark.parametrize(
    "bad",
    [
        lambda: edits.Reweight("red", float("nan")),
        lambda: edits.AblateSkip(-1),
        lambda: edits.AblateBlock("mid_block", "half"),
        lambda: edits.Reweight("red", 0.0, steps=(5, 2)),
        lambda: edits.Replace("a cat", cross_steps=1.5),
        lambda: edits.Patch("mid_block", "a", half="left"),
    ],
)
def test_bad_parameters_are_refused_when_made(bad):
    with pytest.raises(EditError):
        bad()


@pytest.mark.parametrize("edit_first", [True, False])
def test_edits_apply_before_capture_records_in_both_orders(edit_first):
    unet = _our_unet()
    sample, context, kwargs = _inputs("sd15")
    chosen = [edits.ScaleTemb("all", 0.0), edits.AblateSkip(0, "zero"), edits.Reweight(1, 0.0)]
    iv = intervene(unet, chosen)
    cap = unetviz.capture(unet, detail="layers")
    first, second = (iv, cap) if edit_first else (cap, iv)
    with first as a, second as b:
        out = _out(unet, sample, context, kwargs)
    trace = b if edit_first else a
    assert trace.temb and all(r.temb_rms == 0.0 for r in trace.temb)  # recorded after the edit
    maps = [rec.maps[0].float() for rec in trace.attention.values()]  # (1, h, w, tokens)
    assert maps and all(m[..., 1].abs().max() == 0 and m[..., 2].min() > 0 for m in maps)
    with intervene(unet, chosen):
        expected = _out(unet, sample, context, kwargs)
    assert torch.equal(out, expected)
    assert _hooks(unet) == 0


def test_skip_and_block_edits_agree_between_diffusers_and_unetviz(tmp_path):
    ref = _diffusers_unet("sd15")
    ref.save_pretrained(tmp_path)
    ours = unetviz.load_unet(tmp_path)
    assert [str(s) for s in ModelMap(ref).skips] == [str(s) for s in ModelMap(ours).skips]
    sample, context, kwargs = _inputs("sd15")
    for chosen in (
        [edits.AblateSkip("down_blocks.0.attentions.0 -> up_blocks.1", "mean")],
        [edits.AblateBlock("down_blocks.0", "mean"), edits.ScaleTemb("up_blocks.1", 3.0)],
        [edits.AblateBlock("up_blocks.1.attentions.0.transformer_blocks.0.attn1", "zero")],
        [edits.AblateBlock("up_blocks.1.attentions.1.transformer_blocks.0.ff", 0.5)],
    ):
        with intervene(ref, chosen):
            a = _out(ref, sample, context, kwargs)
        with intervene(ours, chosen):
            b = _out(ours, sample, context, kwargs)
        assert (a - b).abs().max().item() <= 1e-4
        assert (a - _out(ref, sample, context, kwargs)).abs().max().item() > 1e-3


def test_patch_and_replace_from_recordings():
    unet = _our_unet()
    sample, context, kwargs = _inputs("sd15")
    other = torch.randn_like(context)
    mm = ModelMap(unet)
    name = "up_blocks.1.attentions.0"
    with record(unet, outputs=[name, "down_blocks.0"], attention=mm.cross + mm.selfs) as own:
        base = _out(unet, sample, context, kwargs)
    with record(unet, outputs=[name]) as src:
        _out(unet, sample, other, kwargs)
    # patching a run with its own activations, or replacing its maps by its own: no change
    with intervene(unet, [edits.Patch("down_blocks.0", own), edits.Patch(name, own)]):
        assert torch.equal(_out(unet, sample, context, kwargs), base)
    with intervene(unet, [edits.Replace(own, cross_steps=(0, 1), self_steps=(0, 1))]) as iv:
        assert (_out(unet, sample, context, kwargs) - base).abs().max().item() <= 1e-5
    assert iv.describe()[0]["self_layers"]  # 8x8 and 4x4 maps: <= 256 queries
    # patching the conditional half from another context moves only that half
    with intervene(unet, [edits.Patch(name, src, half="cond")]):
        patched = _out(unet, sample, context, kwargs)
    assert torch.equal(patched[0], base[0])
    assert (patched[1] - base[1]).abs().max().item() > 1e-4


def test_reweight_touches_only_the_conditional_half_and_the_chosen_steps():
    unet = _our_unet()
    sample, context, kwargs = _inputs("sd15")
    with intervene(unet, [edits.Reweight(1, 0.0, steps=(1, 2))]):
        first = _out(unet, sample, context, kwargs)
        second = _out(unet, sample, context, kwargs)
    base = _out(unet, sample, context, kwargs)
    assert torch.equal(first, base)  # step 0 is outside (1, 2)
    assert torch.equal(second[0], base[0])  # unconditional half untouched
    assert (second[1] - base[1]).abs().max().item() > 1e-4


def test_forwards_of_other_threads_are_not_edited():
    import threading

    unet = _our_unet()
    sample, context, kwargs = _inputs("sd15")
    base = _out(unet, sample, context, kwargs)
    seen = {}
    with intervene(unet, [edits.AblateBlock("mid_block", "zero")]):
        worker = threading.Thread(
            target=lambda: seen.update(out=_out(unet, sample, context, kwargs))
        )
        worker.start()
        worker.join()
        mine = _out(unet, sample, context, kwargs)
    assert torch.equal(seen["out"], base)
    assert not torch.equal(mine, base)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: edits.Reweight("red", 0.0, layers=5), "layers=5: expected 'down'"),
        (lambda: edits.Reweight("red", "0"), "got a string"),
        (lambda: edits.Reweight("red", 1e9), r"expected a number -1000\.\.1000"),
        (lambda: edits.Reweight(10**9, 0.0), "expected a whole number 0..4096"),
        (lambda: edits.Reweight("red", 0.0, steps=("a", 2)), "two numbers"),
        (lambda: edits.Reweight("red", 0.0, steps=(0, 10**9)), "steps stop=1000000000"),
        (lambda: edits.Replace("a cat", self_max_queries="x"), "self_max_queries='x'"),
        (lambda: edits.Replace("a cat", self_max_queries=0), "self_max_queries=0"),
        (lambda: edits.Replace(42), "expected a prompt"),
        (lambda: edits.Patch("mid_block", 3.5), "expected a prompt"),
        (lambda: edits.AblateBlock(7), "expected a module name"),
        (lambda: edits.ScaleTemb("all", None), "expected a number"),
        (lambda: edits.Sweep(targets=5), "Sweep targets=5: expected a name"),
        (lambda: edits.Sweep(targets=["mid_block", 3]), "expected a module name"),
        (lambda: edits.Sweep(targets=["mid_block"] * 10**6), "1000000 items: expected 1 to 256"),
        (lambda: edits.Sweep(over=["blocks"]), "expected one of"),
        (lambda: edits.Sweep(edit="reweight", word=5), "Sweep word=5"),
        (lambda: edits.Sweep(scale=float("inf")), "Sweep scale=inf"),
    ],
)
def test_wrong_types_and_sizes_are_refused_when_made(bad, message):
    with pytest.raises(EditError, match=message):
        bad()


def test_a_string_is_one_name_never_its_characters():
    assert edits.Reweight("red", 0.0, layers="mid_block").layers == ("mid_block",)
    assert edits.Sweep(targets="mid_block").targets == ("mid_block",)
    assert edits.Sweep(over="skips", targets=[0, "conv_in -> up_blocks.1"]).targets[0] == 0
    unet = _our_unet()
    with pytest.raises(EditError, match="got a string"):
        intervene(unet, "red")
    with pytest.raises(EditError, match="expected a list of strings"):
        intervene(unet, [edits.Reweight("red", 0.0)], tokens="a red circle")
    with pytest.raises(EditError, match="num_steps=0"):
        intervene(unet, [edits.Reweight(1, 0.0)], num_steps=0)
    too_many = (edits.Reweight(1, 0.0) for _ in range(10**6))  # never fully consumed
    with pytest.raises(EditError, match="more than 64 edits"):
        intervene(unet, too_many)

"""``preset="daam"`` and ``preset="p2p"`` against references transcribed from the published code
(not imported: both packages pin old diffusers), on tiny SD 1.x-, SD 2.x- (linear projection) and
SDXL-shaped diffusers UNets with peaked attention (to_q / to_k scaled, so the clamp bites), a
multi-piece word and a repeated word.

DAAM 0.2.0 (castorini/daam, tag v0.2.0): daam/trace.py, daam/heatmap.py, daam/hook.py,
daam/utils.py -- the line numbers are cited next to each transcribed part.
Prompt-to-Prompt (google/prompt-to-prompt): ptp_utils.py ``register_attention_control`` and
prompt-to-prompt_stable.ipynb ``AttentionControl``, ``AttentionStore``, ``aggregate_attention``.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch
from torch.nn import functional as F

from unetviz.capture import TraceError, capture

diffusers = pytest.importorskip("diffusers")

# a prompt with a multi-piece word ("grandmother") and a repeated word ("red")
PIECES = {"grandmother": ["grand", "mother</w>"]}
PROMPT = "a red grandmother and a red cat"
TIMESTEPS = (900, 500, 100)

SD1 = dict(  # SD 1.x shapes: three cross-attention levels, the last down block plain
    sample_size=64,  # x 8 = 512: DAAM's 64x64 grid, latent_hw 4096
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
)
SD2 = SD1 | dict(  # SD 2.x: linear projections, per-level heads, 768 px (96x96 grid)
    sample_size=96, use_linear_projection=True, attention_head_dim=(2, 4, 4, 4)
)
SDXL = dict(  # SDXL: no attention in the first level, 2 transformer layers, added conditions
    sample_size=128,  # x 8 = 1024: DAAM's 64x64 grid
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    transformer_layers_per_block=(1, 2, 2),
    norm_num_groups=8,
    cross_attention_dim=64,
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
)


class ToyTokenizer:
    """CLIP-like pieces: ``</w>`` ends a word; 'grandmother' is two pieces."""

    def tokenize(self, text: str) -> list[str]:
        return [p for w in text.split() for p in PIECES.get(w, [w + "</w>"])]


def labels_and_words(prompt: str, n: int = 77) -> tuple[list[str], list[str | None]]:
    labels, words = ["<bos>"], [None]
    for w in prompt.split():
        for p in PIECES.get(w, [w + "</w>"]):
            labels.append(p)
            words.append(w)
    labels.append("<eos>")
    words.append(None)
    pad = n - len(labels)
    return labels + ["<pad>"] * pad, words + [None] * pad


# ------------------------------------------------------------------ DAAM 0.2.0, transcribed
def compute_token_merge_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """daam/utils.py:73-91 (word_idx=None, offset_idx=0)."""
    merge_idxs = []
    tokens = tokenizer.tokenize(prompt.lower())
    tokens = [x.replace("</w>", "") for x in tokens]
    word = word.lower()
    search_tokens = [x.replace("</w>", "") for x in tokenizer.tokenize(word)]
    start_indices = [
        x for x in range(len(tokens)) if tokens[x : x + len(search_tokens)] == search_tokens
    ]
    for indice in start_indices:
        merge_idxs += [i + indice for i in range(0, len(search_tokens))]
    if not merge_idxs:
        raise ValueError(f"Search word {word} not found in prompt!")
    return [x + 1 for x in merge_idxs]


class DaamReference:
    """DiffusionHeatMapHooker + UNetCrossAttentionHooker + RawHeatMapCollection."""

    def __init__(self, unet, vae_scale_factor: int = 8, context_size: int = 77):
        h = unet.config.sample_size * vae_scale_factor  # daam/trace.py:32
        self.latent_hw = 4096 if h == 512 or h == 1024 else 9216  # daam/trace.py:33
        self.context_size = context_size
        self.ids_to_heatmaps = defaultdict(lambda: 0.0)  # daam/heatmap.py:150
        blocks = []  # UNetCrossAttentionLocator.locate, daam/hook.py:105-127 (no mid block)
        for unet_block in itertools.chain(unet.up_blocks, unet.down_blocks):
            if "CrossAttn" in unet_block.__class__.__name__:
                for spatial_transformer in unet_block.attentions:
                    for transformer_block in spatial_transformer.transformer_blocks:
                        blocks.append(transformer_block.attn2)
        self.layer_of = {id(b): i for i, b in enumerate(blocks)}

    def observe(self, attn, attention_probs: torch.Tensor) -> None:
        """UNetCrossAttentionHooker.__call__ after the softmax (daam/trace.py:284-294)."""
        layer_idx = self.layer_of.get(id(attn))
        if layer_idx is None:
            return
        factor = int(math.sqrt(self.latent_hw // attention_probs.shape[1]))
        if attention_probs.shape[-1] == self.context_size and factor != 8:
            maps = self._unravel_attn(attention_probs)
            for head_idx, heatmap in enumerate(maps):
                key = (factor, layer_idx, head_idx)  # daam/heatmap.py:153-156
                self.ids_to_heatmaps[key] = self.ids_to_heatmaps[key] + heatmap

    @staticmethod
    def _unravel_attn(x: torch.Tensor) -> torch.Tensor:
        """daam/trace.py:220-244."""
        h = w = int(math.sqrt(x.size(1)))
        maps = []
        x = x.permute(2, 0, 1)
        for map_ in x:
            map_ = map_.view(map_.size(0), h, w)
            map_ = map_[map_.size(0) // 2 :]  # Filter out unconditional
            maps.append(map_)
        maps = torch.stack(maps, 0)  # shape: (tokens, heads, height, width)
        return maps.permute(1, 0, 2, 3).contiguous()  # shape: (heads, tokens, height, width)

    def compute_global_heat_map(self) -> torch.Tensor:
        """daam/trace.py:98-132 (factors=None, head_idx=None, layer_idx=None, normalize=False;
        the truncation to the prompt's length is left out: we index tokens directly)."""
        factors = {0, 1, 2, 4, 8, 16, 32, 64}
        all_merges = []
        x = int(math.sqrt(self.latent_hw))
        for (factor, _layer, _head), heat_map in self.ids_to_heatmaps.items():  # noqa: B007
            if factor in factors:
                heat_map = heat_map.unsqueeze(1)
                all_merges.append(F.interpolate(heat_map, size=(x, x), mode="bicubic").clamp_(min=0))  # fmt: skip
        maps = torch.stack(all_merges, dim=0)
        return maps.mean(0)[:, 0]

    def word_heat_map(self, word: str) -> torch.Tensor:
        """GlobalHeatMap.compute_word_heat_map, daam/heatmap.py:121-123."""
        merge_idxs = compute_token_merge_indices(ToyTokenizer(), PROMPT, word)
        if not hasattr(self, "global_heat_map"):  # GlobalHeatMap is computed once per prompt
            self.global_heat_map = self.compute_global_heat_map()
        return self.global_heat_map[merge_idxs].mean(0)


# ------------------------------------------------------------------ Prompt-to-Prompt, transcribed
class P2PStore:
    """prompt-to-prompt_stable.ipynb: AttentionControl.__call__ (not LOW_RESOURCE) and
    AttentionStore (forward, between_steps, get_average_attention)."""

    def __init__(self, num_att_layers: int):
        self.cur_step, self.cur_att_layer, self.num_uncond_att_layers = 0, 0, 0
        self.num_att_layers = num_att_layers
        self.step_store = self.get_empty_store()
        self.attention_store = {}

    @staticmethod
    def get_empty_store():
        return {f"{p}_{k}": [] for p in ("down", "mid", "up") for k in ("cross", "self")}

    def __call__(self, attn, is_cross: bool, place_in_unet: str):
        if self.cur_att_layer >= self.num_uncond_att_layers:
            h = attn.shape[0]
            attn[h // 2 :] = self.forward(attn[h // 2 :], is_cross, place_in_unet)
        self.cur_att_layer += 1
        if self.cur_att_layer == self.num_att_layers + self.num_uncond_att_layers:
            self.cur_att_layer = 0
            self.cur_step += 1
            self.between_steps()
        return attn

    def forward(self, attn, is_cross: bool, place_in_unet: str):
        key = f"{place_in_unet}_{'cross' if is_cross else 'self'}"
        if attn.shape[1] <= 32**2:  # avoid memory overhead
            self.step_store[key].append(attn.clone())
        return attn

    def between_steps(self):
        if len(self.attention_store) == 0:
            self.attention_store = self.step_store
        else:
            for key in self.attention_store:
                for i in range(len(self.attention_store[key])):
                    self.attention_store[key][i] += self.step_store[key][i]
        self.step_store = self.get_empty_store()

    def get_average_attention(self):
        return {k: [item / self.cur_step for item in v] for k, v in self.attention_store.items()}


def aggregate_attention(store: P2PStore, res: int, from_where, is_cross: bool, select: int):
    """prompt-to-prompt_stable.ipynb ``aggregate_attention`` (one prompt)."""
    out = []
    attention_maps = store.get_average_attention()
    num_pixels = res**2
    for location in from_where:
        for item in attention_maps[f"{location}_{'cross' if is_cross else 'self'}"]:
            if item.shape[1] == num_pixels:
                cross_maps = item.reshape(1, -1, res, res, item.shape[-1])[select]
                out.append(cross_maps)
    out = torch.cat(out, dim=0)
    out = out.sum(0) / out.shape[0]
    return out.cpu()


class ReferenceProcessor:
    """ptp_utils.register_attention_control's forward (explicit softmax(Q K^T * scale), the
    controller sees the probabilities) feeding both references; DAAM's processor computes the
    same probabilities with ``attn.get_attention_scores`` (daam/trace.py:259-276)."""

    def __init__(self, place: str, daam: DaamReference, p2p: P2PStore):
        self.place, self.daam, self.p2p = place, daam, p2p

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        if is_cross:
            self.daam.observe(attn, probs)
        probs = self.p2p(probs, is_cross, self.place)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


# ------------------------------------------------------------------ the comparison
def _run(config: dict, latent: int, seed: int = 0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for name, m in unet.named_modules():
            if name.endswith("attn2"):  # peaked attention: the clamp at 0 bites
                m.to_q.weight.mul_(4.0)
                m.to_k.weight.mul_(4.0)
    daam = DaamReference(unet)
    n_layers = len(unet.attn_processors)
    p2p = P2PStore(n_layers)
    procs = {}
    for name in unet.attn_processors:
        place = name.split("_")[0] if not name.startswith("mid") else "mid"
        procs[name] = ReferenceProcessor(place, daam, p2p)
    unet.set_attn_processor(procs)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 4, latent, latent, generator=g)
    ehs = torch.randn(2, 77, config["cross_attention_dim"], generator=g)
    extra = {}
    if config.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32, generator=g),
            "time_ids": torch.randn(2, 6, generator=g),
        }
    labels, words = labels_and_words(PROMPT)
    meta = {"height": latent * 8, "width": latent * 8}
    with torch.no_grad(), capture(unet, daam=True, meta=meta) as trace:
        for t in TIMESTEPS:
            unet(x, t, ehs, **extra)
    trace.tokens, trace.words = labels, words
    return trace, daam, p2p


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-8)  # DAAM's expand_as, daam/heatmap.py:83


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def run(request):
    # latents where DAAM's map factors (int(sqrt(latent_hw // queries))) are powers of two, as at
    # the native sizes: SD 1.x 16 (factors 4, 8: dropped, 16), SD 2.x 24 (4, 8, 16), SDXL 16
    # (8: dropped, 16; its 4x4 mid block is never used)
    config, latent = {"sd1": (SD1, 16), "sd2": (SD2, 24), "sdxl": (SDXL, 16)}[request.param]
    return request.param, _run(config, latent)


def test_daam_preset_is_daam(run):
    kind, (trace, daam, _) = run
    side = {"sd1": 64, "sd2": 96, "sdxl": 64}[kind]
    for word in ("red", "grandmother", "cat"):
        want = daam.word_heat_map(word)
        got = trace.heatmap(word, preset="daam", normalize=None)
        assert got.shape == want.shape == (side, side)
        assert _pearson(got, want) >= 0.9999, (kind, word)
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
        mask_got = trace.heatmap(word, preset="daam") > 0.4
        assert torch.equal(mask_got, _minmax(want) > 0.4), (kind, word)
        assert 0 < mask_got.float().mean() < 1


def test_daam_layers_and_clamp(run):
    kind, (trace, daam, _) = run
    # DAAM's layers: down and up only; the approximate recipe is measurably different here
    layers = {trace_name for trace_name, r in trace.attention.items() if r.head_sum is not None}
    assert layers and all(not n.startswith("mid_block") for n in layers)
    got = trace.heatmap("grandmother", preset="daam")
    approx = trace.heatmap("grandmother", preset="daam-approx", size=got.shape[0])
    assert _pearson(got, approx) < 0.9999
    # the clamp is active: some upsampled head map undershoots below zero
    heat = next(iter(daam.ids_to_heatmaps.values()))
    assert (F.interpolate(heat.unsqueeze(1), size=(64, 64), mode="bicubic") < 0).any()


def test_p2p_preset_is_aggregate_attention(run):
    kind, (trace, _, p2p) = run
    res = {"sd1": 16, "sd2": 12, "sdxl": 8}[kind]  # 16x16, or the closest the model has
    maps = aggregate_attention(p2p, res, ("up", "down"), True, 0)  # (res, res, tokens)
    labels = trace.tokens
    for i in (labels.index("cat</w>"), 2, 3):
        image = maps[:, :, i]
        want = image / image.max()  # show_cross_attention: 255 * image / image.max()
        got = trace.heatmap(i, preset="p2p", normalize="max")
        assert got.shape == (res, res)
        assert _pearson(got, want) >= 0.9999
        torch.testing.assert_close(got, want.float(), atol=1e-3, rtol=0)  # float16 storage


def test_daam_needs_the_capture_option_and_all_steps(run):
    _, (trace, _, _) = run
    with pytest.raises(TraceError, match="steps"):
        trace.heatmap("cat", preset="daam", steps=[0])
    saved = {n: r.head_sum for n, r in trace.attention.items()}
    try:
        for r in trace.attention.values():
            r.head_sum = None
        with pytest.raises(TraceError, match="daam=True"):
            trace.heatmap("cat", preset="daam")
    finally:
        for n, r in trace.attention.items():
            r.head_sum = saved[n]


def test_preset_layers_name_exactly_what_each_preset_reads(run):
    from unetviz.capture.aggregate import preset_layers

    kind, (trace, _, _) = run
    names = preset_layers(trace, "daam")
    assert names and not any(n.startswith("mid_block") for n in names)
    full = trace.heatmap("cat", preset="daam", normalize=None)
    torch.testing.assert_close(
        trace.heatmap("cat", preset="daam", normalize=None, layers=names), full
    )
    for name in names:  # every named layer contributes
        rest = [n for n in names if n != name]
        if rest:
            less = trace.heatmap("cat", preset="daam", normalize=None, layers=rest)
            assert not torch.allclose(less, full), (kind, name)
    res = {"sd1": 16, "sd2": 12, "sdxl": 8}[kind]
    p2p = preset_layers(trace, "p2p")
    assert p2p and {trace.attention[n].res[0] for n in p2p} == {res}
    assert all(trace.attention[n].location in ("down", "up") for n in p2p)

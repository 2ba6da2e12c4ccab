"""Every config diffusers' own UNet2DConditionModel constructor accepts (within the block types
unetviz implements) either loads with output equal to diffusers' or is refused with a reason
from the documented unsupported list (``config.UNSUPPORTED``, docs/models.md): never a type
error, never a silently different model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import unetviz
from unetviz.config import UNSUPPORTED, ConfigError, UNetConfig
from unetviz.weights import WeightsError

diffusers = pytest.importorskip("diffusers")

GROUPS = 4


def _per_block(draw, n: int, values: list) -> object:
    """One value, or a per-block list of them (diffusers takes both)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(values))
    return [draw(st.sampled_from(values)) for _ in range(n)]


@st.composite
def diffusers_kwargs(draw) -> dict:
    """Arguments for diffusers.UNet2DConditionModel: tiny widths, the supported block types,
    and now and then a feature unetviz refuses."""
    n = draw(st.integers(1, 3))
    channels = [draw(st.sampled_from([8, 16, 24])) for _ in range(n)]
    pairs = [("CrossAttnDownBlock2D", "CrossAttnUpBlock2D"), ("DownBlock2D", "UpBlock2D")]
    down = [draw(st.sampled_from(pairs))[0] for _ in range(n)]
    up = [draw(st.sampled_from(pairs))[1] for _ in range(n)]
    cross = draw(st.sampled_from([8, 12]))
    kwargs: dict = dict(
        sample_size=draw(st.sampled_from([None, 8, [8, 8], [8, 16]])),
        in_channels=draw(st.sampled_from([4, 8, 9])),
        out_channels=4,
        center_input_sample=draw(st.booleans()),
        flip_sin_to_cos=draw(st.booleans()),
        freq_shift=draw(st.sampled_from([0, 1])),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(channels),
        layers_per_block=_per_block(draw, n, [1, 2]),
        transformer_layers_per_block=_per_block(draw, n, [1, 2]),
        attention_head_dim=_per_block(draw, n, [1, 2, 4]),
        cross_attention_dim=draw(st.sampled_from([cross, [cross] * n])),
        use_linear_projection=draw(st.booleans()),
        upcast_attention=draw(st.booleans()),
        norm_num_groups=GROUPS,
        norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        mid_block_scale_factor=draw(st.sampled_from([1, 0.5])),
        downsample_padding=draw(st.sampled_from([1, 0])),
        only_cross_attention=draw(st.sampled_from([False, [False] * n])),
        act_fn=draw(st.sampled_from(["silu", "swish"])),
        dropout=draw(st.sampled_from([0.0, 0.1])),
    )
    rare = draw(
        st.sampled_from(["none"] * 4 + ["class", "text_time", "asymmetric"] + ["refused"] * 3)
    )
    if rare == "asymmetric":  # SSD-1B / Vega: per-layer depths, a resnet-only mid block
        layers = _per_block_list(kwargs["layers_per_block"], n)
        kwargs.update(
            transformer_layers_per_block=[
                [draw(st.sampled_from([1, 2])) for _ in range(k)] for k in layers
            ],
            reverse_transformer_layers_per_block=[
                [draw(st.sampled_from([1, 2, 3])) for _ in range(k + 1)] for k in reversed(layers)
            ],
            mid_block_type=draw(st.sampled_from(["UNetMidBlock2D", "UNetMidBlock2DCrossAttn"])),
        )
    elif rare == "class":
        kwargs.update(num_class_embeds=3)
    elif rare == "text_time":
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=8 + 6 * 4,
        )
    elif rare == "refused":
        kwargs.update(
            draw(
                st.sampled_from(
                    [
                        {"mid_block_type": None},
                        {"resnet_time_scale_shift": "scale_shift"},
                        {"time_cond_proj_dim": 8},
                        {"conv_in_kernel": 1, "conv_out_kernel": 1},
                        {"time_embedding_dim": 4 * channels[0]},
                        {"time_embedding_dim": 8},
                        {"class_embed_type": "timestep"},
                        {"only_cross_attention": True},
                        {"act_fn": "mish"},
                        {"attention_head_dim": 3},
                        {"cross_attention_dim": [cross] * (n - 1) + [16]},
                        {
                            "transformer_layers_per_block": [[1, 2, 1]] * n,
                            "reverse_transformer_layers_per_block": [[1, 1, 1, 1]] * n,
                        },
                    ]
                )
            )
        )
    return kwargs


def _per_block_list(value: object, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _inputs(kwargs: dict, n: int) -> tuple:
    """Inputs for both models (``kwargs``: diffusers' full config)."""
    side = 2 ** (n - 1) * 2
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, kwargs["in_channels"], side, side * 2 if n < 3 else side, generator=g)
    cross = kwargs["cross_attention_dim"]
    width = cross[0] if isinstance(cross, (list, tuple)) else cross
    context = torch.randn(2, 3, width, generator=g)
    extra: dict = {}
    if kwargs.get("num_class_embeds") or kwargs.get("class_embed_type") == "timestep":
        extra["class_labels"] = torch.tensor([0, 2])
    if kwargs.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 8, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    return sample, context, extra


def _check_one(kwargs: dict, folder: Path) -> str:
    """'parity' or 'refused'; fails the test on anything else."""
    torch.manual_seed(0)
    try:
        ref = diffusers.UNet2DConditionModel(**kwargs).eval()
    except (ValueError, TypeError, AssertionError, KeyError):
        assume(False)  # diffusers itself refuses this combination
    ref.save_pretrained(folder)
    try:
        ours = unetviz.load_unet(folder)
    except (ConfigError, WeightsError) as exc:
        named = [k for k in UNSUPPORTED if k in str(exc)]
        assert named, f"refusal names no documented unsupported feature: {exc}"
        assert "not supported" in str(exc) or "not divisible" in str(exc), str(exc)
        return "refused"
    n = len(kwargs["block_out_channels"])
    sample, context, extra = _inputs(dict(ref.config), n)
    with torch.no_grad():
        for t in (999, 10):
            expected = ref(sample, t, context, **extra).sample
            got = ours(sample, torch.tensor([t, t]), context, **extra)
            assert (expected - got).abs().max().item() <= 1e-5, kwargs
    return "parity"


@settings(
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(diffusers_kwargs())
def test_configs_built_by_diffusers_load_with_parity_or_are_refused(kwargs):
    with tempfile.TemporaryDirectory() as tmp:
        event(_check_one(kwargs, Path(tmp)))


def test_default_sample_size_null_loads(tmp_path):
    """diffusers' default sample_size is None and save_pretrained writes ``null``."""
    kwargs = dict(
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
    )
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kwargs)
    assert ref.config.sample_size is None
    assert _check_one(kwargs, tmp_path) == "parity"
    assert unetviz.load_unet(tmp_path).config.sample_size == 64


def test_asymmetric_unet_like_ssd_1b_has_parity(tmp_path):
    """Segmind's SSD-1B layout at tiny width: per-layer depths that differ between the down
    and up paths, and a mid block of one resnet (diffusers' ``UNetMidBlock2D``)."""
    kwargs = dict(
        sample_size=8,
        block_out_channels=(8, 16, 24),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=GROUPS,
        cross_attention_dim=8,
        attention_head_dim=(1, 2, 4),
        transformer_layers_per_block=[1, [2, 1], [3, 2]],
        reverse_transformer_layers_per_block=[[2, 1, 3], [2, 1, 1], 1],
        mid_block_type="UNetMidBlock2D",
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,
    )
    assert _check_one(kwargs, tmp_path) == "parity"
    ours = unetviz.load_unet(tmp_path)
    assert [len(a.transformer_blocks) for a in ours.up_blocks[0].attentions] == [2, 1, 3]
    assert not hasattr(ours.mid_block, "attentions")


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"mid_block_type": None}, "mid_block_type"),
        ({"norm_num_groups": None}, "norm_num_groups"),
        ({"sample_size": [64, 96]}, "sample_size"),
        ({"transformer_layers_per_block": [[1, 1], 1, 1, 1]}, "transformer_layers_per_block"),
        ({"time_cond_proj_dim": 256}, "time_cond_proj_dim"),
        ({"only_cross_attention": [False, True, False, False]}, "only_cross_attention"),
        ({"reverse_transformer_layers_per_block": [[1, 1]] * 4}, "reverse_transformer"),
        (
            {"transformer_layers_per_block": [1, [1, 2, 3], 1, 1]}
            | {"reverse_transformer_layers_per_block": [1, 1, 1, 1]},
            "transformer_layers_per_block[1]",
        ),
    ],
)
def test_refusals_name_the_feature(changes, key):
    data = UNetConfig.preset("sd15").to_dict() | changes
    with pytest.raises(ConfigError, match="not supported") as err:
        UNetConfig.from_dict(data)
    assert key in str(err.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"sample_size": None},
        {"sample_size": [64, 64]},
        {"only_cross_attention": [False] * 4},
        {"act_fn": "swish"},
        {"dropout": 0.1},
        {"addition_embed_type_num_heads": 32},
        {"time_embedding_dim": 1280},
        {"mid_block_only_cross_attention": False},
        {"upcast_attention": None},
        {"reverse_transformer_layers_per_block": [[1, 1, 1]] * 4},
        {"reverse_transformer_layers_per_block": [1, [1, 1, 1], 1, 1]},
        {"transformer_layers_per_block": [[1, 1], 1, 1, 1]}
        | {"reverse_transformer_layers_per_block": [1, 1, 1, 1]},
    ],
)
def test_values_that_build_the_same_model_are_accepted(changes):
    base = UNetConfig.preset("sd15")
    cfg = UNetConfig.from_dict(base.to_dict() | changes)
    assert cfg.block_out_channels == base.block_out_channels and cfg.sample_size == 64

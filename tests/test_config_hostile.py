"""Issue 10 items 5, 8, 11: every config value is bounded and typed before anything is built.

Property tests (hypothesis): arbitrary JSON, as a whole config, as one key's value, or as the
bytes of a config file, raises nothing but ConfigError, and parsing allocates < 2 MB.
"""

from __future__ import annotations

import json
import math
import os
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unetviz.config import (
    _FIXED,
    _SCHEMA,
    ConfigError,
    UNetConfig,
    check_demo_config,
    read_json,
)

SD15 = UNetConfig.preset("sd15").to_dict()
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
KEYS = st.sampled_from(sorted(set(_SCHEMA) | set(_FIXED)))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_only_config_errors(data) -> None:
    tracemalloc.start()
    try:
        UNetConfig.from_dict(data)
    except ConfigError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2_000_000, peak


@FAST
@given(JSON | st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=8))
def test_arbitrary_json_is_config_error_or_config(data):
    _parse_only_config_errors(data)


@FAST
@given(KEYS, JSON)
def test_one_hostile_value_in_a_real_config(key, value):
    _parse_only_config_errors({**SD15, key: value})


@FAST
@given(st.lists(st.sampled_from(sorted(_SCHEMA)), min_size=1, max_size=4), st.data())
def test_hostile_numbers_in_many_keys(keys, data):
    config = dict(SD15)
    for key in keys:
        config[key] = data.draw(
            st.integers(-(10**12), 10**12)
            | st.floats()
            | st.lists(st.integers(-(10**9), 10**9), max_size=9)
        )
    _parse_only_config_errors(config)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_file_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(raw)
    try:
        UNetConfig.from_json(path)
    except ConfigError:
        pass


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers_per_block": 20_000}, "layers_per_block = 20000: expected an integer in [1, 16]"),
        ({"block_out_channels": [10**7] * 4}, "block_out_channels[0] = 10000000"),
        ({"block_out_channels": ["16", 32, 64, 64]}, "block_out_channels[0] = '16'"),
        ({"block_out_channels": None}, "block_out_channels = None: expected a list"),
        ({"block_out_channels": []}, "block_out_channels has 0 entries"),
        ({"layers_per_block": True}, "layers_per_block = True: expected an integer"),
        ({"layers_per_block": 0}, "layers_per_block = 0"),
        ({"norm_num_groups": -32}, "norm_num_groups = -32"),
        ({"norm_num_groups": 0}, "norm_num_groups = 0"),
        ({"norm_eps": math.nan}, "norm_eps = nan"),
        ({"norm_eps": math.inf}, "norm_eps = inf"),
        ({"attention_head_dim": 0}, "attention_head_dim = 0"),
        ({"sample_size": 10**9}, "sample_size = 1000000000"),
        ({"cross_attention_dim": 1.5}, "cross_attention_dim = 1.5"),
        ({"transformer_layers_per_block": 16, "layers_per_block": 16}, "transformer blocks"),
        ({"down_block_types": "DownBlock2D"}, "expected a list"),
        ({"mid_block_type": None}, "mid_block_type = None"),
    ],
)
def test_bounds_and_types_name_the_value(changes, message):
    with pytest.raises(ConfigError) as err:
        UNetConfig.from_dict({**SD15, **changes})
    assert message in str(err.value)


def test_config_files_regular_and_bounded(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        UNetConfig.from_json("/dev/zero")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it would block: refused by stat, before any open
    with pytest.raises(ConfigError, match="not a regular file"):
        UNetConfig.from_json(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        UNetConfig.from_json(deep)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**SD15, "_pad": "x" * 2_000_000}))
    with pytest.raises(ConfigError, match="more than the"):
        UNetConfig.from_json(big)
    secret = tmp_path / "secret.json"
    secret.write_text('{"_class_name": "TOP-SECRET-VALUE-' + "x" * 100 + '"}')
    with pytest.raises(ConfigError) as err:
        read_json(tmp_path / "nope.json")
    assert "not found" in str(err.value)
    with pytest.raises(ConfigError) as err:
        UNetConfig.from_json(secret)
    assert "x" * 60 not in str(err.value)  # contents are not echoed past a short excerpt


@pytest.mark.parametrize(
    ("part", "data", "message"),
    [
        ("text_encoder", {"vocab_size": 18, "width": 16_000}, "text_encoder.width = 16000"),
        ("text_encoder", {"vocab_size": 18, "width": 4096, "layers": 48}, "parameters"),
        ("text_encoder", {"vocab_size": 18, "width": 60, "heads": 7}, "not divisible"),
        ("text_encoder", {"vocab_size": "18"}, "text_encoder.vocab_size = '18'"),
        ("tokenizer", {"vocab": ["a"], "max_length": 10**9}, "tokenizer.max_length"),
        ("tokenizer", {"vocab": [1, 2], "max_length": 16}, "tokenizer.vocab[0] = 1"),
        ("tokenizer", {"vocab": "abc", "max_length": 16}, "tokenizer.vocab"),
        ("scheduler", {"num_train_timesteps": 10**9}, "scheduler.num_train_timesteps"),
        ("scheduler", [], "must be a JSON object"),
    ],
)
def test_demo_part_configs(part, data, message):
    with pytest.raises(ConfigError) as err:
        check_demo_config(part, data)
    assert message in str(err.value)


def test_shipped_demo_configs_pass():
    from unetviz.detect import DEMO_DIR

    for part, file in (
        ("text_encoder", "text_encoder/config.json"),
        ("tokenizer", "tokenizer/vocab.json"),
        ("scheduler", "scheduler/scheduler_config.json"),
    ):
        check_demo_config(part, read_json(DEMO_DIR / file))


@pytest.mark.slow  # builds ~3,800 modules on meta
def test_largest_accepted_config_builds_in_bounded_memory():
    """The bounds are what keeps a build small: the biggest config they let through (channels
    16,384, 16 layers, the 256-transformer-block budget) builds on meta in < 200 MB of RSS."""
    from unetviz.weights import build_unet

    data = {
        **SD15,
        "layers_per_block": [16, 16, 15, 1],
        "block_out_channels": [16384] * 4,
        "cross_attention_dim": 16384,
    }
    config = UNetConfig.from_dict(data)
    with pytest.raises(ConfigError, match="transformer blocks"):
        UNetConfig.from_dict({**data, "layers_per_block": 16, "transformer_layers_per_block": 2})

    def rss() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    model = build_unet(config)
    assert all(p.is_meta for p in model.parameters())
    assert rss() - before < 200 * 2**20, (rss() - before) / 2**20


@FAST
@given(st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=4))
def test_direct_construction_only_config_errors(kwargs):
    """UNetConfig(**kwargs) (not only from_dict) validates types before anything else."""
    names = {f for f in _SCHEMA}
    try:
        UNetConfig(**{k: v for k, v in kwargs.items() if k in names})
    except ConfigError:
        pass
    try:
        UNetConfig(extra=kwargs)
    except ConfigError:
        pass

"""The published UNet configs of the families people load (tests/data/unet_configs, each file
citing its source in ``_source``): each builds on the meta device with diffusers' parameter
names, shapes and count, or is refused naming a feature that docs/models.md lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unetviz import build_unet
from unetviz.config import UNSUPPORTED, ConfigError, UNetConfig

diffusers = pytest.importorskip("diffusers")

DATA = Path(__file__).parent / "data" / "unet_configs"
FILES = sorted(DATA.glob("*.json"))
DOCS = Path(__file__).parent.parent / "docs" / "models.md"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_file_cites_a_source():
    assert len(FILES) >= 12
    for path in FILES:
        data = _load(path)
        assert data["_source"].startswith("https://huggingface.co/"), path.name
        assert data["_expect"] == "supported" or data["_expect"].startswith("refused: ")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_published_config_builds_like_diffusers_or_is_refused(path):
    data = _load(path)
    expect = data["_expect"]
    if expect != "supported":
        key = expect.removeprefix("refused: ")
        with pytest.raises(ConfigError, match="not supported") as err:
            UNetConfig.from_json(path)
        assert key in str(err.value) and key in UNSUPPORTED
        assert f"`{key}`" in DOCS.read_text(), f"docs/models.md does not list {key}"
        return
    ours = build_unet(UNetConfig.from_json(path), device="meta")
    kwargs = {k: v for k, v in data.items() if not k.startswith("_")}
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**kwargs)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())


def test_models_doc_table_names_every_file():
    text = DOCS.read_text()
    for path in FILES:
        assert f"`{path.name}`" in text, f"docs/models.md does not list {path.name}"
    for key in UNSUPPORTED:
        assert f"`{key}`" in text, f"docs/models.md does not list the refusal of {key}"

"""unetviz.detect: one answer to "what kind of model is this path", pickle refusal, confinement."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from unetviz.detect import (
    DEMO_DIR,
    ModelPathError,
    conversion_command,
    detect_model,
    inside,
    pickle_folder_message,
    pickle_message,
)
from unetviz.errors import UnetvizError
from unetviz.files import read_bytes


def _touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_kind(tmp_path):
    demo = detect_model("demo")
    assert demo.kind == "demo" and demo.path == DEMO_DIR and demo.unet_config.is_file()
    assert detect_model(DEMO_DIR).kind == "demo"  # any path to a demo-format folder
    assert detect_model(os.path.relpath(DEMO_DIR)).path == DEMO_DIR

    sd = tmp_path / "sd"
    for f in ("model_index.json", "unet/config.json", "text_encoder/config.json"):
        _touch(sd / f)
    _touch(sd / "tokenizer" / "vocab.json")
    assert detect_model(sd).kind == "diffusers"  # not demo: it has model_index.json

    root = tmp_path / "root"
    _touch(root / "unet" / "config.json")
    k = detect_model(root)
    assert (k.kind, k.unet_config) == ("root", root / "unet" / "config.json")
    k = detect_model(root / "unet")
    assert (k.kind, k.unet_config) == ("unet", root / "unet" / "config.json")
    assert detect_model(root / "unet" / "config.json").kind == "config"
    single = _touch(tmp_path / "m.safetensors", "")
    assert detect_model(single).kind == "single"
    assert detect_model("org/name").kind == "hub"


def test_refusals(tmp_path):
    with pytest.raises(ModelPathError, match="not found"):
        detect_model(tmp_path / "nope")
    with pytest.raises(ModelPathError, match="holds no model"):
        detect_model(tmp_path)
    with pytest.raises(ModelPathError, match="never unpickles"):
        detect_model(_touch(tmp_path / "m.ckpt", ""))
    pk = tmp_path / "pk"
    _touch(pk / "diffusion_pytorch_model.bin", "")
    with pytest.raises(ModelPathError, match="only has pickle weights"):
        detect_model(pk)
    with pytest.raises(ModelPathError, match=r"\.txt file"):
        detect_model(_touch(tmp_path / "notes.txt", ""))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ModelPathError, match="symlink loop"):
        detect_model(loop)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ModelPathError, match="not a regular file"):
        detect_model(fifo)
    assert issubclass(ModelPathError, UnetvizError)


def test_unreadable_is_permission_denied(tmp_path):
    """As root (who reads any file) the read runs in a child without root's DAC-override
    capabilities, so it is held to the mode bits like anyone."""
    f = _touch(tmp_path / "config.json")
    f.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ModelPathError, match="permission denied"):
            read_bytes(f, 100)
        return
    code = (
        "import sys; from unetviz.files import ModelPathError, read_bytes\n"
        "try:\n    read_bytes(sys.argv[1], 100)\nexcept ModelPathError as e:\n    print(e)"
    )
    no_dac = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if subprocess.run([*no_dac, "true"], capture_output=True).returncode:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
    out = subprocess.run(
        [*no_dac, sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60
    )
    assert "permission denied" in out.stdout, out.stdout + out.stderr


def test_read_bytes_regular_files_only(tmp_path):
    with pytest.raises(ModelPathError, match="not a regular file"):
        read_bytes("/dev/zero", 1000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block forever: refused before open
    with pytest.raises(ModelPathError, match="not a regular file"):
        read_bytes(fifo, 1000)
    big = _touch(tmp_path / "big.json", "x" * 2000)
    with pytest.raises(ModelPathError, match="2,000 bytes"):
        read_bytes(big, 1000)
    assert read_bytes(_touch(tmp_path / "ok.json", "{}"), 1000) == b"{}"


def test_inside(tmp_path):
    root = tmp_path / "root"
    (root / "unet").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert inside(root, "unet/x.safetensors") == root / "unet" / "x.safetensors"
    for bad in ("../outside/x", str(outside / "x"), "/etc/passwd"):
        with pytest.raises(ModelPathError, match="outside the model folder"):
            inside(root, bad, "shard")
    (root / "text_encoder").symlink_to(outside)
    with pytest.raises(ModelPathError, match="outside the model folder"):
        inside(root, "text_encoder/config.json")


@pytest.mark.slow  # a child python that imports torch
def test_pickle_hint_is_shell_safe(tmp_path):
    """Issue 10 item 9: the printed conversion command must not run a file name."""
    torch = pytest.importorskip("torch")
    name = "model$(touch PWNED)`touch PWNED2`'\";.ckpt"
    ckpt = tmp_path / name
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, ckpt)
    command = conversion_command(ckpt)
    assert command in pickle_message(ckpt)
    assert command in pickle_folder_message(tmp_path, [name])
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    done = subprocess.run(
        ["bash", "-c", command.replace("python", sys.executable, 1)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    from safetensors.torch import load_file

    out = load_file(tmp_path / (name[: -len(".ckpt")] + ".safetensors"))
    assert out["w"].tolist() == [0.0, 1.0, 2.0]


def test_detect_imports_no_torch():
    code = "import sys, unetviz.detect; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_demo_words_reads_the_tokenizer_like_the_pipeline_without_torch(tmp_path):
    import json
    import shutil

    from unetviz.config import ConfigError
    from unetviz.detect import DEMO_DIR, demo_words
    from unetviz.pipelines.demo import WordTokenizer

    assert demo_words(DEMO_DIR) == WordTokenizer.load(DEMO_DIR / "tokenizer").words
    bad = tmp_path / "demo"
    shutil.copytree(DEMO_DIR / "tokenizer", bad / "tokenizer")
    (bad / "tokenizer" / "vocab.json").write_text(json.dumps({"vocab": ["a", 3]}))
    with pytest.raises(ConfigError, match=r"tokenizer.vocab\[1\] = 3: expected a string"):
        demo_words(bad)
    (bad / "tokenizer" / "vocab.json").write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="expected a list of 1 to"):
        demo_words(bad)


def test_config_files_detect_import_no_circle():
    """config -> files <- detect -> config, counting imports inside functions: no circle."""
    import ast
    from pathlib import Path

    import unetviz

    root = Path(unetviz.__file__).parent
    deps = {}
    for name in ("config", "files", "detect", "errors"):
        tree = ast.parse((root / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unetviz."):
                found.add(node.module.split(".")[1])
        deps[name] = found
    assert deps["errors"] == set() and deps["files"] == {"errors"}
    assert deps["config"] == {"errors", "files"}  # nothing of ours above it
    assert "detect" not in deps["config"] and "config" in deps["detect"]

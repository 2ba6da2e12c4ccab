"""``pip install unetviz`` from a wheel carries everything: the demo model, the app, the CLI.

The wheel is built from a copy of the sources (nothing is written into the repository),
installed with pip into a fresh virtual environment outside the repository whose only other
content is a ``.pth`` line pointing at the development venv's site-packages (torch, gradio...
are not reinstalled; that directory's own ``.pth`` files, among them the editable install of
this repository, are *not* processed through such a line). From there, in a folder outside the
repository, ``import unetviz`` must come from the fresh venv, ``load_pipeline("demo")`` must
generate, and ``unetviz app`` must serve its first page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
from pathlib import Path
import unetviz
from unetviz.pipelines import load_pipeline
from unetviz.detect import DEMO_DIR
pipe = load_pipeline("demo")
run = pipe("a red circle", seed=0, steps=2)
print(json.dumps({
    "unetviz": str(Path(unetviz.__file__).resolve()),
    "prefix": str(Path(sys.prefix).resolve()),
    "demo_dir": str(DEMO_DIR.resolve()),
    "demo_files": sorted(str(p.relative_to(DEMO_DIR)) for p in DEMO_DIR.rglob("*") if p.is_file()),
    "image": list(run.image.size),
    "steps": len(run.trace.timesteps),
    "statics": sorted(p.name for p in (Path(unetviz.__file__).parent / "app" / "static").iterdir()),
}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "unetviz", src / "unetviz", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, src]
    subprocess.run(build, check=True, capture_output=True, text=True, cwd=tmp)
    (wheel,) = tmp.glob("unetviz-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]  # the development venv: torch, gradio, ...
    (Path(purelib) / "unetviz_test_deps.pth").write_text(deps + "\n")
    # no extras: the development venv's diffusers and transformers are made unimportable, as
    # after a plain `pip install unetviz`
    (Path(purelib) / "unetviz_test_no_extras.pth").write_text(
        "import sys; sys.modules.update(diffusers=None, transformers=None)\n"
    )
    install = pip + ["--python", str(python), "install", "--no-deps", "--no-index", wheel]
    subprocess.run(install, check=True, capture_output=True, text=True, cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONNOUSERSITE="1")
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "elsewhere"
    work.mkdir()
    env["UNETVIZ_TEST_CWD"] = str(work)
    return env_dir, env


def test_installed_wheel_generates_with_the_bundled_demo_model(venv):
    env_dir, env = venv
    out = subprocess.run(
        [env_dir / "bin" / "python", "-c", CHECK],
        check=True,
        capture_output=True,
        text=True,
        cwd=env["UNETVIZ_TEST_CWD"],
        env=env,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    prefix = Path(info["prefix"])
    assert prefix == env_dir.resolve()
    assert Path(info["unetviz"]).is_relative_to(prefix), info  # not the repository's copy
    assert Path(info["demo_dir"]).is_relative_to(prefix), info
    assert not Path(info["unetviz"]).is_relative_to(ROOT)
    for needed in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
        "model_card.md",
    ):
        assert needed in info["demo_files"], info["demo_files"]
    shipped = {
        str(p.relative_to(ROOT / "unetviz" / "demo_model"))
        for p in (ROOT / "unetviz" / "demo_model").rglob("*")
        if p.is_file()
    }
    assert shipped <= set(info["demo_files"])  # every shipped file is in the wheel
    assert info["steps"] == 2 and info["image"][0] == info["image"][1] >= 24
    assert info["statics"], "app/static is missing from the wheel"


def test_installed_wheel_serves_the_app(venv):
    env_dir, env = venv
    port = _free_port()
    proc = subprocess.Popen(
        [env_dir / "bin" / "unetviz", "app", "--port", str(port)],
        cwd=env["UNETVIZ_TEST_CWD"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page, deadline = None, time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no page"
        assert "<html" in page.lower() and "gradio" in page.lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as r:
            config = json.loads(r.read().decode())
        assert "unetviz" in json.dumps(config).lower()  # our Blocks, not an empty gradio page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


SD_CHOSEN = r"""
import json, sys
from pathlib import Path
from unetviz.app.registry import ModelRegistry
from unetviz.config import UNetConfig
root = Path(sys.argv[1])
folder = root / "my-sd-model"
(folder / "unet").mkdir(parents=True)
(folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
(folder / "unet" / "config.json").write_text(json.dumps(UNetConfig.preset("sd15").to_dict()))
try:
    import diffusers
except ImportError:
    pass
else:
    raise SystemExit("diffusers is importable: the no-extras set-up did not take")
try:
    ModelRegistry(roots=[root]).pipeline(str(folder))
except Exception as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
"""


def test_installed_wheel_without_extras_names_the_sd_extra(venv, tmp_path):
    """Choosing a real SD model without the `sd` extra: one line naming it, not a traceback."""
    env_dir, env = venv
    out = subprocess.run(
        [env_dir / "bin" / "python", "-c", SD_CHOSEN, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=env["UNETVIZ_TEST_CWD"],
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["type"] == "PipelineError", info
    assert "unetviz[sd]" in info["message"] and "\n" not in info["message"], info

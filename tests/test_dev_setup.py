"""./dev.sh's torch install: the CPU wheel index when it answers, else the default index with a
one-line notice. The real function runs (dev.sh sourced in bash) with pip in ``--dry-run``
mode against a real local HTTP index, so nothing is installed and nothing leaves the machine
except, on the fallback path, pip's own look-up of its default index."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="dev.sh needs bash")


def _fake_torch_wheel(folder: Path, version: str) -> Path:
    """A minimal valid wheel named torch (no code): enough for pip to resolve it."""
    name = f"torch-{version}-py3-none-any.whl"
    dist = f"torch-{version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    with zipfile.ZipFile(folder / name, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return folder / name


class _Index(http.server.SimpleHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Index.seen.append((self.path, self.headers.get("User-Agent", "")))
        super().do_GET()


def _run_install_torch(index_url: str, cwd: Path) -> subprocess.CompletedProcess:
    script = (
        f"source {ROOT / 'dev.sh'}\n"
        f"PY={sys.executable}\n"
        f"PIP_INSTALL=({sys.executable} -m pip install --dry-run --no-deps --ignore-installed "
        "--disable-pip-version-check)\n"
        "install_torch\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNETVIZ_")}
    env.update(
        UNETVIZ_TORCH_INDEX=index_url,
        UNETVIZ_TORCH="2.13.0",
        UNETVIZ_TORCH_INDEX_TIMEOUT="3",
        PIP_RETRIES="0",
        PIP_TIMEOUT="10",
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow  # pip resolves (dry run): a few seconds
def test_cpu_index_is_used_when_it_answers(tmp_path):
    site = tmp_path / "site"
    (site / "cpu" / "torch").mkdir(parents=True)
    wheel = _fake_torch_wheel(site / "cpu" / "torch", "2.13.0+cpu")
    (site / "cpu" / "torch" / "index.html").write_text(
        f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>'
    )
    _Index.seen = []
    handler = lambda *a, **k: _Index(*a, directory=str(site), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cpu"
        out = _run_install_torch(url, tmp_path)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"the CPU build from {url}" in out.stdout
    assert "notice" not in out.stdout
    assert "Would install torch-2.13.0+cpu" in out.stdout, out.stdout + out.stderr
    pip_gets = [path for path, agent in _Index.seen if agent.startswith("pip/")]
    assert "/cpu/torch/" in pip_gets, _Index.seen  # pip itself read the CPU index


@pytest.mark.slow  # pip resolves (dry run): a few seconds
def test_unreachable_cpu_index_falls_back_with_one_notice(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/whl/cpu"
    out = _run_install_torch(url, tmp_path)
    notices = [line for line in out.stdout.splitlines() if "notice" in line]
    assert len(notices) == 1, out.stdout
    assert notices[0] == (
        f"[unetviz] notice: PyTorch's CPU wheel index {url} is not reachable: installing "
        "torch==2.13.0 from the default index (it may be a CUDA build of several GB)"
    )
    # pip then ran against the default index: whatever it resolved, it never asked that URL
    assert f"127.0.0.1:{port}" not in out.stdout.replace(notices[0], "") + out.stderr


def test_dev_sh_knows_its_commands():
    out = subprocess.run(
        ["bash", str(ROOT / "dev.sh"), "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "usage: ./dev.sh app|test|install" in out.stderr

"""scripts/real_checkpoint_check.py cannot meet a real checkpoint here: it imports cleanly (no
torch at import), answers --help, and runs end to end on a tiny random SD folder on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "real_checkpoint_check.py"


def test_help_and_import_clean():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--device", "--dtype", "--steps", "--prompt", "--out"):
        assert flag in out.stdout
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rcc', {str(SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules, 'imports torch at import time'\n"
        "assert callable(m.main) and m.parse_args(['x']).prompts\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_runs_end_to_end_on_a_tiny_sd_folder(tmp_path):
    from tests.sd_tiny import tiny_sd_dir

    folder = tiny_sd_dir("sd1")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--device", "cpu", "--dtype", "float32",
         "--steps", "2", "--rounds", "1", "--prompt", "a red cat", "--out", str(tmp_path / "maps"),
         "--skip-pipeline-parity"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "[parity] UNet noise prediction" in text and "[overhead] capture(daam=True)" in text
    assert "[daam] 'a red cat'" in text and "red" in text
    assert any((tmp_path / "maps").glob("00_*.png"))

"""Peak memory of ``load_unet`` relative to the size of the weights file.

Each load runs in a fresh subprocess; its peak RSS (``VmHWM``, which starts afresh at exec, unlike
``ru_maxrss``, which a child inherits from the parent that forked it) above the post-import
baseline is divided by the float32 safetensors file size. Targets: about 1.0 when the dtype is
kept (one copy of the weights), at most 0.6 when casting to float16 on load (issue 12).

    .venv/bin/python bench/load_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, json
import torch, unetviz
from unetviz import weights  # noqa: F401  (imports done before the baseline)
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
base = rss_mb()
model = unetviz.load_unet(sys.argv[1], dtype=None if sys.argv[2] == 'none' else sys.argv[2])
status = open('/proc/self/status').read().split('VmHWM:')[1]
peak = int(status.split()[0]) / 1024
print(json.dumps({"base": base, "peak": peak, "params": sum(p.numel() for p in model.parameters())}))
"""


def main() -> None:
    import torch

    import unetviz

    data = unetviz.UNetConfig.preset("sd15").to_dict()
    data.update(block_out_channels=[128, 256, 512, 512], attention_head_dim=8)
    with tempfile.TemporaryDirectory() as tmp:
        model = unetviz.build_unet(data, device="cpu")
        from safetensors.torch import save_file

        save_file(model.state_dict(), Path(tmp) / "diffusion_pytorch_model.safetensors")
        (Path(tmp) / "config.json").write_text(json.dumps(data))
        del model
        size_mb = (Path(tmp) / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
        print(f"weights file: {size_mb:.0f} MB (float32)")
        for dtype in ("none", "float16"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, tmp, dtype],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = r["peak"] - r["base"]
            target = "<= 0.6" if dtype == "float16" else "~1.0"
            print(
                f"load_unet dtype={dtype:8s} peak extra {extra:.0f} MB = "
                f"{extra / size_mb:.2f} x the float32 file (target {target})"
            )
    del torch


if __name__ == "__main__":
    main()

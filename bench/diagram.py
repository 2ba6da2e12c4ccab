"""Wall time of ``unetviz diagram --preset sd15|sdxl -o x.svg`` from process start to file.

Targets (issue 4): <= 2 s for sd15, <= 3 s for sdxl. Two cases per preset:

- cold: a new machine (empty user cache). The presets' structures at their default sizes ship
  with the package (unetviz/presets/structures), so no torch is imported;
- warm: the structure trace is in the user cache (any config seen before): no torch either;
- capture: ``--no-cache``, what a config that is neither shipped nor cached costs: import torch,
  build the UNet on the meta device, capture one forward (the first elementwise meta kernel
  also imports torch._dynamo, about 1 s). Not a target case; printed for honesty.

For scale it also times ``python -c pass`` and ``python -c "import torch"`` in the same run.

    .venv/bin/python bench/diagram.py [--repeat 3] [--module]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"sd15": 2.0, "sdxl": 3.0}


def command(module: bool = False) -> list[str]:
    if module:  # the checkout in the working directory, not the installed script
        return [sys.executable, "-m", "unetviz.cli"]
    exe = Path(sys.executable).with_name("unetviz")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("unetviz")
    return [found] if found else [sys.executable, "-m", "unetviz.cli"]


def timed(args: list[str], env: dict[str, str], out: Path | None = None) -> float:
    if out is not None and out.exists():
        out.unlink()
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    if out is not None and not out.is_file():
        raise SystemExit(f"{' '.join(args)} wrote no {out}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    parser.add_argument(
        "--module", action="store_true", help="run `python -m unetviz.cli` from the cwd"
    )
    opts = parser.parse_args()
    cmd = command(opts.module)
    work = Path(tempfile.mkdtemp(prefix="unetviz-bench-"))
    env = dict(os.environ)
    py = [sys.executable]
    base = statistics.median(timed([*py, "-c", "pass"], env) for _ in range(opts.repeat))
    torch_s = statistics.median(timed([*py, "-c", "import torch"], env) for _ in range(opts.repeat))
    print(f"command: {' '.join(cmd)} diagram --preset P -o x.svg   (median of {opts.repeat})")
    print(f"python -c pass: {base:.2f} s   python -c 'import torch': {torch_s:.2f} s")
    print(f"{'preset':6}  {'case':7}  {'seconds':>7}  {'target':>6}  {'time/target':>11}")
    try:
        for preset, target in TARGETS.items():
            out = work / f"{preset}.svg"
            args = [*cmd, "diagram", "--preset", preset, "-o", str(out)]
            cold = []
            for i in range(opts.repeat):
                env["UNETVIZ_CACHE_DIR"] = str(work / f"cache-{preset}-{i}")  # empty each time
                cold.append(timed(args, env, out))
            warm = [timed(args, env, out) for _ in range(opts.repeat)]  # last cache is filled
            # what any config that is neither bundled nor cached costs: torch + meta capture
            capture = [timed([*args, "--no-cache"], env, out) for _ in range(opts.repeat)]
            for case, runs in (("cold", cold), ("warm", warm), ("capture", capture)):
                t = statistics.median(runs)
                verdict = ("ok" if t <= target else "OVER") if case != "capture" else "(info)"
                print(
                    f"{preset:6}  {case:7}  {t:7.2f}  {target:6.1f}  {t / target:11.2f}  {verdict}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

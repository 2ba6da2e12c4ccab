"""Full-size checkpoints (random weights, scripts/make_full_size.py) walked through unetviz as a
user would, each walk a named sub-run in a fresh child process, one table at the end:

- ``unet:MODEL``: ``load_pipeline`` wall time and peak memory (VmHWM above the post-import
  baseline, also / the checkpoint's size on disk); seconds per UNet forward (batch 2 = one
  prompt with CFG, 77 tokens) without and with ``capture()`` (interleaved rounds, the fastest
  of each) and their ratio; the bytes of a 1-step run's trace bundle.
- ``load:MODEL``: the load alone, its resident memory sampled every 20 ms split into anonymous
  memory (tensors) and file pages (a memory-mapped checkpoint counts there), peak / disk.
- ``attention:MODEL``, ``edit:MODEL``, ``diagram:MODEL``: the CLI commands a newcomer types
  (``unetviz attention`` at ``--size`` px and ``--steps``; ``unetviz edit --reweight cat=2``,
  which runs at the model's own size, so ``--edit-steps``; ``unetviz diagram --model``), their
  wall time, peak memory (the child's ru_maxrss), exit status and the files they wrote.
- ``app:MODEL``: the app's handlers in-process (as its tests drive them: Run, then the
  post-load views and files, each Run from another browser session) on the model at its own
  size: resident memory after the load, after 1 and after 5 Runs, against the session store's
  byte budget (``unetviz.app.sessions``).

MODEL is ``sd15`` (diffusers folder), ``sd15-single`` (A1111 single file), ``sdxl`` or
``sdxl-single``; single files are given their family's folder as ``--config`` (the tokenizers).

    python scripts/make_full_size.py /work/fullsize
    nice -n 5 python bench/full_size.py /work/fullsize                       # unet:* at 256 px
    nice -n 5 python bench/full_size.py /work/fullsize --run attention:sdxl --run diagram:sd15
    nice -n 5 python bench/full_size.py /work/fullsize --run 'load:*' --dtype float32
    nice -n 5 python bench/full_size.py /work/fullsize --list

Not part of the test suite (minutes of CPU and several GiB per model): run one at a time.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a cat on the red sofa"

#: model name -> (path under the root, the folder a single file takes as --config)
MODELS = {
    "sd15": ("sd15", None),
    "sd15-single": ("sd15.safetensors", "sd15"),
    "sdxl": ("sdxl", None),
    "sdxl-single": ("sdxl.safetensors", "sdxl"),
}
KINDS = ("unet", "load", "attention", "edit", "diagram", "app")

_VM = """
def vm(key):
    text = open("/proc/self/status").read()
    return int(text.split(key + ":")[1].split()[0]) / 2**20  # GiB
"""

UNET_CHILD = (
    _VM
    + r"""
import json, sys, time, tempfile
from pathlib import Path
import torch
from unetviz import capture
from unetviz.pipelines import load_pipeline

args = json.loads(sys.argv[1])
torch.manual_seed(0)
base = vm("VmRSS")
t0 = time.perf_counter()
pipe = load_pipeline(args["model"], dtype=args["dtype"], config=args["config"])
load_s = time.perf_counter() - t0
load_peak = vm("VmHWM") - base
unet = pipe.unet
cfg = unet.config
side = args["size"] or cfg.sample_size * 8
dtype = next(unet.parameters()).dtype
g = torch.Generator().manual_seed(0)
kw = {"encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim, generator=g).to(dtype)}
if cfg.addition_embed_type == "text_time":
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    kw["added_cond_kwargs"] = {
        "text_embeds": torch.randn(2, pooled, generator=g).to(dtype),
        "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2, dtype=dtype),
    }
sample = torch.randn(2, cfg.in_channels, side // 8, side // 8, generator=g).to(dtype)
plain, captured = [], []
with torch.no_grad():
    for _ in range(args["rounds"]):
        t = time.perf_counter(); unet(sample, 500, **kw); plain.append(time.perf_counter() - t)
        with capture(unet):
            t = time.perf_counter(); unet(sample, 500, **kw); captured.append(time.perf_counter() - t)
run = pipe(args["prompt"], seed=0, steps=1, height=side, width=side)
with tempfile.TemporaryDirectory() as tmp:
    run.trace.save(Path(tmp) / "run.trace")
    trace_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
print(json.dumps({
    "load_s": load_s, "load_peak": load_peak, "peak": vm("VmHWM") - base, "side": side,
    "plain": min(plain), "captured": min(captured), "trace_bytes": trace_bytes,
    "dtype": str(dtype).removeprefix("torch."),
}))
"""
)

LOAD_CHILD = (
    _VM
    + r"""
import json, sys, threading, time
import torch
from unetviz.pipelines import load_pipeline

args = json.loads(sys.argv[1])
base = {k: vm(k) for k in ("RssAnon", "RssFile")}
peak = dict.fromkeys(base, 0.0)
done = threading.Event()

def sample():
    while not done.wait(0.02):
        for k in peak:
            peak[k] = max(peak[k], vm(k) - base[k])

thread = threading.Thread(target=sample, daemon=True)
thread.start()
hwm0 = vm("VmRSS")
t0 = time.perf_counter()
pipe = load_pipeline(args["model"], dtype=args["dtype"], config=args["config"])
load_s = time.perf_counter() - t0
done.set(); thread.join()
parts = [pipe.unet, pipe.vae, *pipe.text_encoders]
params = sum(p.numel() * p.element_size() for m in parts for p in m.parameters())
print(json.dumps({
    "load_s": load_s, "peak": vm("VmHWM") - hwm0, "anon": peak["RssAnon"],
    "file": peak["RssFile"], "end_file": vm("RssFile") - base["RssFile"],
    "weights": params / 2**30, "dtype": str(next(pipe.unet.parameters()).dtype)[6:],
}))
"""
)

APP_CHILD = (
    _VM
    + r"""
import gc, json, sys, tempfile, time
from pathlib import Path

args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
from tests.app_support import Request, run_form
from unetviz.app import create_app

root = Path(args["root"])
blocks, registry = create_app(model_roots=[root], preload=False, dtype=args["dtype"])
handlers = blocks.unetviz_handlers
choice = args["choice"]
t0 = time.perf_counter()
pipe = registry.pipeline(choice)
out = {"load_s": time.perf_counter() - t0, "side": pipe.unet.config.sample_size * 8}
gc.collect()
out["after_load"] = vm("VmRSS")
runs = []
for i in range(args["runs"]):
    request = Request(f"bench-{i}")
    form = run_form(args["prompt"], steps=args["steps"], model=choice)
    t = time.perf_counter()
    result = handlers.run(form, request)
    if result.get("run_msg"):
        raise SystemExit(f"run {i + 1} failed: {result['run_msg']}")
    handlers.post_load(form, request)
    handlers.post_load_files(form, request)
    runs.append(time.perf_counter() - t)
    gc.collect()
    out[f"after_{i + 1}"] = vm("VmRSS")
out.update(
    run_s=runs, peak=vm("VmHWM"), sessions=len(handlers.sessions),
    held=handlers.sessions.nbytes() / 2**30, budget=handlers.sessions.max_bytes / 2**30,
)
print(json.dumps(out))
"""
)


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        env.setdefault(key, "1")
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return env


def _child(code: str, payload: dict) -> tuple[dict | None, str]:
    """Run ``code`` in a fresh interpreter; (its last stdout line as JSON, or None; stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if out.returncode:
        return None, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _cli(args: list[str], log: Path) -> tuple[int, float, float]:
    """``unetviz ARGS`` in a child: (exit status, wall seconds, peak resident GiB from its own
    rusage); its stdout and stderr go to ``log``."""
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unetviz.cli", *args], stdout=fh, stderr=fh, env=_env()
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 2**20


def _written(folder: Path) -> str:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    big = sorted(files, key=lambda p: -p.stat().st_size)[:1]
    total = sum(p.stat().st_size for p in files) / 1e6
    head = f", largest {big[0].name} {big[0].stat().st_size / 1e6:.1f} MB" if big else ""
    return f"{len(files)} files {total:.1f} MB{head}"


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


# ---------------------------------------------------------------------------------- sub-runs
def run_unet(model: Path, config: str | None, args: argparse.Namespace, dtype: str) -> tuple:
    payload = {"model": str(model), "config": config, "size": args.size, "rounds": args.rounds,
               "dtype": dtype, "prompt": PROMPT}  # fmt: skip
    r, err = _child(UNET_CHILD, payload)
    if r is None:
        return None, _tail(err)
    disk = _disk(model) / 2**30
    note = (
        f"load {r['load_s']:.1f} s, load peak {r['load_peak']:.2f} GiB "
        f"({r['load_peak'] / disk:.2f}x disk); s/step {r['plain']:.2f} -> captured "
        f"{r['captured']:.2f} ({r['captured'] / r['plain']:.2f}x); 1-step trace "
        f"{r['trace_bytes'] / 1e6:.0f} MB"
    )
    return (r["dtype"], r["side"], 1, r["load_s"], r["peak"]), note


def run_load(model: Path, config: str | None, args: argparse.Namespace, dtype: str) -> tuple:
    r, err = _child(LOAD_CHILD, {"model": str(model), "config": config, "dtype": dtype})
    if r is None:
        return None, _tail(err)
    disk = _disk(model) / 2**30
    note = (
        f"weights loaded {r['weights']:.2f} GiB; peak anon {r['anon']:.2f} GiB, file pages "
        f"{r['file']:.2f} GiB (still mapped after: {r['end_file']:.2f}); VmHWM {r['peak']:.2f}"
        f" GiB = {r['peak'] / disk:.2f}x disk"
    )
    return (r["dtype"], 0, 0, r["load_s"], r["peak"]), note


def run_cli(kind: str, model: Path, config: str | None, args: argparse.Namespace,
            dtype: str, out: Path) -> tuple:  # fmt: skip
    opts = ["--config", config] if config else []
    folder = out / kind
    steps, side = (args.steps, args.size) if kind == "attention" else (args.edit_steps, "own")
    if kind == "attention":
        cmd = ["attention", PROMPT, "-m", str(model), "-o", str(folder), "--steps", str(steps),
               "--height", str(side), "--width", str(side), "--dtype", dtype, *opts]  # fmt: skip
    elif kind == "edit":
        cmd = ["edit", PROMPT, "-m", str(model), "-o", str(folder), "--steps", str(steps),
               "--reweight", "cat=2", "--dtype", dtype]  # fmt: skip
    else:
        folder.mkdir(parents=True, exist_ok=True)
        cmd, steps = ["diagram", "--model", str(model), "-o", str(folder / "diagram.svg")], 0
    log = out / f"{kind}.log"
    status, wall, peak = _cli(cmd, log)
    note = f"exit {status}: {_written(folder)}; last line: {_last_line(log)}"
    return (dtype if kind != "diagram" else "-", side if steps else 0, steps, wall, peak), note


def run_app(model: Path, config: str | None, args: argparse.Namespace, dtype: str) -> tuple:
    if config:
        return None, "the app opens a single file from a model root; run app:sd15 / app:sdxl"
    payload = {"repo": str(REPO), "root": str(model.parent), "choice": model.name,
               "runs": args.app_runs, "steps": args.app_steps, "prompt": PROMPT,
               "dtype": dtype}  # fmt: skip
    r, err = _child(APP_CHILD, payload)
    if r is None:
        return None, _tail(err)
    n = args.app_runs
    note = (
        f"RSS after load {r['after_load']:.2f} GiB, after 1 run {r['after_1']:.2f}, after {n} "
        f"runs {r[f'after_{n}']:.2f} ({r['sessions']} sessions hold {r['held']:.2f} GiB of the "
        f"{r['budget']:.0f} GiB budget); s/run {', '.join(f'{t:.0f}' for t in r['run_s'])}"
    )
    return (dtype, r["side"], args.app_steps, r["load_s"], r["peak"]), note


def _tail(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return "failed: " + (lines[-1][:200] if lines else "no output")


def _selected(patterns: list[str]) -> list[str]:
    every = [f"{k}:{m}" for k in KINDS for m in MODELS]
    chosen = [name for pat in patterns for name in every if fnmatch.fnmatchcase(name, pat)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in every)]
    if unknown:
        raise SystemExit(f"unknown sub-run {unknown}: expected KIND:MODEL from {every}")
    return list(dict.fromkeys(chosen))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="full-size checkpoints walked through unetviz")
    p.add_argument("root", type=Path, help="the folder scripts/make_full_size.py wrote")
    p.add_argument(
        "--run",
        action="append",
        metavar="KIND:MODEL",
        help=f"sub-run(s), globs allowed; KIND: {', '.join(KINDS)} (default unet:*)",
    )
    p.add_argument("--list", action="store_true", help="list the sub-runs and exit")
    p.add_argument("--size", type=int, default=256, help="pixels for unet and attention")
    p.add_argument("--steps", type=int, default=4, help="attention's sampling steps")
    p.add_argument("--edit-steps", type=int, default=1, help="edit's steps (at native size)")
    p.add_argument("--app-steps", type=int, default=2)
    p.add_argument("--app-runs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="SD 1.5's dtype")
    p.add_argument("--sdxl-dtype", default="bfloat16", help="SDXL's dtype (fits 24 GiB)")
    p.add_argument("--keep", type=Path, help="write the CLI walks' outputs here (else a temp dir)")
    args = p.parse_args(argv)
    names = _selected(args.run or ["unet:*"])
    if args.list:
        print("\n".join(_selected(["*"])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _walk(names, args, Path(args.keep or tmp))


def _walk(names: list[str], args: argparse.Namespace, out_root: Path) -> None:
    head = f"{'run':22s} {'dtype':8s} {'px':>5s} {'steps':>5s} {'wall s':>7s} {'peak GiB':>8s} "
    print(head + f"{'/disk':>6s}  notes", flush=True)
    for name in names:
        kind, model_name = name.split(":")
        rel, config = MODELS[model_name]
        model = args.root / rel
        if not model.exists():
            print(f"{name:22s} missing: {model}", flush=True)
            continue
        dtype = args.sdxl_dtype if model_name.startswith("sdxl") else args.dtype
        cfg = str(args.root / config) if config else None
        if kind in ("attention", "edit", "diagram"):
            out = out_root / name.replace(":", "-")
            out.mkdir(parents=True, exist_ok=True)
            row, note = run_cli(kind, model, cfg, args, dtype, out)
        else:
            row, note = {"unet": run_unet, "load": run_load, "app": run_app}[kind](
                model, cfg, args, dtype
            )
        if row is None:
            print(f"{name:22s} {note}", flush=True)
            continue
        dt, side, steps, wall, peak = row
        disk = _disk(model) / 2**30
        print(
            f"{name:22s} {dt:8s} {side or '-':>5} {steps or '-':>5} {wall:7.1f} {peak:8.2f} "
            f"{peak / disk:6.2f}  {note}",
            flush=True,
        )


if __name__ == "__main__":
    main()

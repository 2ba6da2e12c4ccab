"""unetviz batch engines give the same table row for row: in-process, ``--workers 2`` (local
processes) and Ray actors on a local Ray cluster started here (2 CPUs, no dashboard, loopback).
A worker killed mid-run is replaced and its prompt retried: every prompt present once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet")

from unetviz.batch import JobSpec, run_batch, run_demo_set  # noqa: E402
from unetviz.batch.engines import LocalEngine, RayEngine  # noqa: E402

pytestmark = pytest.mark.slow
N = 20
# few steps, no CFG, one bucket: the engines' plumbing is under test, not the statistics
SPEC = dict(steps=1, guidance=1.0, buckets=1, mask_source="generated")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo set run in-process through the CLI: (prompts file, table)."""
    from unetviz.cli import main

    out = tmp_path_factory.mktemp("ref") / "out"
    args = ["batch", "--demo-set", str(N), "-o", str(out), "--steps", "1", "-g", "1"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--buckets", "1"])
    assert done.value.code == 0
    table = pq.read_table(out / "table.parquet")
    assert len(table) > N * 8 and set(table.column("row").to_pylist()) == set(range(N))
    assert table.column("iou").null_count < len(table)  # generated masks were scored
    return out / "prompts.jsonl", table


def _killer(engine, after=4):
    state = {"killed": None}

    def progress(p):
        if state["killed"] is None and p.done == after and engine.pids():
            state["killed"] = engine.pids()[0]  # busy workers first
            os.kill(state["killed"], signal.SIGKILL)

    return state, progress


def _check_complete(out, reference_table):
    table = pq.read_table(out / "table.parquet")
    prompts = pq.read_table(out / "prompts.parquet").to_pandas()
    assert sorted(prompts["row"]) == list(range(N)) and (prompts["status"] == "ok").all()
    assert table.equals(reference_table)  # every prompt once, bit-identical statistics
    return prompts


def test_local_workers_equal_in_process_and_survive_a_kill(reference, tmp_path):
    prompts_file, ref = reference
    from unetviz.batch.demo_set import known_classes

    spec = JobSpec(**SPEC, known_classes=known_classes())
    engine = LocalEngine(2)
    state, progress = _killer(engine)
    res = run_batch(prompts_file, tmp_path / "w2", spec, engine=engine, progress=progress)
    assert state["killed"] is not None and res.worker_deaths == 1
    prompts = _check_complete(tmp_path / "w2", ref)
    assert prompts["worker"].nunique() >= 2
    # the killed worker's prompt (if it was busy, as it usually is) ran again
    assert prompts["attempts"].max() <= 2


def test_ray_actors_equal_in_process_and_survive_a_kill(reference, tmp_path):
    ray = pytest.importorskip("ray")
    prompts_file, ref = reference
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        from unetviz.batch.demo_set import known_classes

        spec = JobSpec(**SPEC, known_classes=known_classes())
        engine = RayEngine("auto", workers=2)
        state, progress = _killer(engine)
        res = run_batch(prompts_file, tmp_path / "ray", spec, engine=engine, progress=progress)
        assert state["killed"] is not None and res.worker_deaths >= 1
        prompts = _check_complete(tmp_path / "ray", ref)
        assert prompts["worker"].nunique() >= 2
        assert ray.is_initialized()  # the engine leaves a cluster it did not start running
    finally:
        ray.shutdown()


def test_demo_set_rerun_resumes(reference, tmp_path):
    """run_demo_set into the same folder again: the same captions, nothing re-run."""
    prompts_file, _ = reference
    out = prompts_file.parent
    res = run_demo_set(N, out, JobSpec(**SPEC))
    assert (res.ran, res.skipped) == (0, N)


def test_stable_diffusion_pipeline_rows(tmp_path):
    """The same worker on a tiny random SD 1.x pipeline (diffusers folder, CLIP BPE tokens):
    per-word rows scored against a mask, and the DAAM-like aggregate."""
    pytest.importorskip("diffusers")
    import json

    import numpy as np

    from tests.sd_tiny import build_tiny_sd

    model = build_tiny_sd(tmp_path / "sd1")
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:40] = True
    np.savez(tmp_path / "m.npz", cat=mask)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a photo of a cat", "masks": "m.npz"}))
    res = run_batch(tmp_path / "p.jsonl", tmp_path / "out", JobSpec(model=str(model), steps=2))
    assert (res.ran, res.failed) == (1, 0)
    table = pq.read_table(tmp_path / "out" / "table.parquet").to_pandas()
    assert list(dict.fromkeys(table["word"])) == ["a", "photo", "of", "cat"]
    cat = table[table["word"] == "cat"]
    assert cat["has_mask"].all() and cat["iou"].between(0, 1).all()
    assert (
        "daam-approx" in set(cat["layer"])
        and cat["location"].isin(["down", "mid", "up", "all"]).all()
    )


# ---------------------------------------------------------------------------- bounds and waits
def _prompts(path, n):
    import json

    path.write_text("".join(json.dumps({"prompt": "a red circle", "seed": i}) + "\n" for i in range(n)))  # fmt: skip
    return path


def test_workers_are_bounded_by_prompts_cores_and_memory(tmp_path):
    """No more workers than prompts (2 asked, 1 prompt: 1 started); more than this machine's
    cores and memory hold is refused before the folder is made."""
    from unetviz.batch.engines import machine_capacity, model_bytes
    from unetviz.batch.rows import BatchError

    cores, avail, most = machine_capacity(model_bytes("demo"))
    assert 1 <= most <= cores and avail > 0
    if most < 256:
        with pytest.raises(BatchError, match=f"cores and .* GiB of memory available; .* at most {most}"):  # fmt: skip
            run_batch(_prompts(tmp_path / "p.jsonl", 1), tmp_path / "big", JobSpec(**SPEC), engine=LocalEngine(most + 1))  # fmt: skip
        assert not (tmp_path / "big").exists()
    engine = LocalEngine(min(2, most))
    res = run_batch(_prompts(tmp_path / "p.jsonl", 1), tmp_path / "one", JobSpec(**SPEC), engine=engine)  # fmt: skip
    assert (res.ran, res.failed, engine.workers) == (1, 0, 1)


def test_a_stalled_local_worker_is_replaced_and_its_prompt_retried(tmp_path):
    """A worker stopped (SIGSTOP) while it holds a prompt gives no result: after the prompt's
    timeout it is killed, replaced, and the prompt runs again; every prompt is present once."""
    engine = LocalEngine(1)
    stopped = {}

    def progress(p):
        if p.done == 1 and not stopped:
            stopped["pid"] = engine.pids()[0]
            os.kill(stopped["pid"], signal.SIGSTOP)

    spec = JobSpec(**SPEC, timeout=3)
    res = run_batch(_prompts(tmp_path / "p.jsonl", 3), tmp_path / "o", spec, engine=engine, progress=progress)  # fmt: skip
    assert stopped and (res.ran, res.failed, res.worker_deaths) == (3, 0, 1)
    prompts = pq.read_table(tmp_path / "o" / "prompts.parquet").to_pandas()
    assert sorted(prompts["row"]) == [0, 1, 2] and sorted(prompts["attempts"]) == [1, 1, 2]
    with pytest.raises(ProcessLookupError):
        os.kill(stopped["pid"], 0)  # the stopped worker was killed, not left behind


def test_the_default_prompt_timeout_follows_the_model_and_steps():
    from unetviz.batch.engines import TIMEOUT_BASE_S, prompt_timeout

    task = {"row": {"steps": 10}}
    assert prompt_timeout(JobSpec(), task, 10**6) == TIMEOUT_BASE_S + 10 * 1.0  # demo-sized
    assert prompt_timeout(JobSpec(), task, 4 * 10**9) == TIMEOUT_BASE_S + 10 * 80.0
    assert prompt_timeout(JobSpec(steps=5), {"row": {"steps": None}}, 10**6) == TIMEOUT_BASE_S + 5
    assert prompt_timeout(JobSpec(timeout=7.5), task, 4 * 10**9) == 7.5


# ---------------------------------------------------------------------------- ray, bounded
def test_an_unreachable_ray_address_is_one_error_line_at_once(tmp_path, capsys):
    pytest.importorskip("ray")
    from unetviz.cli import main

    out = tmp_path / "o"
    p = _prompts(tmp_path / "p.jsonl", 1)
    with pytest.raises(SystemExit) as ex:
        main(["batch", str(p), "-o", str(out), "--ray", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.startswith(
        "error: cannot reach a Ray cluster at '127.0.0.1:1'"
    )
    assert not out.exists()


def test_sigterm_ends_a_ray_connect_that_never_answers(tmp_path):
    """A listener that accepts and never speaks (ray.init would wait for it for minutes):
    SIGTERM ends the job at once (exit 130), no folder left."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    out = tmp_path / "o"
    p = _prompts(tmp_path / "p.jsonl", 1)
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "unetviz.cli", "batch", str(p), "-o", str(out), "--ray", f"127.0.0.1:{srv.getsockname()[1]}"]  # fmt: skip
    # a dead cluster found after 2 s of silence, not 10: the same code path, a shorter test
    env = {**os.environ, "PYTHONPATH": root, "UNETVIZ_RAY_PROBE_S": "2"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(8)  # imported, probed, inside ray.init
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=20)[1]
    finally:
        proc.kill()
        srv.close()
    assert proc.returncode == 130 and "interrupted before any prompt finished" in err, err
    assert not out.exists()


@pytest.fixture
def ray_head(monkeypatch):
    """A Ray cluster started by another Python process (2 CPUs, no GPU, no token auth here):
    (address, process)."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code = (
        "import ray, time; c = ray.init(num_cpus=2, include_dashboard=False, "
        "log_to_driver=False); print(c.address_info['gcs_address'], flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    address = proc.stdout.readline().strip()
    yield address, proc
    proc.kill()
    proc.wait(30)


def _descendants(pid):
    import subprocess

    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()  # fmt: skip
    return [int(k) for k in kids] + [g for k in kids for g in _descendants(int(k))]


def test_ray_refuses_missing_gpus_and_keeps_prompts_when_the_cluster_dies(ray_head, tmp_path):
    """Against a cluster without GPUs, --gpus-per-worker 1 is refused before anything is
    written; then `unetviz batch` runs on it and the cluster's processes are killed mid-run:
    the job ends with one error line (no hang), and the prompts done before are in the tables."""
    import subprocess
    import sys
    import time

    from unetviz.batch.rows import BatchError

    address, head = ray_head
    p = _prompts(tmp_path / "p.jsonl", 60)
    with pytest.raises(
        BatchError, match=r"has 0 GPUs; --gpus-per-worker 1 x 1 worker\(s\) needs 1"
    ):
        run_batch(p, tmp_path / "gpu", JobSpec(**SPEC), engine=RayEngine(address, 1, 1.0))
    assert not (tmp_path / "gpu").exists()
    out = tmp_path / "o"
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "unetviz.cli", "batch", str(p), "-o", str(out), "--ray", address, "--workers", "1", "--steps", "1", "-g", "1", "--buckets", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": root})  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("parts/*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.5)  # the first part: 16 prompts done
        assert proc.poll() is None
        for pid in [*_descendants(head.pid), head.pid]:
            os.kill(pid, signal.SIGKILL)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert (
        proc.returncode == 2 and "error: the Ray cluster" in err and "stopped answering" in err
    ), err
    prompts = pq.read_table(out / "prompts.parquet").to_pandas()
    assert len(prompts) >= 16 and (prompts["status"] == "ok").all()


@pytest.mark.parametrize("text, want", [("2", 2.0), ("600", 600.0), ("0", 10.0), ("abc", 10.0), ("nan", 10.0), ("1e9", 10.0), ("", 10.0)])  # fmt: skip
def test_the_ray_probe_interval_comes_from_the_environment_within_bounds(monkeypatch, text, want):
    from unetviz.batch.engines import _probe_s

    monkeypatch.setenv("UNETVIZ_RAY_PROBE_S", text)
    assert _probe_s() == want

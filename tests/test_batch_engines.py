"""unetviz batch engines give the same table row for row: in-process, ``--workers 2`` (local
processes) and Ray actors on a local Ray cluster started here (2 CPUs, no dashboard, loopback).
A worker killed mid-run is replaced and its prompt retried: every prompt present once."""

from __future__ import annotations

import os
import signal

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

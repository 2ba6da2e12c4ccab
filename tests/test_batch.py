"""unetviz batch: prompt-set validation, statistics, the output folder, resume, failures,
Ctrl-C (fast: in-process, 1-2 steps on the shipped demo model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from tests.demo_support import shipped_demo  # noqa: E402
from unetviz.batch import BatchError, JobSpec, read_prompts, run_batch  # noqa: E402
from unetviz.batch.rows import load_masks  # noqa: E402
from unetviz.batch.stats import buckets, map_stats  # noqa: E402
from unetviz.outputs import MARKER  # noqa: E402

SPEC = dict(steps=1, guidance=1.0, buckets=1)


@pytest.fixture(scope="module")
def engine():
    """One in-process engine for the module: the demo model loads once."""
    from unetviz.batch.engines import InProcessEngine

    return InProcessEngine()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------- rows
@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"prompt": "a cat", "sed": 1}', "unknown key(s) ['sed']"),
        ('{"prompt": "a cat", "seed": -1}', "'seed' must be an integer"),
        ('{"prompt": "a cat", "seed": true}', "'seed' must be an integer"),
        ('{"prompt": "a cat", "steps": 0}', "'steps' must be an integer from 1"),
        ('{"prompt": "a cat", "guidance": NaN}', "'guidance' must be a finite number"),
        ('{"prompt": "a cat", "masks": "../x.npz"}', "outside the prompts file's folder"),
        ('{"prompt": "a cat", "masks": "nope.npz"}', "no such file or folder"),
        ('{"prompt": "a cat", "classes": ["noun"]}', "'classes' must map words"),
    ],
)
def test_bad_rows_are_named_with_their_line(tmp_path, line, needle):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a red circle"}\n\n' + line + "\n")
    with pytest.raises(BatchError) as err:
        read_prompts(f)
    assert "p.jsonl line 3:" in str(err.value) and needle in str(err.value)


def test_rows_defaults_keys_and_limits(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red circle"}, {"prompt": "a", "seed": 9}])
    a, b = read_prompts(f)
    assert (a.seed, b.seed, a.index, b.line) == (0, 9, 0, 2)
    assert (
        a.key.startswith("0000000-")
        and a.key != read_prompts(_jsonl(tmp_path / "q.jsonl", [{"prompt": "a red square"}]))[0].key
    )
    with pytest.raises(BatchError, match="no prompts"):
        read_prompts(_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(BatchError, match="is a folder"):
        read_prompts(tmp_path)
    with pytest.raises(BatchError, match="not found"):
        read_prompts(tmp_path / "missing.jsonl")


def test_masks_npz_and_png_folder(tmp_path):
    from PIL import Image

    m = np.zeros((8, 8), bool)
    m[2:4, 2:4] = True
    np.savez(tmp_path / "m.npz", Circle=m, red=m.astype(np.uint8))
    got = load_masks(tmp_path, "m.npz")
    assert set(got) == {"circle", "red"} and got["red"].dtype == bool and got["red"].sum() == 4
    (tmp_path / "pngs").mkdir()
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "pngs" / "cat.png")
    assert load_masks(tmp_path, "pngs")["cat"].sum() == 4
    np.savez(tmp_path / "bad.npz", cat=np.zeros((2, 2, 2)))
    with pytest.raises(BatchError, match="expected 2-D"):
        load_masks(tmp_path, "bad.npz")
    np.savez(tmp_path / "vals.npz", cat=np.full((2, 2), 0.5))
    with pytest.raises(BatchError, match="booleans or 0/1"):
        load_masks(tmp_path, "vals.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BatchError, match="not a readable .npz"):
        load_masks(tmp_path, "junk.npz")


# ---------------------------------------------------------------------------- statistics
def test_map_stats_on_known_maps():
    one = torch.zeros(4, 4)
    one[1, 2] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    s = map_stats(one, mask, 0.4)
    assert s["entropy"] == 0.0 and s["concentration"] == 1.0
    assert (s["peak_y"], s["peak_x"]) == (0.375, 0.625)
    assert s["area"] == 1 / 16 and s["iou"] == 1.0 and s["mass_in"] == 1.0
    flat = map_stats(torch.ones(4, 4), ~mask, 0.4)
    assert abs(flat["entropy"] - 1.0) < 1e-12 and abs(flat["mass_in"] - 15 / 16) < 1e-12
    # a map at half the mask's resolution is upsampled (bicubic) to it
    quadrant = np.zeros((4, 4), bool)
    quadrant[:2, :2] = True
    half = map_stats(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), quadrant, 0.4)
    assert 0.5 <= half["iou"] <= 1 and half["mass_in"] > 0.5 > half["mass_out"]
    assert map_stats(torch.ones(2, 2), None, 0.4)["iou"] is None


def test_large_masks_are_scored_at_128px():
    from unetviz.batch.stats import scoring_masks

    big = np.zeros((512, 384), bool)
    big[100:300, 40:200] = True
    small = scoring_masks({"cat": big, "dog": big[:96, :96]})
    assert small["cat"].shape == (128, 96) and small["dog"].shape == (96, 96)
    assert abs(int(small["cat"].sum()) - big.sum() / 16) <= 2 * (128 + 96)  # edges only


def test_buckets_cover_the_schedule():
    assert buckets(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert buckets(2, 4) == [(0, 1), (1, 2)]
    assert buckets(1, 1) == [(0, 1)]


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("set")
    m = np.zeros((24, 24), bool)
    m[4:12, 4:12] = True
    np.savez(d / "m0.npz", circle=m, red=m)
    rows = [
        {"prompt": "a red circle", "masks": "m0.npz"},
        {"prompt": "a green dog"},  # not in the demo vocabulary: fails, recorded
        {"prompt": "a blue square", "seed": 5},
        {"prompt": "a yellow triangle", "classes": {"triangle": "shape-noun"}},
    ]
    return _jsonl(d / "prompts.jsonl", rows)


def test_run_writes_tables_records_failures_and_resumes(small_set, tmp_path, engine):
    out = tmp_path / "out"
    res = run_batch(small_set, out, JobSpec(**SPEC), engine=engine)
    assert (res.ran, res.failed, res.skipped) == (4, 1, 0)
    assert "UnknownWordError" in res.errors[0][1] and res.errors[0][0] == 2
    table = pq.read_table(out / "table.parquet").to_pandas()
    prompts = pq.read_table(out / "prompts.parquet").to_pandas()
    assert list(prompts["status"]) == ["ok", "error", "ok", "ok"]
    assert "'dog'" in prompts["error"][1] and prompts["image"].isna()[1]
    assert sorted(table["row"].unique()) == [0, 2, 3]
    # one row per (prompt, word, layer, bucket) + two whole-run rows per word; 7 demo attn layers
    words0 = table[table["row"] == 0]
    assert len(words0) == 3 * (7 + 2)  # + "daam" and "daam-approx" rows
    assert set(words0[words0["has_mask"]]["word"]) == {"circle", "red"}
    assert words0["iou"].notna().sum() == 2 * 9
    assert (table[table["word"] == "triangle"]["word_class"] == "shape-noun").all()
    assert (table[table["word"] == "a"]["word_class"] == "function").all()
    for image in prompts["image"].dropna():
        assert (out / image).is_file()
    html = (out / "summary.html").read_text()
    assert "Failed prompts" in html and "a green dog" in html
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js embedded, no CDN
    listed = set(json.loads((out / MARKER).read_text())["files"])
    present = {p.relative_to(out).as_posix() for p in out.rglob("*")} - {MARKER}
    assert present <= listed  # the folder stays recognisably unetviz's own
    before = (out / "table.parquet").read_bytes()
    again = run_batch(small_set, out, JobSpec(**SPEC), engine=engine)
    assert (again.ran, again.skipped) == (0, 4)
    assert (out / "table.parquet").read_bytes() == before
    retry = run_batch(small_set, out, JobSpec(**SPEC), engine=engine, retry_failed=True)
    assert (retry.ran, retry.failed) == (1, 1)
    assert len(pq.read_table(out / "prompts.parquet")) == 4  # the latest result per prompt
    with pytest.raises(BatchError, match=r"other options: steps 1 \(now 2\)"):
        run_batch(small_set, out, JobSpec(**{**SPEC, "steps": 2}))


def test_ctrl_c_leaves_a_consistent_table_and_resumes(small_set, tmp_path, engine):
    out = tmp_path / "out"

    def interrupt(p):
        if p.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(small_set, out, JobSpec(**SPEC), engine=engine, part_size=1, progress=interrupt)
    prompts = pq.read_table(out / "prompts.parquet").to_pandas()
    assert list(prompts["row"]) == [0, 1]
    assert set(pq.read_table(out / "table.parquet").column("row").to_pylist()) == {0}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    res = run_batch(small_set, out, JobSpec(**SPEC, keep_traces=True), engine=engine)
    assert (res.ran, res.skipped) == (2, 2)
    assert len(pq.read_table(out / "prompts.parquet")) == 4
    assert len(list((out / "traces").glob("*.trace"))) == 2  # --keep-traces: rows 2 and 3


def test_dataset_view_opens_inside_roots_only(small_set, tmp_path, engine):
    from unetviz.batch.dataset import open_dataset

    out = tmp_path / "runs" / "out"
    out.parent.mkdir()
    run_batch(small_set, out, JobSpec(**SPEC, keep_traces=True), engine=engine)
    ds = open_dataset("out", roots=[tmp_path / "runs"])
    assert set(ds.figures()) == {"layer_time", "resolution", "word_class"}
    heads, rows = ds.prompt_table()
    assert heads[:3] == ["row", "status", "prompt"] and [r[1] for r in rows][:2] == ["ok", "error"]
    d = ds.drill(0)
    side = shipped_demo()["px"]
    assert d.image.size == (side, side) and [r[0] for r in d.words[1]] == ["a", "red", "circle"]
    assert d.figure is not None and d.heatmaps is not None  # trace kept: per-word heatmaps
    failed = ds.drill(1)
    assert failed.status == "error" and "dog" in failed.error and failed.image is None
    with pytest.raises(BatchError, match="not in this dataset"):
        ds.drill(99)
    with pytest.raises(BatchError, match="inside the allowed roots"):
        open_dataset(out, roots=[tmp_path / "elsewhere"])
    with pytest.raises(BatchError, match="inside the allowed roots"):
        open_dataset("../runs/out", roots=[tmp_path / "runs" / "x"])


def test_app_dataset_tab_opens_a_run_and_drills_into_a_prompt(small_set, tmp_path, engine):
    """The app's Dataset tab handlers on a real batch output inside the model roots."""
    from unetviz.app.dataset import drill, open_folder
    from unetviz.app.registry import ModelRegistry

    out = tmp_path / "roots" / "out"
    out.parent.mkdir()
    run_batch(small_set, out, JobSpec(**SPEC), engine=engine)
    registry = ModelRegistry(roots=[tmp_path / "roots"])
    msg, head, f1, f2, f3, prompts, ds = open_folder(registry, "out")
    assert msg.startswith("opened") and head and ds is not None
    assert all(f is not None for f in (f1, f2, f3)) and prompts["data"][1][1] == "error"
    text, image, words, figure, _ = drill(ds, 0)
    assert "a red circle" in text and image is not None and words["data"]
    assert "error" in drill(ds, 1)[0] and drill(ds, 99)[0].startswith("**Error:**")
    assert drill(None, 0)[0] == "open a dataset first"
    outside = open_folder(registry, str(small_set.parent))  # a folder outside the roots
    assert outside[0].startswith("**Error:**") and outside[-1] is None


def test_refuses_foreign_folder_and_bad_options(small_set, tmp_path):
    from unetviz.errors import OutputError

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not empty and was not written by unetviz"):
        run_batch(small_set, foreign, JobSpec(**SPEC))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(BatchError, match="mask source"):
        run_batch(small_set, tmp_path / "o", JobSpec(mask_source="layout"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="nope"):  # the model does not load: no folder left
        run_batch(small_set, tmp_path / "o", JobSpec(model=str(tmp_path / "nope")))
    assert not (tmp_path / "o").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from unetviz.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prompts file not found") and err.count("\n") == 1
    with pytest.raises(SystemExit) as ex:
        main(["batch", "-o", str(tmp_path / "o")])
    assert ex.value.code == 2 and "--demo-set" in capsys.readouterr().err


# ---------------------------------------------------------------------------- options, up front
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--guidance", "nan"], "--guidance=nan: expected a number 0..100"),
        (["--guidance", "-5"], "--guidance=-5.0: expected a number 0..100"),
        (["--steps", "100000000"], "--steps=100000000: expected a whole number 1..1000"),
        (["--steps", "1001"], "--steps=1001: expected a whole number 1..1000"),
        (["--tau", "1"], "--tau=1: expected a number strictly between 0 and 1"),
        (["--timeout", "0.5"], "--timeout=0.5: expected a number 1..86400"),
        (["--gpus-per-worker", "nan"], "--gpus-per-worker=nan: expected a number 0..1024"),
        (["--gpus-per-worker", "inf"], "--gpus-per-worker=inf: expected a number 0..1024"),
        (["--ray", "local", "--gpus-per-worker", "inf"], "--gpus-per-worker=inf"),
        (["--workers", "257"], "--workers=257: expected a whole number 1..256"),
    ],
)
def test_batch_options_are_checked_before_anything_is_written(small_set, tmp_path, capsys, args, needle):  # fmt: skip
    """`unetviz batch` checks its own defaults (and every option) first: one error line,
    exit 2, no folder; a row's default guidance of NaN never reaches batch.json."""
    from unetviz.cli import main

    out = tmp_path / "o"
    with pytest.raises(SystemExit) as ex:
        main(["batch", str(small_set), "-o", str(out), *args])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err and not out.exists()
    with pytest.raises(BatchError, match="--steps=1000.5"):
        run_batch(small_set, out, JobSpec(steps=1000.5))


def test_the_limits_of_a_batch_option_at_the_limit():
    from unetviz.batch.run import check_spec

    check_spec(JobSpec(steps=1000, guidance=100.0, buckets=100, tau=0.999, timeout=86400))
    check_spec(JobSpec(steps=1, guidance=0.0, buckets=1, tau=0.001, timeout=1))
    with pytest.raises(BatchError, match="--guidance=100.01"):
        check_spec(JobSpec(guidance=100.01))
    with pytest.raises(BatchError, match="--buckets=101"):
        check_spec(JobSpec(buckets=101))


@pytest.mark.parametrize(
    "args", [["0"], ["-5"], ["1e9"], ["100001"], ["3", "--buckets", "0"], ["3", "-g", "nan"]]
)
def test_refused_demo_set_options_leave_no_folder(tmp_path, capsys, args):
    from unetviz.cli import main

    out = tmp_path / "o"
    with pytest.raises(SystemExit) as ex:
        main(["batch", "--demo-set", *args, "-o", str(out)])
    assert ex.value.code == 2 and not out.exists(), capsys.readouterr().err


def test_the_demo_set_size_at_the_limit_and_one_past():
    from unetviz.batch.demo_set import MAX_DEMO_SET, check_count

    assert check_count(MAX_DEMO_SET) == MAX_DEMO_SET and check_count(1) == 1
    for bad in (MAX_DEMO_SET + 1, 0):
        with pytest.raises(BatchError, match=f"--demo-set={bad}: expected a whole number"):
            check_count(bad)


def test_prompts_cli_errors_are_one_line(tmp_path, capsys):
    """A deeply nested JSON line, and a prompts file with more bad rows than are shown."""
    from unetviz.cli import main

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n' + "[" * 60_000 + "\n" + "x\n" * 20)
    with pytest.raises(SystemExit) as ex:
        main(["batch", str(f), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "line 2: JSON nested too deeply" in err
    assert err.startswith("error: 21 bad row(s)") and "and 13 more" in err


def test_two_runs_into_one_folder_take_a_lock(small_set, tmp_path, engine):
    from unetviz.batch.run import _job
    from unetviz.batch.store import Store

    out = tmp_path / "out"
    run_batch(small_set, out, JobSpec(**SPEC), engine=engine)
    store = Store.open(out, _job(JobSpec(**SPEC), small_set.resolve()))
    with store.locked():  # another run holds the folder
        with pytest.raises(BatchError, match="in use by another unetviz batch run"):
            run_batch(small_set, out, JobSpec(**SPEC), engine=engine, retry_failed=True)
    assert (out / "table.parquet").is_file()
    again = run_batch(small_set, out, JobSpec(**SPEC), engine=engine, retry_failed=True)
    assert again.ran == 1  # the lock is released: the failed row reruns


def test_edit_flags_with_non_ascii_digits_are_one_error_line(capsys):
    """`--reweight "²=0"` and `--ablate-skip "²"`: str.isdigit accepts superscripts that int()
    refuses; the one rule (callargs.index_or_name) keeps them text, named in the edit's error."""
    from unetviz.callargs import index_or_name
    from unetviz.cli import main

    assert (index_or_name(" 3 "), index_or_name("²"), index_or_name("-1"), index_or_name("cat")) == (3, "²", "-1", "cat")  # fmt: skip
    for flag, value, needle in (
        ("--reweight", "²=0", "Reweight('²')"),
        ("--ablate-skip", "²", "AblateSkip skip='²'"),
        ("--reweight", "٣=0", "Reweight('٣')"),  # Arabic-Indic three
    ):
        with pytest.raises(SystemExit) as ex:
            main(["edit", "a red circle", flag, value, "--steps", "1", "-o", "/nonexistent/x"])
        err = capsys.readouterr().err
        assert ex.value.code == 2 and err.startswith("error: ") and needle in err, err
        assert err.count("\n") == 1

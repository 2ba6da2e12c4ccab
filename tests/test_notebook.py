"""examples/quickstart.ipynb runs end to end in a fresh kernel, and every cell shows what it
should (each code cell's ``metadata.unetviz.expect`` lists ``mime[:substring]`` or
``stream:substring``); the outputs saved in the file (what GitHub shows) satisfy the same."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _check(nb) -> None:
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(cells) >= 6
    for i, cell in enumerate(cells):
        outputs = cell.get("outputs", [])
        where = f"code cell {i}: {cell.source.splitlines()[-1]!r}"
        assert outputs, f"{where} produced no output"
        assert not [o for o in outputs if o.output_type == "error"], where
        assert not [o for o in outputs if o.get("name") == "stderr"], where
        bundle: dict[str, str] = {}
        for o in outputs:
            if o.output_type == "stream":
                bundle["stream"] = bundle.get("stream", "") + o.text
            for mime, value in o.get("data", {}).items():
                bundle[mime] = value if isinstance(value, str) else str(value)
        for want in cell.metadata["unetviz"]["expect"]:
            mime, _, needle = want.partition(":")
            assert mime in bundle, f"{where}: no {mime} output (got {sorted(bundle)})"
            assert needle in bundle[mime], f"{where}: {mime} output lacks {needle!r}"
        if "image/png" in bundle:
            assert bundle["image/png"].startswith("iVBORw0KGgo"), where  # base64 of a PNG
        for mime in ("text/html", "image/svg+xml"):
            assert "<script" not in bundle.get(mime, "").lower(), where


def test_saved_notebook_has_its_outputs():
    """What GitHub's static viewer shows: outputs saved in the file, no JavaScript."""
    _check(nbformat.read(NOTEBOOK, as_version=4))


@pytest.mark.slow
def test_notebook_executes_in_a_fresh_kernel(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    _check(nb)

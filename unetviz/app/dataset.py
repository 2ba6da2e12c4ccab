"""The Dataset tab: open a ``unetviz batch`` output folder (inside the model roots) and read
its summary plots, its prompt table and one prompt's drill-down, with no model run.

The work is in :mod:`unetviz.batch.dataset` (confinement, size caps, figures); this file only
lays it out. pyarrow is an optional extra: without it the tab says how to install it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError


def open_folder(registry: Any, folder: str) -> tuple:
    """(message, headline rows, 3 figures, prompt table, state) for the Open button."""
    try:
        from unetviz.batch.dataset import open_dataset
    except ImportError:
        return ("install the batch extra to read datasets: pip install 'unetviz[batch]'",
                None, None, None, None, None, None)  # fmt: skip
    try:
        ds = open_dataset(folder.strip(), roots=registry.roots)
        figs = ds.figures()
        heads, rows = ds.prompt_table()
        headline = [list(r) for r in ds.headline()]
    except UnetvizError as exc:
        return (f"**Error:** {exc}", None, None, None, None, None, None)
    return (
        f"opened `{folder.strip()}`: {len(rows)} prompts",
        headline,
        figs["layer_time"],
        figs["resolution"],
        figs["word_class"],
        {"headers": heads, "data": rows},
        ds,
    )


def drill(ds: Any, row: Any) -> tuple:
    """(message, image, word table, figure, heatmaps) of one prompt of the open dataset."""
    if ds is None:
        return ("open a dataset first", None, None, None, None)
    try:
        row = int(row)
    except (TypeError, ValueError):
        return (f"row={row!r}: expected a whole number", None, None, None, None)
    try:
        d = ds.drill(row)
    except UnetvizError as exc:
        return (f"**Error:** {exc}", None, None, None, None)
    heads, rows = d.words
    status = f"row {row}: {d.status}" + (f" ({d.error})" if d.error else "")
    words = {"headers": heads, "data": rows} if rows else None
    image = d.image
    if image is not None and image.width < 256:  # the demo's 24 px: enlarge, keep the pixels
        image = image.resize((image.width * 12, image.height * 12), resample=0)
    return (f"{status}: {d.prompt}", image, words, d.figure, d.heatmaps)


def build_dataset(ctx: Any) -> None:
    """Folder box + Open -> headline, plots, prompts; a row number -> that prompt's details."""
    registry = ctx.registry
    gr.Markdown(
        "Open the output folder of `unetviz batch` (a path inside the model roots) to see which "
        "layers and timesteps localise each word, over the whole prompt set."
    )
    with gr.Row():
        folder = gr.Textbox(label="Batch output folder", scale=4, elem_id="ds_folder")
        open_btn = gr.Button("Open", scale=1, elem_id="ds_open")
    msg = gr.Markdown("", elem_id="ds_msg")
    headline = gr.Dataframe(headers=["measure", "value"], label="Headline", elem_id="ds_head")
    with gr.Row():
        f1, f2, f3 = gr.Plot(), gr.Plot(), gr.Plot()
    prompts = gr.Dataframe(label="Prompts", elem_id="ds_prompts")
    state = gr.State(None)
    with gr.Row():
        row = gr.Number(0, label="Prompt row", precision=0, elem_id="ds_row")
        show = gr.Button("Show prompt", elem_id="ds_show")
    drill_msg = gr.Markdown("", elem_id="ds_drill_msg")
    with gr.Row():
        image = gr.Image(label="Generated image", format="png", buttons=["download"], height=288)
        words = gr.Dataframe(label="Per-word statistics")
    with gr.Row():
        figure, heat = gr.Plot(), gr.Plot()
    open_btn.click(
        lambda f: open_folder(registry, f),
        [folder],
        [msg, headline, f1, f2, f3, prompts, state],
    )
    show.click(drill, [state, row], [drill_msg, image, words, figure, heat])

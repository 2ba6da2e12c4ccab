"""The Dataset tab: open a ``unetviz batch`` output folder (inside the model roots) and read
its summary plots, its prompt table and one prompt's drill-down, with no model run.

The work is in :mod:`unetviz.batch.dataset` (confinement, size caps, figures); this file only
lays it out. pyarrow is an optional extra: without it the tab says how to install it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError

from .common import text_md


def open_folder(registry: Any, folder: str) -> tuple:
    """(message, headline rows, 3 figures, prompt table, state) for the Open button."""
    try:
        from unetviz.batch.dataset import open_dataset
    except ImportError:
        return ("install the batch extra to read datasets: pip install 'unetviz[batch]'",
                None, None, None, None, None, None)  # fmt: skip
    try:
        # a path as the user types it: absolute, from where the app was started, or from a
        # model root (the registry's one rule); then the dataset's own confinement
        ds = open_dataset(registry.resolve_folder(folder), roots=registry.roots)
        figs = ds.figures()
        heads, rows = ds.prompt_table()
        headline = [list(r) for r in ds.headline()]
    except UnetvizError as exc:
        return (f"**Error:** {text_md(str(exc), 400)}", None, None, None, None, None, None)
    return (
        f"opened {text_md(folder.strip(), 200)}: {len(rows)} prompts",
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
        return (f"**Error:** {text_md(str(exc), 400)}", None, None, None, None)
    heads, rows = d.words
    status = f"row {row}: {text_md(d.status)}" + (f" ({text_md(d.error, 300)})" if d.error else "")
    words = {"headers": heads, "data": rows} if rows else None
    image = d.image
    if image is not None and image.width < 256:  # the demo's 24 px: enlarge, keep the pixels
        image = image.resize((image.width * 12, image.height * 12), resample=0)
    return (f"{status}: {text_md(d.prompt, 300)}", image, words, d.figure, d.heatmaps)


def build_dataset(ctx: Any) -> None:
    """Folder box + Open -> headline, plots, prompts; a row number -> that prompt's details.
    Nothing but the box shows before a dataset is open; a failed Open keeps the open one."""
    from .registry import describe_roots

    registry = ctx.registry
    gr.Markdown(
        "Open the output folder of `unetviz batch` to see which layers and timesteps localise "
        "each word, over the whole prompt set. The folder must lie inside the model roots "
        f"({describe_roots(registry.roots)}): write it there, e.g. "
        "`unetviz batch prompts.jsonl -o models/run1`, then type `models/run1` (or a path "
        "relative to a root, or an absolute one)."
    )
    with gr.Row():
        folder = gr.Textbox(label="Batch output folder", scale=4, elem_id="ds_folder")
        open_btn = gr.Button("Open", scale=1, elem_id="ds_open")
    msg = gr.Markdown("", elem_id="ds_msg")
    state = gr.State(None)
    with gr.Column(visible=False, elem_id="ds_opened") as opened:
        headline = gr.Dataframe(
            headers=["measure", "value"], label="Headline", elem_id="ds_head", wrap=True
        )
        f1 = gr.Plot(label="Localisation by layer and timestep", elem_id="ds_layer_time")
        f2 = gr.Plot(label="Localisation by resolution", elem_id="ds_resolution")
        f3 = gr.Plot(label="Localisation by word class", elem_id="ds_word_class")
        prompts = gr.Dataframe(label="Prompts", elem_id="ds_prompts", wrap=True)
        with gr.Row():
            row = gr.Number(0, label="Prompt row", precision=0, elem_id="ds_row")
            show = gr.Button("Show prompt", elem_id="ds_show")
        drill_msg = gr.Markdown("", elem_id="ds_drill_msg")
        with gr.Column(visible=False) as drilled:
            with gr.Row():
                image = gr.Image(
                    label="Generated image", format="png", buttons=["download"], height=288,
                    elem_id="ds_image", scale=1,
                )  # fmt: skip
                figure = gr.Plot(label="This prompt's words by layer", elem_id="ds_figure", scale=2)
            words = gr.Dataframe(label="Per-word statistics", wrap=True, elem_id="ds_words")
            heat = gr.Plot(label="This prompt's heatmaps", elem_id="ds_heat")

    def on_open(text: str) -> tuple:
        out = open_folder(registry, text or "")
        if out[-1] is None:  # refused: the dataset already open stays, with its views
            return (out[0], *[gr.skip()] * 7)
        return (*out, gr.update(visible=True))

    def on_show(ds: Any, number: Any) -> tuple:
        out = drill(ds, number)
        if out[1] is None and out[2] is None and out[3] is None:
            return (out[0], *[gr.skip()] * 5)
        return (*out, gr.update(visible=True))

    open_btn.click(
        on_open,
        [folder],
        [msg, headline, f1, f2, f3, prompts, state, opened],
        api_name="open_dataset",
    )
    folder.submit(on_open, [folder], [msg, headline, f1, f2, f3, prompts, state, opened])
    show.click(
        on_show,
        [state, row],
        [drill_msg, image, words, figure, heat, drilled],
        api_name="show_prompt",
    )

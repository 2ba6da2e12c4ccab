"""The Dataset tab: open a ``unetviz batch`` output folder (inside the model roots) and read
its summary plots, its prompt table and one prompt's drill-down, with no model run.

The work is in :mod:`unetviz.batch.dataset` (confinement, size caps, figures); this file only
lays it out. pyarrow is an optional extra: without it the tab says how to install it.

Language: the controls' labels are ``L()`` keys (``locales/app.dataset.<lang>.json``) and the
messages go through the message catalogue in both languages (switched in the page). What lives
inside a table or a plot (column names, the headline's measures, plot titles) can hold no
markup: it is written in the page's language when the dataset is opened (:func:`localise`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError

from .common import text_md
from .i18n import L, in_language, request_language

#: the headline table's columns
HEADLINE = ("measure", "value")


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
    words = {"headers": heads, "data": rows} if rows else None
    image = d.image
    if image is not None and image.width < 256:  # the demo's 24 px: enlarge, keep the pixels
        image = image.resize((image.width * 12, image.height * 12), resample=0)
    return (_drill_status(row, d), image, words, d.figure, d.heatmaps)


def _drill_status(row: int, d: Any) -> str:
    """The drill-down's line: the row, its status (and error) and its prompt."""
    prompt = text_md(d.prompt, 300)
    if d.error:
        return f"row {row}: {text_md(d.status)} ({text_md(d.error, 300)}): {prompt}"
    return f"row {row}: {text_md(d.status)}: {prompt}"


def localise(out: tuple, lang: str) -> tuple:
    """``open_folder``'s tables and figures with their words (headline measures, column
    names, plot titles and axis titles) in ``lang`` (the catalogue's; numbers and names of
    layers, words and files stay as they are)."""
    if lang == "en" or out[-1] is None:
        return out
    msg, headline, f1, f2, f3, prompts, ds = out
    headline = {
        "headers": [in_language(h, lang) for h in HEADLINE],
        "data": [[in_language(str(k), lang), in_language(str(v), lang)] for k, v in headline],
    }
    if prompts:
        prompts = {**prompts, "headers": [in_language(h, lang) for h in prompts["headers"]]}
    return (msg, headline, *(_figure_in(f, lang) for f in (f1, f2, f3)), prompts, ds)


def _figure_in(fig: Any, lang: str) -> Any:
    """A plotly figure whose title and colour-bar titles are in ``lang``."""
    if fig is None:
        return fig
    title = fig.layout.title.text
    if title:
        fig.update_layout(title=in_language(title, lang))
    for trace in fig.data:
        bar = getattr(trace, "colorbar", None)
        if bar is not None and bar.title.text:
            trace.colorbar.title.text = in_language(bar.title.text, lang)
    return fig


def opened_views(registry: Any, text: str, lang: str) -> tuple:
    """The Open button's outputs in ``lang`` (the message: in every language, by the page's
    pass over plain events, :func:`unetviz.app.common.localise_events`)."""
    out = localise(open_folder(registry, text or ""), lang)
    if out[-1] is None:  # refused: the dataset already open stays, with its views
        return (out[0], *[gr.skip()] * 7)
    return (*out, gr.update(visible=True))


def drilled_views(ds: Any, number: Any, lang: str) -> tuple:
    """The Show prompt button's outputs in ``lang``."""
    msg, image, words, fig, heat = drill(ds, number)
    if image is None and words is None and fig is None:
        return (msg, *[gr.skip()] * 5)
    if words:
        words = {**words, "headers": [in_language(h, lang) for h in words["headers"]]}
    return (msg, image, words, _figure_in(fig, lang), heat, gr.update(visible=True))


def build_dataset(ctx: Any) -> None:
    """Folder box + Open -> headline, plots, prompts; a row number -> that prompt's details.
    Nothing but the box shows before a dataset is open; a failed Open keeps the open one."""
    from .registry import describe_roots

    registry = ctx.registry
    gr.Markdown(
        L(
            "Open the output folder of `unetviz batch` to see which layers and timesteps "
            "localise each word, over the whole prompt set. The folder must lie inside the "
            "model roots ({roots}): write it there, e.g. `unetviz batch prompts.jsonl -o "
            "models/run1`, then type `models/run1` (or a path relative to a root, or an "
            "absolute one).",
            roots=describe_roots(registry.roots),
        )
    )
    with gr.Row():
        folder = gr.Textbox(
            label=L("Batch output folder"),
            placeholder=L("a folder written by unetviz batch, e.g. models/run1"),
            scale=4,
            elem_id="ds_folder",
        )
        open_btn = gr.Button(L("Open"), scale=1, elem_id="ds_open")
    msg = gr.Markdown("", elem_id="ds_msg")
    state = gr.State(None)
    with gr.Column(visible=False, elem_id="ds_opened") as opened:
        # a table's column names can hold no label: they come with its data (localise)
        headline = gr.Dataframe(
            headers=list(HEADLINE), label=L("Headline"), elem_id="ds_head", wrap=True
        )
        f1 = gr.Plot(label=L("Localisation by layer and timestep (noisiest steps left)"),
                     elem_id="ds_layer_time")  # fmt: skip
        f2 = gr.Plot(label=L("Localisation by resolution"), elem_id="ds_resolution")
        f3 = gr.Plot(label=L("Localisation by word class"), elem_id="ds_word_class")
        prompts = gr.Dataframe(label=L("Prompts"), elem_id="ds_prompts", wrap=True)
        with gr.Row():
            row = gr.Number(0, label=L("Prompt row"), precision=0, elem_id="ds_row")
            show = gr.Button(L("Show prompt"), elem_id="ds_show")
        drill_msg = gr.Markdown("", elem_id="ds_drill_msg")
        with gr.Column(visible=False) as drilled:
            with gr.Row():
                image = gr.Image(
                    label=L("Generated image"), format="png", buttons=["download"], height=288,
                    elem_id="ds_image", scale=1,
                )  # fmt: skip
                figure = gr.Plot(label=L("This prompt's words by layer"), elem_id="ds_figure",
                                 scale=2)  # fmt: skip
            words = gr.Dataframe(label=L("Per-word statistics"), wrap=True, elem_id="ds_words")
            heat = gr.Plot(label=L("This prompt's heatmaps"), elem_id="ds_heat")

    def on_open(text: str, request: gr.Request) -> tuple:
        return opened_views(registry, text, request_language(request))

    def on_show(ds: Any, number: Any, request: gr.Request) -> tuple:
        return drilled_views(ds, number, request_language(request))

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

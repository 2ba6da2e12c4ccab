"""The "Experiments" tab: re-weight a word, ablate skips / blocks, scale the time embedding, and
see base and edited images side by side with their difference; or sweep one edit per block,
layer or skip and see the diagram filled by effect. A new file that plugs into ``ui.TABS`` as
``("Experiments", build_experiments)``; the work is done by ``unetviz.app.edit_handlers``.

Model calls hold the registry's lock and share the "model" queue with generation, as every
model-touching event does; user errors show beside the controls and the app stays up.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from unetviz.errors import UnetvizError
from unetviz.names import is_block, layer_order

from .common import _message, diagram_panel, lora_controls, text_md
from .i18n import L, choices
from .views import panel_html

#: the default experiment: prompt-to-prompt's word swap, which keeps the layout and changes
#: the colour (the demo model draws it so for 10 prompts of 10)
DEFAULT_PROMPT = "a red circle"
DEFAULT_SWAP = "a blue circle"
MODES = ["zero", "mean", "0.5", "2"]
#: why a colour word re-weighted to 0 need not lose its colour, said in the tab
WHY_COLOUR_STAYS = (
    "Why can a colour word's attention set to 0 leave the colour? The text encoder (CLIP, and "
    "the demo's) mixes each word into the words after it, so “circle” already carries “red”: "
    "the UNet still reads the colour there. A swap changes the words themselves and keeps the "
    "source's attention maps, so the layout stays and the colour follows the new prompt."
)
#: the tab's help lines (``L`` keys: translated in the page)
SWAP_HELP = (
    "**Swap a word** (prompt-to-prompt Replace): the edited prompt is drawn with the prompt's "
    "attention maps, so the layout stays and what the words say changes"
)
REWEIGHT_HELP = "**Re-weight a word** (prompt-to-prompt equalizer, conditional half)"
ABLATE_HELP = "**Ablate** skips or blocks; **scale the time embedding**"
MODE_HELP = "zero: set to 0; mean: its spatial mean per channel; a number: scaled by it"
LORA_HELP = (
    "---\n**With / without LoRA**: the prompt drawn twice on one seed, without and with the "
    "LoRA fused into the weights: both images, their difference and every word's map"
)
LORA_COMPARE_INFO = "a LoRA file in the model roots, fused for the second run only"
SWEEP_HELP = "---\n**Sweep**: one edit per block, layer or skip; the diagram filled by effect"
#: a sweep may take at most this many denoising steps in all (runs x steps) on a shared server
APP_MAX_SWEEP_STEPS = 2000


#: the "What changed" table: one row per measure; base and edited are filled where the
#: measure is read from one image, change always (a pixel difference has only a change)
CHANGED_HEADERS = ["measure", "base", "edited", "change"]
NOT_APPLICABLE = "—"
#: readable names of the rows ``unetviz.app.edit_handlers.run_edited`` gives
MEASURES = {
    "mean abs pixel change": "pixels: mean |edited − base| (0–1)",
    "max abs pixel change": "pixels: largest |edited − base| (0–1)",
    "colour_ok": "objects in the prompted colour (share)",
    "shape_ok": "objects in the prompted shape (share)",
    "position_ok": "objects at the prompted position (share)",
    "size_ok": "objects at the prompted size (share)",
    "colour": "colour most pixels have",
}


#: the "Effect per target" table: a sweep row's keys (``unetviz.app.edit_handlers.run_sweep``)
#: -> column titles; the demo model's scores follow its pixel change (other models have none)
SWEEP_COLUMNS = {
    "target": "target",
    "change": "mean |Δ pixel| (0–1)",
    "colour_ok": "right colour (share)",
    "shape_ok": "right shape (share)",
    "position_ok": "right position (share)",
    "size_ok": "right size (share)",
    "colour": "main colour",
}


def sweep_headers(words: list[str]) -> list[str]:
    """The table's titles before any sweep: those a sweep of the demo model (the default Model)
    gives, whose vocabulary is ``words`` (no position column for a model without position
    words)."""
    from unetviz.training.data import absent_classes  # torch-free, unlike unetviz.edits

    dropped = {f"{name}_ok" for name in absent_classes(words)} if words else set()
    return [title for key, title in SWEEP_COLUMNS.items() if key not in dropped]


def sweep_table(keys: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """``run_sweep``'s headers (row keys) and rows -> the "Effect per target" table: readable
    titles, "—" where a score does not apply (the prompt names no such attribute) and numbers
    to 4 decimals (the sorted order stays readable; the trace keeps the full values)."""

    def cell(v: Any) -> Any:
        if v is None:
            return NOT_APPLICABLE
        return round(v, 4) if isinstance(v, float) else v

    return {
        "headers": [SWEEP_COLUMNS.get(k, k.replace("_", " ")) for k in keys],
        "data": [[cell(v) for v in row] for row in rows],
    }


def _change(base: str, edited: str) -> str:
    """edited − base for numbers (signed), else "same" / "changed"."""
    try:
        delta = float(edited) - float(base)
    except ValueError:
        return "same" if base == edited else "changed"
    return "0" if delta == 0 else f"{delta:+.3g}"


def changed_table(rows: list[list[Any]]) -> tuple[dict[str, Any], list[str]]:
    """``run_edited``'s rows ([name, base, edited]; a pixel change has its value under "base",
    edits are rows named "edit") -> (the "What changed" table, one line per edit)."""
    data, edits = [], []
    for name, first, second in rows:
        name, first, second = str(name), str(first), str(second)
        if name == "edit":
            edits.append(f"**{first}** {_short(second)}")
        elif name.endswith("pixel change"):
            data.append([MEASURES[name], NOT_APPLICABLE, NOT_APPLICABLE, first])
        else:
            base, edited = (NOT_APPLICABLE if v == "None" else v for v in (first, second))
            change = NOT_APPLICABLE if NOT_APPLICABLE in (base, edited) else _change(base, edited)
            data.append([MEASURES.get(name, name.replace("_", " ")), base, edited, change])
    return {"headers": CHANGED_HEADERS, "data": data}, edits


#: an edit's parameters its one-line summary names (the rest are under "all parameters")
SUMMARY_KEYS = {
    "Replace": ("source_prompt",),
    "Reweight": ("token", "scale"),
    "ScaleTemb": ("target", "scale"),
    "AblateBlock": ("block", "mode"),
    "AblateSkip": ("index", "mode"),
}


def edit_summary(edit: dict[str, Any]) -> str:
    """One edit in a few words: its name and its main parameters (``**Reweight** token=red,
    scale=0.0``); an edit not in :data:`SUMMARY_KEYS` names its first two short ones."""
    name = str(edit.get("edit", "edit"))
    params = {k: v for k, v in edit.items() if k != "edit"}
    keys = (
        SUMMARY_KEYS.get(name)
        or [k for k, v in params.items() if not isinstance(v, list | dict) and len(str(v)) <= 40][
            :2
        ]
    )
    shown = ", ".join(f"{k}={text_md(params[k], 40)}" for k in keys if k in params)
    return f"**{text_md(name)}** {shown}".strip()


def edits_note(edits: list[dict[str, Any]]) -> str:
    """The edits a run applied, one short summary each (a Replace lists its layers and steps
    in ~600 characters: those are in the tab's "All parameters" box, not in the note)."""
    return "; ".join(edit_summary(e) for e in edits)


def _short(detail: str, limit: int = 160) -> str:
    """An edit's details with long lists cut (a temb scale names every resnet)."""
    return detail if len(detail) <= limit else detail[: limit - 1] + "…"


def _mode(text: str) -> str | float:
    return text if text in ("zero", "mean") else float(text)


def _call(registry: Any, model: str, fn: Any) -> Any:
    """Run ``fn(pipe)`` under the model lock, on the torch threads the app uses for it."""
    import torch

    registry.apply_thread_policy()
    with registry.lock:
        pipe = registry.pipeline(model or "demo")
        before = torch.get_num_threads()
        torch.set_num_threads(registry.threads or 1)
        try:
            return fn(pipe)
        finally:
            torch.set_num_threads(before)


def _steps_call(seed: Any, steps: Any, guidance: Any) -> dict[str, Any]:
    """The run's seed, steps and guidance, checked as the Attention tab checks them
    (``unetviz.callargs``: exact seeds, the shared server's step and guidance limits)."""
    from unetviz.callargs import (
        APP_MAX_GUIDANCE,
        APP_MAX_STEPS,
        check_guidance,
        check_seed,
        check_steps,
    )
    from unetviz.edits.spec import EditError

    return {
        "seed": check_seed(seed, error=EditError),
        "steps": check_steps(steps, APP_MAX_STEPS, error=EditError),
        "guidance": check_guidance(guidance, 0.0, APP_MAX_GUIDANCE, error=EditError),
    }


def edited(*args: Any, **kwargs: Any) -> tuple[Any, Any, Any, str]:
    """:func:`edit_result` as (strip image, word heatmaps, table, message)."""
    out = edit_result(*args, **kwargs)
    return out["strip"], out["heatmaps"], out["table"], out["note"]


def edit_result(
    registry: Any,
    model: str,
    prompt: str,
    seed: Any,
    steps: Any,
    guidance: Any,
    word: str,
    weight: float,
    layers: str,
    skips: list[str],
    blocks: list[str],
    mode: str,
    temb_target: str,
    temb_scale: float,
    progress: Any = None,
    swap: str = "",
) -> dict[str, Any]:
    """The "Run edited" event: ``{"strip", "heatmaps" (the word's, base | edited), "table",
    "note" (one line), "edits" (every parameter of the edits applied)}``; a refusal leaves
    all but the note None. ``swap``: an edited prompt drawn with the prompt's attention maps
    (prompt-to-prompt Replace), besides or instead of the other edits."""
    from unetviz.edits import Replace
    from unetviz.edits.spec import EditError

    from . import edit_handlers as eh

    swap = (swap or "").strip()
    try:
        call = _steps_call(seed, steps, guidance)
        word = (word or "").strip() or None
        if swap and not word and not skips and not blocks and temb_target in (None, "", "none"):
            chosen = [Replace(prompt)]
        else:
            chosen = ([Replace(prompt)] if swap else []) + eh.edits_from_controls(
                word=word,
                weight=weight,
                layers=None if layers in (None, "", "all") else layers,
                skips=skips or (),
                blocks=blocks or (),
                mode=_mode(mode),
                temb_target=None if temb_target in (None, "", "none") else temb_target,
                temb_scale=temb_scale,
            )
        if swap == prompt.strip():
            raise EditError(f"the edited prompt is the prompt ({text_md(swap)}): change a word")
        tick = _ticker(progress, "edited, then base")
        out = _call(
            registry,
            model,
            lambda p: eh.run_edited(p, prompt, chosen, tick, edited_prompt=swap or None, **call),
        )
    except UnetvizError as exc:
        note = _message("experiment", exc)
        return {"strip": None, "heatmaps": None, "table": None, "note": note, "edits": None}
    table, _ = changed_table(out["rows"])
    note = f"base | edited | difference · {len(chosen)} edit(s): " + edits_note(out["edits"])
    if swap:
        note = f"“{text_md(prompt)}” → “{text_md(swap)}” · " + note
    return {"strip": out["strip"], "heatmaps": out["heatmaps"], "table": table, "note": note,
            "edits": out["edits"]}  # fmt: skip


def swept(
    registry: Any,
    model: str,
    prompt: str,
    seed: Any,
    steps: Any,
    guidance: Any,
    over: str,
    edit: str,
    word: str,
    mode: str,
    scale: float,
    progress: Any = None,
) -> tuple[Any, Any, str]:
    """The "Sweep" event: diagram HTML filled by effect, table, message."""
    from unetviz.edits.spec import EditError

    from . import edit_handlers as eh

    def bounded(pipe: Any) -> Any:
        """The sweep, once its runs x steps are known to fit the shared server's bound."""
        targets = (
            len(eh.choices(pipe).get(over, ())) if over in ("blocks", "layers", "skips") else 0
        )
        runs = targets + 1
        if runs * call["steps"] > APP_MAX_SWEEP_STEPS:
            raise EditError(
                f"a sweep over {targets} {over} at {call['steps']} steps is {runs} runs x "
                f"{call['steps']} = {runs * call['steps']} steps: at most {APP_MAX_SWEEP_STEPS} "
                "on this server (fewer steps, or sweep blocks rather than layers)"
            )
        return eh.run_sweep(
            pipe,
            prompt,
            over=over,
            edit=edit,
            mode=_mode(mode),
            word=word,
            scale=scale,
            progress=tick,
            **call,
        )

    try:
        call = _steps_call(seed, steps, guidance)
        tick = _ticker(progress, "sweep")
        out = _call(registry, model, bounded)
    except UnetvizError as exc:  # the last sweep's diagram and table stay
        return gr.skip(), gr.skip(), _message("sweep", exc)
    html = panel_html(out["svg"], "exp-svg")
    result = out["result"]
    note = f"{len(result.rows)} edited runs + base in {result.seconds:.1f} s"
    return html, sweep_table(out["headers"], out["rows"]), note


def _ticker(progress: Any, what: str):
    if progress is None:
        return None

    def tick(i: int, n: int) -> None:
        progress((i, n), desc=f"{what}: {i}/{n}")

    return tick


def demo_choices(registry: Any) -> dict[str, list[Any]]:
    """The demo UNet's blocks (forward order) and skips (``(label, "index: source -> target")``,
    as ``unetviz.edits`` numbers them) for the checkboxes, read from its structure (the
    Architecture tab's cached meta trace, no weights, no torch once cached): the first page
    never waits for the demo pipeline."""
    from .registry import architecture_state

    spec = registry.spec("demo")
    state = architecture_state(spec, spec.default_size, spec.default_size, 2)
    names = [str(b["name"]) for b in state.get("blocks", [])]
    blocks = layer_order([n for n in names if is_block(n)])
    skips = sorted(state.get("skips", []), key=lambda s: int(s["index"]))
    return {
        "blocks": list(dict.fromkeys(blocks)),
        "skips": [f"{s['index']}: {s['source']} -> {s['target']}" for s in skips],
    }


def lora_compared(
    registry: Any,
    model: str,
    prompt: str,
    seed: Any,
    steps: Any,
    guidance: Any,
    lora: Any,
    scale: Any,
    progress: Any = None,
) -> tuple[Any, str, str]:
    """The "Compare with / without LoRA" event: (strip image, word maps HTML, message). The
    LoRA is fused for the second run only and unfused before the model lock is released;
    a refusal (no LoRA chosen, a LoRA for another base, unknown keys) is the message and the
    page keeps what it showed."""
    from unetviz.edits.spec import EditError

    from . import edit_handlers as eh
    from . import views

    try:
        call = _steps_call(seed, steps, guidance)
        loras = registry.loras(lora, scale)
        if not loras:
            raise EditError("choose a LoRA to compare with (the LoRA box says none)")
        tick = _ticker(progress, "without, then with the LoRA")
        out = _call(registry, model, lambda p: eh.run_lora_compare(p, prompt, loras, tick, **call))
    except UnetvizError as exc:
        return None, "", _message("lora_compare", exc)
    trace = out["comparison"].base.trace
    tiles = [(img, f"{views.token_caption(trace, i)}: without | with") for img, i in out["pairs"]]
    names = " + ".join(f"{text_md(p.name)} ×{w:g}" for p, w in loras)
    note = (
        f"“{text_md(prompt)}” · seed {call['seed']} · without | with LoRA {names} · mean pixel "
        f"change {out['comparison'].score:.4f}"
    )
    return out["strip"], views.tiles_html(tiles, "uv-pairs"), note


def _call_row() -> list[Any]:
    """The model, prompt, seed, steps and guidance controls every experiment reads."""
    from unetviz.callargs import APP_MAX_STEPS, MAX_SEED

    with gr.Row():
        model = gr.Textbox("demo", label=L("Model"), scale=1, elem_id="exp_model")
        prompt = gr.Textbox(DEFAULT_PROMPT, label=L("Prompt"), scale=3, elem_id="exp_prompt")
        # text, not a number box: a float box rounds seeds above 2**53
        seed = gr.Textbox(
            "0", label=L("Seed"), info=L("a whole number 0..{max}", max=MAX_SEED),
            elem_id="exp_seed",
        )  # fmt: skip
        steps = gr.Number(
            25, label=L("Steps"), precision=0, minimum=1, maximum=APP_MAX_STEPS,
            info=f"1..{APP_MAX_STEPS}", elem_id="exp_steps",
        )  # fmt: skip
        guidance = gr.Slider(
            1.0, 15.0, value=4.0, step=0.5, label=L("Guidance"), elem_id="exp_guidance"
        )
    return [model, prompt, seed, steps, guidance]


def build_experiments(ctx: Any) -> None:
    """Controls and outputs of the tab; events on the shared "model" queue."""
    registry = ctx.registry
    opts = demo_choices(registry) if registry else {}
    common = _call_row()
    with gr.Row():
        with gr.Column():
            gr.Markdown(L(SWAP_HELP))
            swap = gr.Textbox(
                DEFAULT_SWAP, label=L("Edited prompt (empty: no swap)"), elem_id="exp_swap"
            )
            gr.Markdown(L(REWEIGHT_HELP))
            word = gr.Textbox("", label=L("Word (empty: none)"), elem_id="exp_word")
            weight = gr.Slider(-2, 3, value=0, step=0.1, label=L("Weight (1: unchanged)"))
            layers = gr.Radio(["all", "down", "mid", "up"], value="all", label=L("Layers"))
            gr.Markdown(L(WHY_COLOUR_STAYS), elem_id="exp_why")
        with gr.Column():
            gr.Markdown(L(ABLATE_HELP))
            skips = gr.CheckboxGroup(opts.get("skips", []), label=L("Skips"))
            blocks = gr.CheckboxGroup(opts.get("blocks", []), label=L("Blocks"))
            mode = gr.Radio(MODES, value="zero", label=L("Ablation"), info=L(MODE_HELP))
            temb_target = gr.Dropdown(["none", "all", *opts.get("blocks", [])], value="none",
                                      label=L("Scale temb in"))  # fmt: skip
            temb_scale = gr.Slider(0, 3, value=1, step=0.1, label=L("temb scale"))
    run = gr.Button(L("Run edited"), variant="primary", elem_id="exp_run")
    message = gr.Markdown("", elem_id="exp_msg")
    with gr.Accordion(L("All parameters of the edits"), open=False, elem_id="exp_details_box"):
        details = gr.JSON(None, elem_id="exp_details", show_label=False)
    with gr.Row():
        strip = gr.Image(
            label=L("base | edited | difference"),
            format="png",
            elem_id="exp_strip",
            buttons=["download"],
        )
        heat = gr.Image(
            label=L("the re-weighted word's attention: base | edited (one scale)"),
            format="png",
            buttons=["download"],
            elem_id="exp_heat",
            visible=False,  # shown with a re-weight's maps
        )
    table = gr.Dataframe(
        headers=CHANGED_HEADERS, label=L("What changed"), elem_id="exp_table", interactive=False
    )

    def on_run(m, p, s, n, g, sw, w, wt, lay, sk, bl, mo, tt, ts, progress=gr.Progress()):  # noqa: B008
        out = edit_result(registry, m, p, s, n, g, w, wt, lay, sk, bl, mo, tt, ts, progress, sw)
        note = out["note"]  # in every language: ui.localise_events
        if out["strip"] is None:  # refused: what the page shows stays
            return gr.skip(), gr.skip(), gr.skip(), note, gr.skip()
        # the word's heatmaps exist only for a re-weight: no empty frame otherwise
        heat = out["heatmaps"]
        shown = gr.update(value=heat, visible=heat is not None)
        return out["strip"], shown, out["table"], note, out["edits"]

    run.click(
        on_run,
        common + [swap, word, weight, layers, skips, blocks, mode, temb_target, temb_scale],
        [strip, heat, table, message, details],
        concurrency_id="model",
        concurrency_limit=1,
        api_name="experiment",
        show_progress_on=[strip],
    )
    build_lora_compare(ctx, common)
    build_sweep(ctx, common)


def build_lora_compare(ctx: Any, common: list[Any]) -> None:
    """The "with / without LoRA" part of the tab: one seed, both images and every word's map
    side by side; ``common`` are the model, prompt, seed, steps and guidance controls."""
    from .common import static_text

    registry = ctx.registry
    gr.Markdown(L(LORA_HELP))
    with gr.Row(equal_height=True):
        lora_controls(ctx, "exp_lora", "exp_lora_scale", LORA_COMPARE_INFO)
        go = gr.Button(L("Compare with / without LoRA"), elem_id="exp_lora_run", scale=1)
    lora_msg = gr.Markdown("", elem_id="exp_lora_msg")
    lora_strip = gr.Image(
        label=L("without LoRA | with LoRA | difference"),
        format="png",
        elem_id="exp_lora_strip",
        buttons=["download"],
        height=240,
    )
    lora_maps = gr.HTML(
        "",
        label=L("each word's attention: without | with LoRA (one scale per word)"),
        show_label=True,
        container=True,
        js_on_load=static_text("tiles.js"),
        elem_id="exp_lora_maps",
    )

    def on_compare(m, p, s, n, g, lo, sc, progress=gr.Progress()):  # noqa: B008
        strip, maps, note = lora_compared(registry, m, p, s, n, g, lo, sc, progress)
        if strip is None:  # refused: what the page shows stays
            return gr.skip(), gr.skip(), note
        return strip, maps, note

    go.click(
        on_compare,
        common + [ctx.c["exp_lora"], ctx.c["exp_lora_scale"]],
        [lora_strip, lora_maps, lora_msg],
        concurrency_id="model",
        concurrency_limit=1,
        api_name="lora_compare",
        show_progress_on=[lora_strip],
    )


def build_sweep(ctx: Any, common: list[Any]) -> None:
    """The Sweep part of the tab: one edit per block, layer or skip, the diagram filled by
    effect; ``common`` are the model, prompt, seed, steps and guidance controls."""
    registry = ctx.registry
    gr.Markdown(L(SWEEP_HELP))
    with gr.Row():
        over = gr.Radio(choices("blocks", "layers", "skips"), value="blocks", label=L("Over"))
        edit = gr.Radio(["ablate", "reweight", "temb"], value="ablate", label=L("Edit"))
        sweep_word = gr.Textbox("red", label=L("Word (reweight)"))
        sweep_mode = gr.Radio(MODES, value="mean", label=L("Ablation"))
        sweep_scale = gr.Slider(-2, 3, value=0, step=0.1, label=L("Scale (reweight / temb)"))
    go = gr.Button(L("Sweep"), elem_id="exp_sweep")
    sweep_msg = gr.Markdown(
        L("At most {n} denoising steps per sweep (runs × steps).", n=APP_MAX_SWEEP_STEPS),
        elem_id="exp_sweep_msg",
    )
    diagram = diagram_panel("exp_diagram")
    sweep_out = gr.Dataframe(
        headers=sweep_headers(ctx.registry.demo_words()),
        label=L("Effect per target"),
        elem_id="exp_sweep_table",
        interactive=False,
    )

    def on_sweep(m, p, s, n, g, ov, ed, w, mo, sc, progress=gr.Progress()):  # noqa: B008
        return swept(registry, m, p, s, n, g, ov, ed, w, mo, sc, progress)

    go.click(
        on_sweep,
        common + [over, edit, sweep_word, sweep_mode, sweep_scale],
        [diagram, sweep_out, sweep_msg],
        concurrency_id="model",
        concurrency_limit=1,
        api_name="sweep",
        show_progress_on=[diagram],  # one progress bar, not one per output
    )

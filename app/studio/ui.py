"""The studio's Blocks: header, the Train / Jobs / Playground tabs, the theme and the CSS.

Run as: ftstudio serve        (app/cli_serve.py; or build_app() from Python and launch it)
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.studio import form, handlers, render

STATIC = handlers.STATIC
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto",
                "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono",
              "monospace"]


def theme() -> gr.themes.Base:
    """Indigo and sky on slate, system fonts only (nothing is fetched from the network)."""
    return gr.themes.Soft(
        primary_hue=gr.themes.colors.indigo, secondary_hue=gr.themes.colors.sky,
        neutral_hue=gr.themes.colors.slate, radius_size=gr.themes.sizes.radius_md,
        font=SYSTEM_FONTS, font_mono=MONO_FONTS,
    ).set(
        body_background_fill="#f5f7fb", body_background_fill_dark="#0b1020",
        block_background_fill="#ffffff", block_background_fill_dark="#111827",
        block_border_width="1px", block_shadow="none", block_title_text_weight="600",
        block_label_text_weight="600", button_large_radius="12px",
        button_primary_background_fill="linear-gradient(135deg, #4f46e5, #0ea5e9)",
        button_primary_background_fill_hover="linear-gradient(135deg, #4338ca, #0284c7)",
        button_primary_text_color="#ffffff", input_background_fill="#fbfcfe",
        block_title_background_fill="transparent", block_title_padding="0",
        block_title_text_color="*neutral_700", block_title_text_color_dark="*neutral_200",
        block_label_background_fill="*neutral_50", block_label_text_color="*neutral_600",
        block_label_background_fill_dark="*neutral_800", block_label_text_color_dark="*neutral_200",
        block_label_text_size="*text_sm", checkbox_label_shadow="none",
    )


def css() -> str:
    return (STATIC / "studio.css").read_text(encoding="utf-8")


def header_html(worker: str) -> str:
    logo = (STATIC / "logo.svg").read_text(encoding="utf-8")
    dev = handlers.device()
    from engine.models.estimate import human_bytes

    where = (f"<b>{render.esc(dev.name)}</b> · {human_bytes(dev.total_bytes)}" if
             dev.kind == "cuda" else f"<b>CPU</b> · {human_bytes(dev.total_bytes)} RAM")
    worker_chip = {"embedded": '<span class="fs-dot"></span>worker <b>embedded</b>',
                   "external": '<span class="fs-dot off"></span>workers <b>external</b>',
                   }.get(worker, f'<span class="fs-dot off"></span>{render.esc(worker)}')
    home = str(handlers.studio_home().resolve())
    short = home if len(home) <= 32 else "…/" + "/".join(home.rsplit("/", 2)[-2:])
    return (f'<div id="fs-header">{logo}<div><div class="fs-title">ftstudio</div>'
            '<div class="fs-sub">Pick a model, bring data, choose a method, watch it learn, '
            'chat with the result.</div></div><div class="fs-chips">'
            f'<span class="fs-chip">{where}</span><span class="fs-chip">{worker_chip}</span>'
            f'<span class="fs-chip" title="FTSTUDIO_HOME={render.esc(home)}">home '
            f'<b>{render.esc(short)}</b></span>'
            '</div></div>')


def build_app(worker: str = "embedded") -> gr.Blocks:
    """The studio. `worker` is shown in the header: embedded, external, or a message."""
    from app.studio import api, jobs_tab, playground_tab, sweep_tab, train_tab

    with gr.Blocks(title="ftstudio", fill_width=True) as demo:
        gr.HTML(header_html(worker))
        with gr.Tabs(elem_id="fs-tabs") as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = train_tab.build()
            with gr.Tab("Jobs", id="jobs", elem_id="tab-jobs") as jobs_tab_item:
                jobs = jobs_tab.build()
            with gr.Tab("Sweeps", id="sweeps", elem_id="tab-sweeps") as sweeps_item:
                sweeps = sweep_tab.build()
            with gr.Tab("Playground", id="playground", elem_id="tab-playground") as play_item:
                play = playground_tab.build()
        _wire_across(demo, tabs, train, jobs, play, jobs_tab_item, play_item)
        _wire_sweeps(demo, tabs, train, sweeps, sweeps_item)
        api.register()
    return demo


def _wire_across(demo, tabs, train, jobs, play, jobs_tab_item, play_item) -> None:
    """Events that cross tabs: Start opens the job, Clone fills the form, reloads re-attach."""
    from app.studio import jobs_tab, playground_tab, train_tab

    marks = [train.widgets[k] for k in form.FORM_KEYS]
    started = train.start.click(
        train_tab.start_handler,
        train.inputs + [train.job_name, train.sweep] + train.sweep_inputs,
        [train.problems, train.status, train.started, train.started_sweep] + marks,
        api_visibility="private")
    started.success(jobs_tab.open_started, [train.started, jobs.session],
                    [tabs, jobs.job_picker] + jobs.selected, queue=False,
                    api_visibility="private")
    # the Train tab's note about the job it started follows that job's state
    jobs.table_timer.tick(train_tab.started_note, [train.started, train.status], train.status,
                          show_progress="hidden", api_visibility="private")
    cloned = jobs.clone.click(jobs_tab.clone_values, jobs.job_picker,
                              train.inputs + [train.job_name, tabs, train.status],
                              api_visibility="private")
    train_tab.after_clone(train, cloned, jobs.job_picker)   # its values count as the user's
    jobs_tab.attach(demo, jobs)
    for fn, inputs, outputs in train.on_load:
        demo.load(fn, inputs, outputs, show_progress="hidden", api_visibility="private")
    jobs_tab_item.select(jobs_tab.refresh_table, [jobs.status_filter],
                         [jobs.table, jobs.job_picker, jobs.compare_picker],
                         api_visibility="private")
    play_item.select(playground_tab.job_choices, play.job, play.job, api_visibility="private")
    demo.load(playground_tab.job_choices, play.job, play.job, api_visibility="private")


def _wire_sweeps(demo, tabs, train, sweeps, sweeps_item) -> None:
    """Start with Sweep on opens the group's page; its Clone the best fills the Train form."""
    from app.studio import sweep_tab, train_tab

    quiet = dict(api_visibility="private")
    train.started_sweep.change(sweep_tab.open_started, train.started_sweep,
                               [tabs, sweeps.picker], **quiet)
    cloned = sweeps.clone.click(sweep_tab.best_values, [sweeps.picker, sweeps.metric],
                                train.inputs + [train.job_name, tabs, train.status], **quiet)
    cloned.then(lambda: gr.update(value=False), None, train.sweep, queue=False, **quiet)
    for event in (demo.load, sweeps_item.select):
        event(sweep_tab.refresh_choices, sweeps.picker, [sweeps.picker] + sweeps.empty,
              show_progress="hidden", **quiet)


#: the most sessions whose state Gradio keeps (the oldest dropped first). Each holds a copy of
#: the whole studio's config (~0.7 MB), and a REST call made without a session_hash opens a
#: session of its own: Gradio's 10,000 would let a script grow the server by ~7 GB.
SESSIONS_KEPT = 1000


def launch_kwargs() -> dict[str, Any]:
    """What Blocks.launch needs besides host and port (Gradio 6 takes theme and css there)."""
    return dict(theme=theme(), css=css(), favicon_path=str(STATIC / "logo.svg"),
                footer_links=["api"], show_error=True, state_session_capacity=SESSIONS_KEPT)

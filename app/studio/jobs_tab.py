"""The Jobs tab: the table of training jobs, one job's live page (with its Export section,
app/studio/export_panel.py), compare, downloads.

A gr.Timer ticks every TICK seconds; each tick fetches only the metrics after the session's
`since_step` (jobview.poll) and the job's export jobs (export_panel.poll), and skips every
output that did not change. The job being watched is remembered in the browser
(gr.BrowserState), so reloading the page re-attaches to it. Export jobs are listed under the
training job they export, not in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.studio import (continue_panel, eval_panel, export_panel, form, jobview, render,
                        shrink_panel)
from app.studio.session import actor as actor_of

TICK = 1.5          # seconds between live-chart polls
TABLE_TICK = 4.0    # seconds between job-table refreshes
from jobs.api import STATUSES  # noqa: E402 - the job statuses, defined once


@dataclass
class JobsTab:
    table: Any
    status_filter: Any
    job_picker: Any
    session: Any
    remembered: Any
    clone: Any
    compare_picker: Any
    export: export_panel.ExportPanel
    evaluation: eval_panel.EvalPanel
    outputs: list[Any]      # what a poll updates
    timer: Any
    table_timer: Any
    selected: list[Any]     # what opening a job updates (select_job's outputs)


#: the job page's own outputs, session to the Continue section (then the Export and Evaluation
#: sections')
JOB_OUTPUTS = 21


#: each chart's name, shown above it (with what it waits for while it has no data)
CHART_LABELS = {"loss": "Training loss (train vs eval)", "eval_loss": "Eval loss",
                "lr": "Learning rate", "tokens_per_s": "Throughput",
                "gen": "Held-out answers of the tuned model (train.eval_generate)",
                "rewards": "Rewards (train.objective: policy vs reference)",
                "accuracy": "Reward accuracy (pairs whose chosen answer wins)",
                "grpo_reward": "Reward (total, per function, held out)",
                "grpo_stats": "Reward spread, KL, clip ratio",
                "grpo_length": "Completion length"}
WAITING = {"eval_loss": "waiting for the first evaluation (train.eval_every)"}
#: scroll the log pane to its newest line whenever it changes (follow the tail)
FOLLOW_LOG = ("() => { const t = document.querySelector('#log-tail textarea'); "
              "if (t) { t.scrollTop = t.scrollHeight; } }")
def _plot(name: str, y: str, color: str | None = None, elem_id: str | None = None):
    return gr.LinePlot(x="step", y="value", color=color, x_title="step", y_title=y,
                       height=250, elem_id=elem_id, tooltip="all", label=CHART_LABELS[name],
                       show_label=True, elem_classes=["fs-chart"])


def _chart(frame, name: str, column: str | None = None, **kw):
    """A job chart's update: its frame, a colour per series, and its name saying what it
    waits for while it has no data."""
    waiting = WAITING.get(name, "waiting for the first step")
    return jobview.plot_update(frame, column, label=CHART_LABELS[name] if len(frame) else
                               f"{CHART_LABELS[name]} · {waiting}", **kw)


def build() -> JobsTab:
    with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
        status_filter = gr.Dropdown(choices=[("all", "")] + [(s, s) for s in STATUSES], value="",
                                    label="Show", scale=0, min_width=180, container=False,
                                    elem_id="status-filter")
        refresh = gr.Button("↻ Refresh", size="sm", scale=0, min_width=110,
                            elem_id="refresh-jobs")
        gr.HTML('<div class="fs-muted">Click a row to open the job. Reloading the page '
                're-attaches to the job you were watching.</div>', scale=1, min_width=300)
    table = gr.Dataframe(headers=jobview.TABLE_COLUMNS, interactive=False, wrap=False,
                         max_height=260, elem_id="jobs-table", show_search="search")
    session = gr.State(jobview.new_session())
    with gr.Column(elem_classes=["fs-section"], elem_id="job-page"):
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            job_picker = gr.Dropdown(choices=[], label="Job", show_label=False, scale=1,
                                     min_width=260, container=False, elem_id="job-picker")
            cancel = gr.Button("■ Cancel", size="sm", scale=0, min_width=100,
                               elem_id="cancel-job")
            resume = gr.Button("↻ Resume", size="sm", scale=0, min_width=100,
                               elem_id="resume-job")
            clone = gr.Button("Clone into Train", size="sm", scale=0, min_width=150,
                              elem_id="clone-job")
            delete = gr.Button("✕ Delete", size="sm", scale=0, min_width=100, variant="stop",
                               elem_id="delete-job")
            confirm = gr.Button("Really delete?", size="sm", scale=0, min_width=130,
                                variant="stop", visible=False, elem_id="confirm-delete")
        header = gr.HTML(elem_id="job-header")
        progress = gr.HTML(elem_id="job-progress")
        message = gr.HTML(elem_id="job-message", elem_classes=["fs-slot"])
        with gr.Row():
            loss = _plot("loss", "loss", color="series", elem_id="loss-plot")
            eval_loss = gr.ScatterPlot(x="step", y="value", x_title="step", y_title="eval loss",
                                       height=250, elem_id="eval-plot", tooltip="all",
                                       label=CHART_LABELS["eval_loss"], show_label=True,
                                       elem_classes=["fs-chart"])
        with gr.Row():
            lr = _plot("lr", "lr", elem_id="lr-plot")
            tps = _plot("tokens_per_s", "tokens/s", color="series", elem_id="tps-plot")
        gen = gr.LinePlot(x="step", y="value", color="series", label=CHART_LABELS["gen"],
                          show_label=True, x_title="step", y_title="%", height=230,
                          elem_id="gen-plot", tooltip="all", visible=False,
                          elem_classes=["fs-chart"])
        with gr.Row(visible=False, elem_id="reward-row") as reward_row:   # preference jobs
            rewards = _plot("rewards", "reward", color="series", elem_id="reward-plot")
            accuracy = _plot("accuracy", "%", color="series", elem_id="reward-accuracy-plot")
        with gr.Column(visible=False, elem_id="grpo-section") as grpo_section:  # grpo jobs
            with gr.Row():
                grpo_reward = _plot("grpo_reward", "reward", color="series",
                                    elem_id="grpo-reward-plot")
                grpo_stats = _plot("grpo_stats", "value", color="series",
                                   elem_id="grpo-stats-plot")
                grpo_length = _plot("grpo_length", "tokens", color="series",
                                    elem_id="grpo-length-plot")
            grpo_samples = gr.Dataframe(headers=jobview.SAMPLE_COLUMNS, interactive=False,
                                        wrap=True, max_height=320, elem_id="grpo-samples",
                                        label="Recent sampled completions (the newest "
                                              "generation batch) and their rewards")
        with gr.Accordion("Log", open=True):
            log = gr.Textbox(show_label=False, lines=10, max_lines=10, autoscroll=True,
                             interactive=False, elem_id="log-tail")
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            kw = dict(size="sm", scale=0, min_width=170)
            dl_adapter = gr.Button("⇩ Adapter (.zip)", elem_id="dl-adapter", **kw)
            dl_bundle = gr.Button("⇩ Run bundle (.zip)", elem_id="dl-bundle", **kw)
            dl_csv = gr.Button("⇩ Metrics (.csv)", elem_id="dl-csv", **kw)
        downloads = gr.File(label="Ready to download", file_count="multiple",
                            interactive=False, visible=False, elem_id="downloads")
        evaluation = eval_panel.build(job_picker, session)
        export = export_panel.build(job_picker)
        continued = continue_panel.build(job_picker)
        shrink_panel.build(job_picker)      # "Make it smaller": prune, then heal (own wiring)
    with gr.Accordion("Compare jobs", open=False, elem_id="compare"):
        compare_picker = gr.Dropdown(choices=[], multiselect=True, label="Jobs to overlay",
                                     elem_id="compare-picker")
        compare_metric = gr.Dropdown(choices=list(jobview.COMPARED), value="training loss",
                                     label="Metric", elem_id="compare-metric")
        compare_plot = gr.LinePlot(x="step", y="loss", color="job", height=360,
                                   title="Smoothed, with its eval value as a second line",
                                   y_title="value", elem_id="compare-plot",
                                   elem_classes=["fs-chart"])
        compare_evals = gr.Dataframe(interactive=False, wrap=False, elem_id="compare-evals",
                                     label="Generation evaluation, newest of each job "
                                           "(base → tuned)")
    remembered = gr.BrowserState(None, storage_key="ftstudio-job")
    timer, table_timer = gr.Timer(TICK), gr.Timer(TABLE_TICK)
    outputs = [session, header, progress, loss, eval_loss, lr, tps, gen, reward_row, rewards,
               accuracy, grpo_section, grpo_reward, grpo_stats, grpo_length, grpo_samples, log,
               cancel, resume, delete, continued]
    assert len(outputs) == JOB_OUTPUTS
    outputs += export.outputs + evaluation.outputs
    selected = outputs + [remembered, export.message, export.download, evaluation.message,
                          evaluation.download, evaluation.data, evaluation.which, message,
                          confirm]
    assert len(selected) == SELECTED_OUTPUTS
    tab = JobsTab(table, status_filter, job_picker, session, remembered, clone, compare_picker,
                  export, evaluation, outputs, timer, table_timer, selected)

    multi = [loss, tps, gen, rewards, accuracy, grpo_reward, grpo_stats, grpo_length]
    quiet = dict(show_progress="hidden", api_visibility="private")
    # the ticks only read: never in line behind each other or behind slow work (app/studio/api.py)
    timer.tick(tick, [session, job_picker], outputs, concurrency_limit=None, **quiet).then(
        chart_colors, session, multi, concurrency_limit=None, **quiet)
    job_picker.change(select_job, [job_picker, session], selected, **quiet).then(
        chart_colors, session, multi, **quiet)
    table_timer.tick(table_tick, [status_filter, table], [table, job_picker, compare_picker],
                     show_progress="hidden", concurrency_limit=None, api_visibility="private")
    gr.on([refresh.click, status_filter.change], refresh_table, [status_filter],
          [table, job_picker, compare_picker], api_visibility="private")
    table.select(row_selected, None, job_picker, api_visibility="private")

    def act(fn, verb):
        def run(jid, request: gr.Request = None):
            if not jid:
                return render.note("Pick a job first.", "warn")
            try:
                fn(jobview.parse_id(jid), actor_of(request))
            except Exception as exc:  # noqa: BLE001 - show why (e.g. not running) in the page
                return render.note(f"Could not {verb} job {jid}: {exc}", "bad")
            return render.note(f"Job {jid}: {verb} requested.", "good")
        return run

    api = jobview._api
    cancel.click(act(lambda j, a: api().cancel(j, actor=a), "cancel"), job_picker, message,
                 api_visibility="private")
    resume.click(act(lambda j, a: api().resume(j, actor=a), "resume"), job_picker, message,
                 api_visibility="private")
    delete.click(lambda: (gr.update(visible=False), gr.update(visible=True)), None,
                 [delete, confirm], queue=False, api_visibility="private")
    confirm.click(act(lambda j, a: api().delete(j, actor=a), "delete"), job_picker, message,
                  api_visibility="private").then(
        lambda: (gr.update(visible=True), gr.update(visible=False)), None, [delete, confirm],
        queue=False, api_visibility="private").then(
        refresh_table, [status_filter], [table, job_picker, compare_picker],
        api_visibility="private")
    for button, fn in ((dl_adapter, jobview.adapter_zip), (dl_bundle, jobview.bundle_zip),
                       (dl_csv, jobview.metrics_csv)):
        button.click(_download(fn), [job_picker, downloads], [downloads, message],
                     api_visibility="private").success(
            None, js=jobview.click_download("downloads"), api_visibility="private")
    log.change(None, js=FOLLOW_LOG, api_visibility="private")
    gr.on([compare_picker.change, compare_metric.change], compare,
          [compare_picker, compare_metric], [compare_plot, compare_evals],
          trigger_mode="always_last", api_visibility="private").then(   # the last pick counts
        compare_colors, [compare_picker, compare_metric], compare_plot, **quiet)
    return tab


def compare(ids, metric="training loss", request: gr.Request = None):
    if not ids:
        return gr.update(value=None), None
    actor = actor_of(request)
    return (jobview.plot_update(jobview.compare_frame(ids, actor=actor, metric=metric), "job",
                                title=f"{metric}: {len(ids)} job{'s' if len(ids) != 1 else ''}, "
                                      "smoothed, each with its eval value as a second line"),
            eval_panel.compare_frame(ids, actor))


def compare_colors(ids, metric="training loss", request: gr.Request = None):
    """The compare chart's colours, once its data is in the page (jobview.colors_update)."""
    if not ids:
        return gr.skip()
    return jobview.colors_update(jobview.compare_frame(ids, actor=actor_of(request),
                                                      metric=metric), "job")


def chart_colors(session):
    """The job page's multi-series charts' colours, once their data is in the page
    (jobview.colors_update): read from the session, no store access."""
    names = ("loss", "tokens_per_s", "gen", "rewards", "accuracy", "grpo_reward", "grpo_stats",
             "grpo_length")
    if not session or not session.get("curves"):
        return [gr.skip()] * len(names)
    f = jobview.frames(session)
    return [jobview.colors_update(f[k], "series") for k in names]


def _download(fn):
    """A download button's handler: the file is made only after the job is fetched with the
    actor (another owner's job is "not found"), and handed out as a served copy."""
    def run(jid, current, request: gr.Request = None):
        if not jid:
            return gr.skip(), render.note("Pick a job first.", "warn")
        try:
            path = jobview.served_copy(fn(jid, actor=actor_of(request)))
        except OSError as exc:                   # no adapter, no metrics yet
            return gr.skip(), render.note(str(exc), "bad")
        except (KeyError, ValueError) as exc:    # JobNotFound, or a path refused (JobError)
            return gr.skip(), render.note(str(exc).strip("'\""), "bad")
        files = [f for f in (current or []) if not str(f).endswith(path.rsplit("/", 1)[-1])]
        return gr.update(value=files + [path], visible=True), ""
    return run


def _outputs(session, job, actor: Any = None) -> list[Any]:
    f = jobview.frames(session)
    log = "\n".join(session["log"])
    total = jobview.progress_of(job)[1] if job is not None else None
    span = [0, total] if total else None           # the charts fill up from left to right
    # every multi-series chart gets a colour per series with its frame (jobview.plot_update)
    plots = [_chart(f["loss"], "loss", "series", x_lim=span),
             _chart(f["eval_loss"], "eval_loss", x_lim=span), _chart(f["lr"], "lr", x_lim=span),
             _chart(f["tokens_per_s"], "tokens_per_s", "series", x_lim=span)]
    gen = _chart(f["gen"], "gen", "series", x_lim=span,
                 visible=bool(len(f["gen"])))        # only jobs that score their answers
    prefer = bool(len(f["rewards"]))                 # only preference-tuning jobs
    rewards = [_chart(f[k], k, "series", x_lim=span) for k in ("rewards", "accuracy")]
    grpo = bool(jobview.reward_series(job))          # only GRPO jobs
    grpo_plots = [_chart(f[k], k, "series", x_lim=span)
                  for k in ("grpo_reward", "grpo_stats", "grpo_length")]
    samples = jobview.samples_frame(job, actor) if grpo else gr.skip()
    can = jobview.actions(job)         # a button is enabled only where its action applies
    return [session, jobview.header_html(job), jobview.progress_html(session, job), *plots, gen,
            gr.update(visible=prefer), *rewards, gr.update(visible=grpo), *grpo_plots, samples,
            log, gr.update(interactive=can["cancel"]), gr.update(interactive=can["resume"]),
            gr.update(interactive=can["delete"]),
            gr.update(visible=continue_panel.can_continue(job))]


def tick(session, jid, request: gr.Request = None):
    """Only what changed: the charts and log of the job, its Evaluation and Export sections."""
    skip_job, skip_export = [gr.skip()] * (JOB_OUTPUTS - 1), [gr.skip()] * export_panel.OUTPUTS
    skip_eval = [gr.skip()] * eval_panel.OUTPUTS
    if not jid:
        return [gr.skip()] + skip_job + skip_export + skip_eval
    try:
        actor = actor_of(request)
        session, changed, job = jobview.poll(session, jid, actor)
        session, exports_changed = export_panel.poll(session, job, actor)
        session, evals_changed = eval_panel.poll(session, job, actor)
    except Exception:  # noqa: BLE001 - a store hiccup skips one tick
        return [gr.skip()] + skip_job + skip_export + skip_eval
    return [session] + (_outputs(session, job, actor)[1:] if changed else skip_job) + \
        (export_panel.view(session, actor) if exports_changed else skip_export) + \
        (eval_panel.view(session, "all", actor) if evals_changed else skip_eval)


def select_job(jid, session, request: gr.Request = None):
    actor = actor_of(request)
    session, _, job = jobview.poll(jobview.new_session(jid), jid, actor)
    session, _ = export_panel.poll(session, job, actor)
    session, _ = eval_panel.poll(session, job, actor)
    hidden = gr.update(value=None, visible=False)
    page = _outputs(session, job, actor)
    page[JOB_OUTPUTS - 2] = gr.update(interactive=jobview.actions(job)["delete"], visible=True)
    return page + export_panel.view(session, actor) + \
        eval_panel.view(session, "all", actor) + [jid, "", hidden, "", hidden, gr.update(
            choices=eval_panel.data_choices(actor), value=""), "all", "",
            gr.update(visible=False)]


#: how many outputs opening a job updates (JobsTab.selected)
SELECTED_OUTPUTS = JOB_OUTPUTS + export_panel.OUTPUTS + eval_panel.OUTPUTS + 9


def refresh_table(status, request: gr.Request = None):
    jobs = jobview.list_jobs(actor=actor_of(request))
    shown = [j for j in jobs if not status or j["status"] == status]
    frame = jobview.table(jobs=shown)
    every = jobview.choices(jobs)
    return frame, gr.update(choices=every), gr.update(choices=every)


def table_tick(status, current, request: gr.Request = None):
    try:
        frame, picker, compare = refresh_table(status, request)
    except Exception:  # noqa: BLE001
        return gr.skip(), gr.skip(), gr.skip()
    if current is not None and hasattr(current, "equals") and frame.equals(current):
        return gr.skip(), gr.skip(), gr.skip()
    return frame, picker, compare


def row_selected(evt: gr.SelectData):
    row = evt.row_value if getattr(evt, "row_value", None) else None
    return str(row[0]) if row else gr.skip()


def attach(demo, tab: JobsTab) -> None:
    """On page load: fill the table and re-attach to the remembered (or running) job."""
    def on_load(status, remembered, request: gr.Request = None):
        frame, picker, compare = refresh_table(status, request)
        chosen = jobview.pick_default(jobview.list_jobs(actor=actor_of(request)), remembered)
        return frame, gr.update(**picker, value=chosen), compare

    demo.load(on_load, [tab.status_filter, tab.remembered],
              [tab.table, tab.job_picker, tab.compare_picker], api_visibility="private")


def open_started(job_id, session, request: gr.Request = None):
    """After Start: switch to the Jobs tab showing the new job, its page drawn in the same
    step (not on the picker's change, which waits in the queue behind the old job's ticks)."""
    if job_id is None:
        return [gr.skip()] * (2 + SELECTED_OUTPUTS)
    return [gr.Tabs(selected="jobs"),
            gr.update(choices=jobview.choices(actor=actor_of(request)), value=str(job_id)),
            *select_job(str(job_id), session, request)]


def clone_values(jid, request: gr.Request = None):
    """Clone: the job's settings into the Train form, and switch to it."""
    from engine.config import ConfigError, from_dict

    n = len(form.FORM_KEYS)
    if not jid:
        return [gr.skip()] * (n + 2) + [render.note("Pick a job to clone.", "warn")]
    try:
        job = jobview._api().get(jobview.parse_id(jid), actor=actor_of(request))
        cfg = from_dict(job["config"])
    except (ConfigError, KeyError, ValueError) as exc:    # JobNotFound, a broken config
        return [gr.skip()] * (n + 2) + [render.note(f"Could not clone job {jid}: {exc}", "bad")]
    cfg.output_dir, cfg.train.resume_from = None, None
    name = f"{job['name']}-copy"
    return form.config_to_form(cfg) + [name, gr.Tabs(selected="train"),
                                       render.note(f"Settings of job {jid} loaded: change what "
                                                   "you like and press Start.", "good")]

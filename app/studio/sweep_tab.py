"""Sweeps in the studio: the Train form's Sweep toggle (number fields take a list or a range,
the card counts the jobs and their time), and the Sweeps tab, a group's page: the leaderboard
by the metric the user picks, with the varied settings as columns and each job's status and
progress; overlaid curves of every job; "cancel the rest", "resume failed", "clone the best
into Train" and the TensorBoard folders as one zip.

Each handler is a thin wrapper over jobs.sweeps, acting as the logged-in user (session.actor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.studio import form, render
from app.studio.curves import Curve, curves
from app.studio import jobview
from app.studio.jobview import plot_update
from app.studio.session import actor as actor_of
from engine.config import ConfigError, Problem

TICK = 2.0
CURVE_POINTS = 200
#: the form keys that take a list or a range when Sweep is on: every number field
SWEEP_KEYS = [k for k in form.FORM_KEYS
              if form.widget_spec(k)["type"] == "number" or k in form.NUMBER_KEYS]
PLACEHOLDER = "1e-4, 2e-4 · or 8..32 step 8 · or 1e-5..1e-3 log 3"


def _sweeps():
    from jobs import sweeps

    return sweeps


# --------------------------------------------------------------------------- the Train form


def twin(key: str, visible: bool = False):
    """The text box that takes `key`'s values while Sweep is on."""
    return gr.Textbox(label=f"{form.label_for(key)} (sweep)", placeholder=PLACEHOLDER,
                      info="A list, or a range; one value keeps it fixed.", max_lines=1,
                      visible=visible, elem_classes=["fs-field", "fs-sweep-field"],
                      elem_id="s-" + key.replace(".", "-").replace("_", "-"))


def shown(key: str, values: dict[str, Any]) -> bool:
    """Whether the form shows `key` for the chosen method and objective."""
    if key in form.METHOD_KEYS:
        return values.get("method.kind") in form.METHOD_KEYS[key]
    if key in form.OBJECTIVE_KEYS:
        return values.get("train.objective") in form.OBJECTIVE_KEYS[key]
    return True


def toggled(on: bool, values: dict[str, Any], texts: list[str]) -> list[Any]:
    """Visibility of each sweepable field and its twin (in SWEEP_KEYS order: fields, then
    twins), a twin filled with the field's value the first time it shows, and Start's text."""
    fields, twins = [], []
    for key, text in zip(SWEEP_KEYS, texts):
        visible = shown(key, values)
        fields.append(gr.update(visible=visible and not on))
        value = values.get(key)
        fill = {} if (text or "").strip() or value is None else {"value": str(value)}
        twins.append(gr.update(visible=visible and on, **fill))
    label = "▶ Start sweep" if on else "▶ Start training"
    return fields + twins + [gr.update(value=label)]


def split(texts: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The twins' texts as (fixed: {key: value}, grid: {key: [values]} of keys with several);
    ConfigError naming each bad text."""
    parsed = _sweeps().parse_grid({k: t for k, t in texts.items() if (t or "").strip()})
    fixed = {k: v[0] for k, v in parsed.items() if len(v) == 1}
    return fixed, {k: v for k, v in parsed.items() if len(v) > 1}


def _base(values: dict[str, Any], fixed: dict[str, str]):
    from engine.config import apply_overrides

    cfg, problems = form.build_config(values)
    if fixed:
        cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in fixed.items()])
    return cfg, problems


def card(values: dict[str, Any], texts: dict[str, str], actor: Any = None) -> str:
    """How many jobs the sweep makes and their estimated total time (jobs.api.time_estimate
    of each point: the kept data report and the measured speed of a finished run)."""
    from jobs import api

    try:
        fixed, grid = split(texts)
        cfg, _ = _base(values, fixed)
        points = _sweeps().expand(grid)
    except ConfigError as exc:
        return render.note("; ".join(str(p) for p in exc.problems), "bad")
    if not grid:
        return render.note("Sweep: type two or more values into a field (a list like "
                           "1e-4, 2e-4, or a range like 8..32 step 8).", "info")
    from engine.config import apply_overrides

    total, missing, why = 0.0, 0, ""
    for point in points:
        try:
            timing = api.time_estimate(apply_overrides(cfg, [f"{k}={v}" for k, v in
                                                             point.items()]), actor)
        except ConfigError:
            timing = None
        if timing and "seconds_per_epoch" in timing:   # each job loads and saves again
            total += timing["seconds_per_epoch"] * (timing["epochs"] or 1) + \
                timing.get("startup_s", 0.0)
            why = "" if timing["epochs"] else " (one epoch each: train.max_steps is set)"
        else:
            missing += 1
            why = (timing or {}).get("missing", "no data report yet")
    shape = " × ".join(f"{len(v)} {form.label_for(k).lower()}" for k, v in grid.items())
    time_text = (f"about <b>{render.duration(total)}</b> in total{render.esc(why)}, one "
                 "after another on one worker, each job's start-up (loading, saving) "
                 "counted" if not missing else
                 f"time: {render.esc(why)}")
    return (f'<div class="fs-card" id="sweep-count"><b>{len(points)} jobs</b> '
            f'({render.esc(shape)}) · {time_text}</div>')


def start(values: dict[str, Any], texts: dict[str, str], name: str = "", actor: Any = None
          ) -> tuple[str | None, list[Problem]]:
    """Queue the sweep: (sweep id, []) or (None, every problem of every point)."""
    try:
        fixed, grid = split(texts)
        cfg, problems = _base(values, fixed)
        if problems:
            return None, problems
        if not grid:
            return None, [Problem("sweep", "Sweep is on but no field has two or more values; "
                                           "type a list (1e-4, 2e-4) or a range (8..32 step "
                                           "8), or turn Sweep off")]
        sweep = _sweeps().submit(cfg, grid, name=(name or "").strip() or None, actor=actor)
    except ConfigError as exc:
        return None, exc.problems
    return sweep["id"], []


# --------------------------------------------------------------------------- the Sweeps tab


@dataclass
class SweepTab:
    picker: Any
    metric: Any
    board: Any
    clone: Any
    message: Any
    empty: list[Any]        # what refresh_choices updates besides the picker (empty_state)


def choices(actor: Any = None) -> list[tuple[str, str]]:
    return [(f"{s['name']} · {s['jobs']} jobs · {s['id']}", s["id"])
            for s in _sweeps().list_sweeps(actor=actor)]


def build() -> SweepTab:
    with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
        picker = gr.Dropdown(choices=[], label="Sweep", scale=1, min_width=260,
                             elem_id="sweep-picker")
        metric = gr.Dropdown(choices=["eval_loss"], value="eval_loss", label="Rank by",
                             scale=0, min_width=200, elem_id="sweep-metric")
        kw = dict(size="sm", scale=0, min_width=150, interactive=False)   # until a sweep
        cancel = gr.Button("■ Cancel the rest", elem_id="sweep-cancel", **kw)
        resume = gr.Button("↻ Resume failed", elem_id="sweep-resume", **kw)
        clone = gr.Button("Clone the best into Train", elem_id="sweep-clone", **kw)
        tb = gr.Button("⇩ TensorBoard (.zip)", elem_id="sweep-tb", **kw)
    header = gr.HTML(empty_html(), elem_id="sweep-header")
    message = gr.HTML(elem_id="sweep-message", elem_classes=["fs-slot"])
    board = gr.Dataframe(value=board_frame({"metric": "eval_loss", "keys": [], "rows": []}),
                         interactive=False, wrap=False, elem_id="sweep-board",
                         label="Leaderboard", visible=False)
    with gr.Row(visible=False, elem_id="sweep-charts") as charts:
        loss = gr.LinePlot(x="step", y="value", color="job", title="Training loss (smoothed)",
                           x_title="step", y_title="loss", height=280, tooltip="all",
                           elem_id="sweep-loss", elem_classes=["fs-chart"])
        # points, not lines: an eval metric may have one value per job (a line of one point
        # draws nothing)
        chosen = gr.ScatterPlot(x="step", y="value", color="job", title="Ranked metric",
                                x_title="step", y_title="value", height=280, tooltip="all",
                                elem_id="sweep-curves", elem_classes=["fs-chart"])
    download = gr.File(label="Ready to download", interactive=False, visible=False,
                       elem_id="sweep-download")
    timer = gr.Timer(TICK)
    outputs = [header, board, metric, loss, chosen, cancel, resume, clone, tb, charts]
    quiet = dict(show_progress="hidden", api_visibility="private")
    gr.on([picker.change, metric.change, timer.tick], view, [picker, metric], outputs,
          **quiet).then(colors, [picker, metric], [loss, chosen], **quiet)

    def act(fn, verb):
        def run(sid, request: gr.Request = None):
            if not sid:
                return render.note("Pick a sweep first.", "warn")
            try:
                ids = fn(sid, actor=actor_of(request))
            except (KeyError, ValueError) as exc:
                return render.note(f"Could not {verb}: {str(exc).strip(chr(39))}", "bad")
            return render.note(f"{verb.capitalize()}: {len(ids)} job(s).", "good")
        return run

    cancel.click(act(lambda s, actor: _sweeps().cancel_rest(s, actor=actor), "cancel the rest"),
                 picker, message, api_visibility="private")
    resume.click(act(lambda s, actor: _sweeps().resume_failed(s, actor=actor),
                     "resume failed"), picker, message, api_visibility="private")
    tb.click(tensorboard, picker, [download, message], api_visibility="private")
    download.change(None, js=jobview.click_download("sweep-download"), **quiet)
    return SweepTab(picker, metric, board, clone, message,
                    [header, board, charts, cancel, resume, clone, tb])


def view(sid, metric, request: gr.Request = None):
    """The group page of sweep `sid`: header, leaderboard, metric choices, the curves."""
    if not sid:
        return [gr.skip()] * 10
    try:
        actor = actor_of(request)
        data = _sweeps().leaderboard(sid, metric or "eval_loss", actor=actor)
    except (KeyError, ValueError) as exc:
        return [render.note(str(exc).strip("'\""), "bad")] + [gr.skip()] * 9
    statuses = {r["status"] for r in data["rows"]}
    has_metric = any(r["value"] is not None for r in data["rows"])
    loss, ranked = _curves(data, actor)
    totals = [r["total_steps"] for r in data["rows"] if r["total_steps"]]
    span = [0, max(totals)] if totals else None     # a metric at one step keeps a step axis
    return [header_html(data), gr.update(value=board_frame(data), visible=True),
            gr.update(choices=data["metrics"], value=data["metric"]),
            plot_update(loss, "job", x_lim=span),
            plot_update(ranked, "job", x_lim=span, title=f"Ranked metric: {data['metric']}",
                        y_title=data["metric"]),
            # each button only where its action applies
            gr.update(interactive=bool(statuses & {"queued", "running", "interrupted"})),
            gr.update(interactive=bool(statuses & {"failed", "cancelled", "interrupted"})),
            gr.update(interactive=has_metric), gr.update(interactive=True),
            gr.update(visible=True)]


def colors(sid, metric, request: gr.Request = None):
    """The two charts' colours, once their data is in the page (jobview.colors_update)."""
    if not sid:
        return gr.skip(), gr.skip()
    try:
        actor = actor_of(request)
        data = _sweeps().leaderboard(sid, metric or "eval_loss", actor=actor)
    except (KeyError, ValueError):
        return gr.skip(), gr.skip()
    loss, ranked = _curves(data, actor)
    return jobview.colors_update(loss, "job"), jobview.colors_update(ranked, "job")


def header_html(data: dict[str, Any]) -> str:
    sweep, rows = data["sweep"], data["rows"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    badges = " ".join(f"{render.badge(s)} {n}" for s, n in counts.items())
    halving = (f" · successive halving at steps {', '.join(map(str, sweep['halving']))}"
               if sweep["halving"] else "")
    return (f'<div class="fs-job-head"><span class="fs-job-name">{render.esc(sweep["name"])}'
            f'</span> <span class="fs-muted">sweep {render.esc(sweep["id"])} · {len(rows)} '
            f'jobs · varies {render.esc(", ".join(data["keys"]))}{render.esc(halving)} · '
            f'owner {render.esc(sweep["owner"])}</span><div>{badges}</div></div>')


def board_frame(data: dict[str, Any]):
    import pandas as pd

    metric, keys = data["metric"], data["keys"]
    rows = []
    for r in data["rows"]:
        status = r["status"] + (f" (cut at step {r['cut_at']})" if r["cut_at"] else "") + \
            (f" (paused at step {r['paused_at']})" if r["paused_at"] else "")
        total = r["total_steps"]
        rows.append({"#": r["rank"] or "", "Job": r["job_id"], "Name": r["name"],
                     "Status": status,
                     "Progress": f"{r['step']}/{total} ({(r['progress'] or 0) * 100:.0f}%)"
                     if total else str(r["step"] or 0),
                     metric: "" if r["value"] is None else round(r["value"], 4),
                     "at step": r["value_step"] or "", **{k: r[k] for k in keys}})
    return pd.DataFrame(rows, columns=["#", "Job", "Name", "Status", "Progress", metric,
                                       "at step", *keys])


def _curves(data: dict[str, Any], actor: Any):
    """Every job's training loss (smoothed) and the ranked metric, overlaid."""
    import pandas as pd

    from jobs import api

    metric = data["metric"]
    loss_rows, metric_rows = [], []
    for r in data["rows"]:
        try:
            seed = api.metric_buckets(r["job_id"], CURVE_POINTS, names=("loss", metric),
                                      actor=actor)
        except (KeyError, ValueError):
            continue
        found = curves(seed)
        label = r["name"]
        loss_rows += [{"step": s, "value": v, "job": label}
                      for s, v in (found.get("loss") or Curve()).smoothed()]
        metric_rows += [{"step": s, "value": v, "job": label}
                        for s, v in (found.get(metric) or Curve()).points()]
    cols = {"step": "int64", "value": "float64", "job": "str"}

    def frame(rows):
        if not rows:
            return None
        return pd.DataFrame(rows).astype(cols)
    return frame(loss_rows), frame(metric_rows)


def tensorboard(sid, request: gr.Request = None):
    from app.studio.jobview import served_copy

    if not sid:
        return gr.skip(), render.note("Pick a sweep first.", "warn")
    try:
        path = served_copy(_sweeps().tensorboard_zip(sid, actor=actor_of(request)))
    except (KeyError, ValueError, OSError) as exc:
        return gr.skip(), render.note(str(exc).strip("'\""), "bad")
    return gr.update(value=path, visible=True), ""


def best_values(sid, metric, request: gr.Request = None):
    """Clone the best: the leaderboard's first job's settings into the Train form."""
    from app.studio.jobs_tab import clone_values

    n = len(form.FORM_KEYS)
    if not sid:
        return [gr.skip()] * (n + 2) + [render.note("Pick a sweep first.", "warn")]
    try:
        best = _sweeps().best(sid, metric or "eval_loss", actor=actor_of(request))
    except (KeyError, ValueError) as exc:
        return [gr.skip()] * (n + 2) + [render.note(str(exc).strip("'\""), "bad")]
    if best is None:
        return [gr.skip()] * (n + 2) + [render.note(f"No job of the sweep has {metric} yet.",
                                                    "warn")]
    return clone_values(best, request)


def refresh_choices(current, request: gr.Request = None):
    """The picker's sweeps, and the page's empty state while there is none."""
    every = choices(actor_of(request))
    value = current if current in {v for _, v in every} else (every[0][1] if every else None)
    if every:
        return [gr.update(choices=every, value=value), gr.skip(), gr.update(visible=True),
                gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
    off = gr.update(interactive=False)
    return [gr.update(choices=[], value=None), empty_html(), gr.update(visible=False),
            gr.update(visible=False), off, off, off, off]


def empty_html() -> str:
    """The Sweeps tab before any sweep: what a sweep is and where to start one."""
    return ('<div class="fs-card fs-sweep-empty" id="sweep-empty"><div class="fs-card-h">No '
            'sweep yet</div><div class="fs-muted">A sweep trains one job per combination of '
            'settings and ranks them here. To start one, tick <b>Sweep</b> next to '
            '<b>▶ Start training</b> in the Train tab: number fields then take a list '
            '(1e-4, 2e-4) or a range (8..32 step 8).</div></div>')


def open_started(sweep_id, request: gr.Request = None):
    """After Start with Sweep on: the Sweeps tab showing the new group."""
    if sweep_id is None:
        return gr.skip(), gr.skip()
    return gr.Tabs(selected="sweeps"), gr.update(choices=choices(actor_of(request)),
                                                 value=sweep_id)

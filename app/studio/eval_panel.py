"""The Evaluation section of a job's page: did the fine-tune work? A card with base vs tuned
per metric (95% intervals), the answers side by side (filterable, as CSV), and an Evaluate
button that queues an eval job over the validation split or any data file.

The numbers come from jobs.api.job_eval (stored by training's end-of-run evaluation or by an
eval job; engine/evaluation/evaluate.py makes them). Evaluations are jobs on the queue (jobs.api
.evaluate): a worker runs them, never this web process. The Jobs tab's timer polls the section
(poll): the job's newest evaluation id and its eval jobs per tick; the card and table are drawn
again only when one of them changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.studio import jobview, render
from app.studio.session import actor as actor_of

from jobs.api import ACTIVE  # noqa: E402 - the job statuses, defined once
FILTERS = ("all", "changed", "still wrong", "got worse")
ROW_COLUMNS = ["#", "Prompt", "Reference", "Base", "Tuned", "Change"]
SPLIT = "the job's validation split"
MAX_ROWS = 500      # rows drawn in the table (the CSV has them all)
#: fewer held-out records than this cannot tell a change from chance: the card says so, and no
#: tile is coloured
MIN_RECORDS = 20
EMPTY_ANSWER = "(empty answer)"
ADVICE = ("To tell, evaluate on more records: add data, raise the validation share "
          "(data.val_fraction) or give a validation file (data.validation), or press Evaluate "
          "on another data file.")
OUTPUTS = 4         # what a poll updates: EvalPanel.outputs, the values of view()


@dataclass
class EvalPanel:
    box: Any            # the section, shown for a finished training job
    card: Any           # the metrics card (HTML)
    jobs: Any           # the eval jobs' status line (HTML)
    rows: Any           # the answers (table)
    which: Any          # the rows' filter
    data: Any           # what to evaluate on (choices refreshed when a job is opened)
    message: Any
    download: Any

    @property
    def outputs(self) -> list[Any]:
        return [self.box, self.card, self.jobs, self.rows]


# --------------------------------------------------------------------------- handlers


def data_choices(actor: Any = None) -> list[tuple[str, str]]:
    """What an evaluation can answer: the job's validation split, the bundled examples, and
    the datasets the person uploaded."""
    from app.studio.handlers import example_choices
    from jobs.datasets import list_datasets

    uploads = [(f"{d['name']} (uploaded)", d["path"]) for d in list_datasets(actor)]
    return [(SPLIT, "")] + example_choices() + uploads


def start(job_id: Any, data: str | None, max_new_tokens: Any = None, actor: Any = None
          ) -> str:
    """Queue an evaluation of the job: a note saying so, or why it was refused."""
    from engine.config import ConfigError

    if not job_id:
        return render.note("Pick a job first.", "warn")
    jid = jobview.parse_id(job_id)
    limit = int(max_new_tokens) if max_new_tokens not in (None, "", 0) else None
    try:
        ev = jobview._api().evaluate(jid, data=data or None, max_new_tokens=limit, actor=actor)
    except ConfigError as exc:
        return render.note(f"Cannot evaluate job {jid}: " + "; ".join(
            str(p) for p in exc.problems), "bad")
    except (KeyError, ValueError) as exc:     # JobNotFound, JobError: the reason, said plainly
        return render.note(f"Cannot evaluate job {jid}: {str(exc).strip(chr(39))}", "bad")
    what = Path(data).name if data else SPLIT
    return render.note(f"Evaluation of {what} queued as job {ev['id']}: a worker answers the "
                       "prompts with the base and the tuned model; the card updates when it "
                       "is done.", "good")


def poll(session: dict[str, Any], job: Any, actor: Any = None) -> tuple[dict[str, Any], bool]:
    """Refresh session["eval"]: the job's newest evaluation (id) and its eval jobs; changed
    tells whether the section must be drawn again."""
    state = session.setdefault("eval", {"sig": None})
    api = jobview._api()
    visible = api.finished_with_adapter(job)
    job_id = job and job["id"]
    evals, newest, running = [], None, []
    if visible:
        found = api.job_eval(job_id, which="all", limit=1, actor=actor)
        evals, newest = found["evals"], found["eval"]
        running = [j for j in api.list_jobs(kind="eval", parent=job_id, limit=5, actor=actor)
                   if j["status"] in ACTIVE or (newest is None and j["status"] == "failed")]
    sig = (job_id, visible, newest["id"] if newest else None,
           tuple((j["id"], j["status"], j.get("step")) for j in running))
    changed = sig != state["sig"]
    state.update(sig=sig, visible=visible, newest=newest, evals=evals, running=running)
    return session, changed


def view(session: dict[str, Any], which: str = "all", actor: Any = None) -> list[Any]:
    state = session.get("eval") or {}
    if not state.get("visible"):
        return [gr.update(visible=False), "", "", None]
    newest = state.get("newest")
    return [gr.update(visible=True), card_html(newest, state.get("evals") or []),
            jobs_html(state.get("running") or []),
            rows_frame(state["sig"][0], newest, which, actor)]


def card_html(ev: dict[str, Any] | None, evals: list[dict[str, Any]] | None = None) -> str:
    """The headline (exact match base -> tuned, with the change's 95% interval) and one tile
    per metric; None: how to get one."""
    if not ev:
        return ('<div class="fs-muted fs-eval-empty">No evaluation yet. Training ends with one '
                "when the job has a validation split (train.eval_generate); press Evaluate to "
                "answer the held-out prompts, or those of any data file, with the base and the "
                "tuned model.</div>")
    from engine.evaluation.evaluate import card_line
    from engine.evaluation.metrics import METRIC_INFO, metric_info  # noqa: F401

    tiles = []
    for name, m in ev["metrics"].items():
        info, share = metric_info(name), metric_info(name)["scale"] == "share"

        def show(x: float | None) -> str:
            if x is None:
                return "–"
            return f"{x * 100:.0f}%" if share else f"{x:.1f}"

        delta = m.get("delta")
        tone = tile_tone(m, ev["n"])
        change = "" if delta is None else (f" ({delta * 100:+.0f})" if share
                                           else f" ({delta:+.1f})")
        tiles.append((info["label"], f"{show(m.get('base'))} → {show(m['tuned'])}{change}",
                      tone))
    kind = {"end": "at the end of training", "job": "by an eval job"}.get(ev.get("kind"), "")
    took = sum(v for v in (ev.get("seconds") or {}).values() if isinstance(v, (int, float)))
    meta = (f"{ev['n']} records of {ev.get('source') or 'the data'} · {kind}"
            + (f" at step {ev['step']}" if ev.get("step") else "")
            + (f" · answered in {render.duration(took)}" if took else "")
            + (f" · {len(evals)} evaluations" if evals and len(evals) > 1 else ""))
    headline = card_line(ev)
    return (f'<div class="fs-card fs-eval-card" id="eval-card"><div class="fs-card-h">'
            f'{render.esc(headline)}</div>{verdict_html(ev)}{render.tiles(tiles)}'
            f'<div class="fs-muted">'
            f'{render.esc(meta)}. Greedy answers, base vs tuned; intervals are paired bootstrap '
            f'95% intervals of the change. Exact match compares case- and punctuation-'
            f'insensitively.</div></div>')


def tile_tone(m: dict[str, Any], n: int) -> str:
    """A metric tile's colour: green only when the whole 95% interval of the change is above
    zero, red only when it is below, and neither on fewer than MIN_RECORDS records."""
    ci = m.get("delta_ci")
    if m.get("delta") is None or not ci or n < MIN_RECORDS:
        return ""
    return "good" if ci[0] > 0 else "bad" if ci[1] < 0 else ""


def verdict_html(ev: dict[str, Any], metric: str = "exact_match") -> str:
    """Whether the evaluation can tell anything: too few records, or a change whose interval
    covers zero, is said as such, with what to do; a clear change needs no words."""
    n, m = ev["n"], (ev.get("metrics") or {}).get(metric) or {}
    if n < MIN_RECORDS:
        return render.note(f"Too few records to tell: {n} held-out record"
                           f"{'s' if n != 1 else ''} (at least {MIN_RECORDS} are needed), so "
                           f"these numbers are not a verdict. {ADVICE}", "warn")
    ci = m.get("delta_ci")
    if m.get("delta") is not None and ci and ci[0] <= 0 <= ci[1]:
        return render.note("Not enough evidence of a change: the 95% interval of the change "
                           f"covers zero. {ADVICE}", "warn")
    return ""


def answer_text(text: Any) -> str:
    """An answer as the table shows it: a blank one said as such, not an empty cell."""
    return text if isinstance(text, str) and text.strip() else EMPTY_ANSWER


def jobs_html(running: list[dict[str, Any]]) -> str:
    if not running:
        return ""
    parts = []
    for j in running:
        status = j["status"]
        detail = {"queued": "waiting for a worker", "running": "answering the prompts"}.get(
            status, j.get("hint") or j.get("error") or "")
        parts.append(f'<div class="fs-export-line"><b>Evaluation</b>{render.badge(status)}'
                     f'<span class="fs-muted">job {render.esc(j["id"])} · '
                     f'{render.esc(detail)}</span></div>')
    return f'<div class="fs-export-jobs">{"".join(parts)}</div>'


def rows_frame(job_id: Any, ev: dict[str, Any] | None, which: str = "all", actor: Any = None):
    rows = []
    if ev:
        found = jobview._api().job_eval(jobview.parse_id(job_id), eval_id=ev["id"],
                                        which=which or "all", limit=MAX_ROWS, actor=actor)
        rows = [{"#": r["index"] + 1, "Prompt": r["prompt"], "Reference": r["reference"],
                 "Base": answer_text(r["base"]) if r.get("base") is not None else "–",
                 "Tuned": answer_text(r["tuned"]), "Change": r["change"]} for r in found["rows"]]
    return jobview.frame(rows, {c: ("int64" if c == "#" else "str") for c in ROW_COLUMNS})


def answers_csv(job_id: Any, which: str = "all", actor: Any = None) -> str:
    """The newest evaluation's rows (filtered) as a CSV file of the job, for a download
    (jobs.bundles.eval_csv)."""
    from jobs import bundles

    jobview.visible_job(job_id, actor)
    return str(bundles.eval_csv(jobview.parse_id(job_id), which=which or "all", actor=actor))


def compare_rows(job_ids: list[Any], actor: Any = None) -> list[dict[str, Any]]:
    """Each job's newest evaluation side by side: one row per job, base -> tuned per metric."""
    from engine.evaluation.metrics import METRIC_INFO, metric_info  # noqa: F401

    out = []
    for jid in job_ids or []:
        try:
            found = jobview._api().job_eval(jobview.parse_id(jid), limit=1, actor=actor)
            label = jobview.job_label(jobview._api().get(jobview.parse_id(jid), actor=actor))
        except (KeyError, LookupError, ValueError):   # gone, or not the actor's
            continue
        ev = found["eval"]
        row = {"Job": label.rsplit(" · ", 1)[0], "Records": ev["n"] if ev else 0}
        for name, info in METRIC_INFO.items():
            m = (ev or {}).get("metrics", {}).get(name)
            share = info["scale"] == "share"
            fmt = (lambda x: f"{x * 100:.0f}%") if share else (lambda x: f"{x:.1f}")
            row[info["label"]] = "–" if not m else (
                f"{fmt(m['base'])} → {fmt(m['tuned'])}" if m.get("base") is not None
                else fmt(m["tuned"]))
        out.append(row)
    return out


def compare_frame(job_ids: list[Any], actor: Any = None):
    from engine.evaluation.metrics import METRIC_INFO, metric_info  # noqa: F401

    columns = ["Job", "Records", *(i["label"] for i in METRIC_INFO.values())]
    return jobview.frame(compare_rows(job_ids, actor),
                         {c: ("int64" if c == "Records" else "str") for c in columns})


# --------------------------------------------------------------------------- the section


def build(job_picker: Any, session: Any) -> EvalPanel:
    """The section (inside the job's page); its controls act on the job in job_picker."""
    with gr.Column(visible=False, elem_id="eval-panel", elem_classes=["fs-eval"]) as box:
        gr.HTML('<div class="fs-card-h">Evaluation</div><div class="fs-muted">Did it get '
                "better at your task? The base and the tuned model answer held-out prompts; "
                "each answer is scored against the record's own.</div>")
        card = gr.HTML(elem_id="eval-card-slot")
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            data = gr.Dropdown(choices=[(SPLIT, "")], value="", label="Evaluate on",
                               scale=2, min_width=240, elem_id="eval-data")
            limit = gr.Number(value=None, label="Max new tokens (empty: from the references)",
                              precision=0, minimum=1, scale=1, min_width=160,
                              elem_id="eval-max-new-tokens")
            button = gr.Button("▶ Evaluate", size="sm", scale=0, min_width=130,
                               elem_id="eval-start")
        message = gr.HTML(elem_id="eval-message", elem_classes=["fs-slot"])
        jobs = gr.HTML(elem_id="eval-jobs")
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            which = gr.Radio(choices=list(FILTERS), value="all", label="Show", scale=1,
                             elem_id="eval-filter")
            dl = gr.Button("⇩ Answers (.csv)", size="sm", scale=0, min_width=160,
                           elem_id="dl-eval-csv")
        rows = gr.Dataframe(headers=ROW_COLUMNS, interactive=False, wrap=True, max_height=360,
                            elem_id="eval-rows", label="Answers, base vs tuned")
        fetched = gr.File(label="Download", interactive=False, visible=False,
                          elem_id="eval-download")
    button.click(_start, [job_picker, data, limit], message, api_visibility="private")
    which.change(_filter, [session, which], rows, api_visibility="private")
    dl.click(_csv, [job_picker, which], [fetched, message], api_visibility="private").success(
        None, js=jobview.click_download("eval-download"), api_visibility="private")
    return EvalPanel(box, card, jobs, rows, which, data, message, fetched)


def _start(job_id, data, limit, request: gr.Request = None):
    return start(job_id, data, limit, actor=actor_of(request))


def _filter(session, which, request: gr.Request = None):
    state = (session or {}).get("eval") or {}
    if not state.get("visible"):
        return gr.skip()
    return rows_frame(state["sig"][0], state.get("newest"), which, actor_of(request))


def _csv(job_id, which, request: gr.Request = None):
    if not job_id:
        return gr.skip(), render.note("Pick a job first.", "warn")
    try:
        path = jobview.served_copy(answers_csv(job_id, which, actor=actor_of(request)))
    except (OSError, KeyError, ValueError) as exc:   # no evaluation yet, not the actor's
        return gr.skip(), render.note(str(exc).strip("'\""), "bad")
    return gr.update(value=path, visible=True), ""

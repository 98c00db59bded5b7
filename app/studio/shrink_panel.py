"""The "Make it smaller" section of a finished job's page: prune the job's model (its adapter
merged into the base) to fewer layers or a parameter budget, then heal it by distillation from
the original; jobs.prune_job runs both (a prune job, then a training job evaluated teacher vs
student, with the usual exports). Shown for a finished job whose adapter can be merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.studio import jobview, render
from app.studio.session import actor as actor_of

TARGETS = [("Drop layers", "layers"), ("Parameter budget", "budget")]


def can_shrink(job: dict[str, Any] | None) -> bool:
    from engine.config import VIRTUAL_TOKEN_METHODS

    if not jobview._api().finished_with_adapter(job):
        return False
    return (job.get("config") or {}).get("method", {}).get("kind") not in VIRTUAL_TOKEN_METHODS


def start(job_id: Any, target: str, value: Any, by: str, heal_steps: Any, name: str | None,
          actor: Any = None) -> str:
    """Queue the prune job (and its healing): a note saying so, or why it was refused."""
    from engine.config import ConfigError
    from jobs.prune_job import submit_prune

    if not job_id:
        return render.note("Pick a job first.", "warn")
    jid = jobview.parse_id(job_id)
    text = str(value if value is not None else "").strip()
    try:
        drop = int(float(text)) if target == "layers" and text else None
    except ValueError:
        return render.note(f"Layers to drop: {text!r} is not a whole number", "bad")
    steps = int(heal_steps or 0)
    try:
        job = submit_prune(jid, drop_layers=drop,
                           param_budget=text if target == "budget" and text else None,
                           by=by if target == "budget" else "layers",
                           name=(name or "").strip() or None,
                           heal={"steps": steps} if steps > 0 else None, actor=actor)
    except ConfigError as exc:
        return render.note(f"Cannot make job {jid} smaller: " + "; ".join(
            str(p) for p in exc.problems), "bad")
    except (KeyError, ValueError) as exc:     # JobNotFound, JobError: the reason, said plainly
        return render.note(f"Cannot make job {jid} smaller: {str(exc).strip(chr(39))}", "bad")
    then = (f" then a healing job distills it from this job's model for {steps} steps and "
            "evaluates teacher vs student" if steps > 0 else "")
    return render.note(f"Queued prune job {job['id']}: the model becomes "
                       f"{job['config']['name']} (a base model in the list){then}. It is listed "
                       "below (↻ to refresh); the healing job appears in the table once "
                       "pruning is done.", "good")


def made_from(job_id: Any, actor: Any = None) -> str:
    """The prune jobs of this job, newest first: status, the model they made, the healing job."""
    if not job_id:
        return ""
    jid = jobview.parse_id(job_id)
    found = [j for j in jobview._api().list_jobs(kind="prune", actor=actor)
             if (j.get("config") or {}).get("source_job") == jid]
    lines = []
    for j in found[:5]:
        r = j.get("result") or {}
        made = (f" → {render.esc(Path(r['folder']).name)}: {r['params_after']:,} of "
                f"{r['params_before']:,} parameters" if r.get("folder") else "")
        heal = f"; healing job #{render.esc(r['heal_job'])} (in the table)" \
            if r.get("heal_job") else ""
        why = f" ({render.esc(j.get('hint') or j.get('error') or '')})" \
            if j["status"] == "failed" else ""
        lines.append(f"<li>#{render.esc(j['id'])} {render.badge(j['status'])}{made}{heal}"
                     f"{why}</li>")
    return f'<ul class="fs-muted">{"".join(lines)}</ul>' if lines else ""


def build(job_picker: Any) -> Any:
    """The section (inside the job's page), shown when the opened job can be made smaller."""
    with gr.Accordion("Make it smaller", open=False, visible=False,
                      elem_id="shrink-panel") as box:
        gr.HTML('<div class="fs-muted">Prune this job\'s model: drop the block of layers that '
                "changes the hidden state least on your data (angular distance, Gromov et al. "
                "2024), or narrow every MLP to a parameter budget. Then heal it: a training "
                "job distills the pruned model from this one and compares them side by side "
                "(exact match and the other metrics with 95% intervals, size, tokens/s).</div>")
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            target = gr.Dropdown(choices=TARGETS, value="layers", label="Target", scale=1,
                                 min_width=160, elem_id="shrink-target")
            value = gr.Textbox(value="2", label="Layers to drop, or budget (100M, 0.75, 75%)",
                               scale=1, min_width=200, elem_id="shrink-value")
            by = gr.Dropdown(choices=[("Layers", "layers"), ("MLP width", "mlp")],
                             value="layers", label="Budget by", scale=1, min_width=140,
                             elem_id="shrink-by")
            heal = gr.Number(value=100, precision=0, minimum=0, label="Healing steps (0: none)",
                             scale=1, min_width=160, elem_id="shrink-heal")
            name = gr.Textbox(value="", label="Name (default: JOB-pruned)", scale=1,
                              min_width=160, elem_id="shrink-name")
            button = gr.Button("Make it smaller", size="sm", scale=0, min_width=150,
                               variant="primary", elem_id="shrink-start")
        message = gr.HTML(elem_id="shrink-message", elem_classes=["fs-slot"])
        with gr.Row(elem_classes=["fs-toolbar"]):
            made = gr.HTML(elem_id="shrink-jobs")
            refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="shrink-refresh")
    button.click(_start, [job_picker, target, value, by, heal, name], message,
                 api_visibility="private").then(_made, job_picker, made,
                                                api_visibility="private")
    refresh.click(_made, job_picker, made, api_visibility="private")
    job_picker.change(_opened, job_picker, [box, message, made], api_visibility="private",
                      show_progress="hidden")
    return box


def _opened(job_id, request: gr.Request = None):
    """Another job opened: shown when it can be made smaller, and no old message."""
    job = None
    if job_id:
        try:
            job = jobview._api().get(jobview.parse_id(job_id), actor=actor_of(request))
        except (KeyError, ValueError):
            job = None
    shown = can_shrink(job)
    return gr.update(visible=shown), "", made_from(job_id, actor_of(request)) if shown else ""


def _made(job_id, request: gr.Request = None):
    return made_from(job_id, actor_of(request))


def _start(job_id, target, value, by, heal, name, request: gr.Request = None):
    return start(job_id, target, value, by, heal, name, actor_of(request))

"""The "Continue with preference tuning or RL" section of a finished SFT job's page: pick
data and an objective (and for GRPO its reward functions), and a new job trains a fresh adapter
on the SFT model (the SFT adapter merged into its base, also the reference; jobs.continuation
says how). Shown only for a job that can continue: a finished SFT training job with an adapter
whose method can be merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.studio import jobview, render
from app.studio.session import actor as actor_of

OBJECTIVES = [("DPO (pairs)", "dpo"), ("ORPO (pairs, no reference)", "orpo"),
              ("SimPO (pairs, no reference)", "simpo"), ("KTO (labelled answers)", "kto"),
              ("GRPO (RL: prompts + reward functions)", "grpo")]
BUNDLED = ("preference", "kto")      # static/examples/<name>.jsonl


def can_continue(job: dict[str, Any] | None) -> bool:
    from engine.config import VIRTUAL_TOKEN_METHODS

    if not jobview._api().finished_with_adapter(job):
        return False
    cfg = job.get("config") or {}
    return (cfg.get("train") or {}).get("objective", "sft") == "sft" and \
        (cfg.get("method") or {}).get("kind") not in VIRTUAL_TOKEN_METHODS


def data_choices(actor: Any = None) -> list[tuple[str, str]]:
    """The bundled preference and KTO examples, then the person's uploads."""
    from app.studio.handlers import example_choices
    from jobs.datasets import list_datasets

    bundled = [c for c in example_choices() if Path(c[1]).stem in BUNDLED]
    return bundled + [(f"{d['name']} (uploaded)", d["path"]) for d in list_datasets(actor)]


def start(job_id: Any, data: str | None, objective: str = "dpo", actor: Any = None,
          rewards: str | None = None) -> str:
    """Queue the continued job: a note saying so, or why it was refused. rewards: GRPO's
    train.rewards as typed (YAML or JSON)."""
    from engine.config import ConfigError
    from jobs.continuation import continue_with_preference

    if not job_id:
        return render.note("Pick a job first.", "warn")
    jid = jobview.parse_id(job_id)
    extra = [f"train.rewards={rewards.strip()}"] if objective == "grpo" and rewards and \
        rewards.strip() else []
    try:
        job = continue_with_preference(jid, data or "", objective or "dpo", actor=actor,
                                       overrides=extra)
    except ConfigError as exc:
        return render.note(f"Cannot continue job {jid}: " + "; ".join(
            str(p) for p in exc.problems), "bad")
    except (KeyError, ValueError) as exc:     # JobNotFound, JobError: the reason, said plainly
        return render.note(f"Cannot continue job {jid}: {str(exc).strip(chr(39))}", "bad")
    return render.note(f"Queued job {job['id']} ({job['name']}): {objective} on "
                       f"{Path(str(data)).name}, starting from this job's model with its "
                       "adapter merged in. Open it from the table to watch its rewards.",
                       "good")


def build(job_picker: Any) -> Any:
    """The section (inside the job's page), hidden until a job that can continue is shown (the
    job page's outputs set its visibility from can_continue); returns its box."""
    with gr.Accordion("Continue with preference tuning or RL", open=False, visible=False,
                      elem_id="continue-panel") as box:
        gr.HTML('<div class="fs-muted">The usual second stage after supervised fine-tuning: '
                "teach the model which of two answers to prefer, or reinforce the answers "
                "your reward functions score well (GRPO). A new job trains a fresh "
                "adapter on this job's model (its adapter merged into the base), which is "
                "also the reference the rewards are measured against.</div>")
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            data = gr.Dropdown(choices=data_choices(), label="Preference data", scale=2,
                               min_width=240, elem_id="continue-data")
            objective = gr.Dropdown(choices=OBJECTIVES, value="dpo", label="Objective",
                                    scale=1, min_width=200, elem_id="continue-objective")
            button = gr.Button("▶ Continue", size="sm", scale=0, min_width=130,
                               variant="primary", elem_id="continue-start")
        rewards = gr.Textbox(label="Reward functions (GRPO)", max_lines=1, visible=False,
                             placeholder="[{name: numeric_match, args: {column: answer}}]",
                             info="train.rewards: built-ins and admin-installed functions "
                                  "(ftstudio rewards ls)", elem_id="continue-rewards")
        message = gr.HTML(elem_id="continue-message", elem_classes=["fs-slot"])
    objective.change(lambda o: gr.update(visible=o == "grpo"), objective, rewards,
                     api_visibility="private", show_progress="hidden")
    button.click(_start, [job_picker, data, objective, rewards], message,
                 api_visibility="private")
    job_picker.change(_opened, None, [data, message], api_visibility="private",
                      show_progress="hidden")
    return box


def _opened(request: gr.Request = None):
    """Another job opened: the data choices of this person, afresh, and no old message."""
    choices = data_choices(actor_of(request))
    return gr.update(choices=choices, value=choices[0][1] if choices else None), ""


def _start(job_id, data, objective, rewards, request: gr.Request = None):
    return start(job_id, data, objective, actor_of(request), rewards)

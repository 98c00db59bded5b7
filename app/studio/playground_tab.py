"""The Playground: chat with a finished job's model, side by side with its base model.

Generation lives in engine.evaluation.generate (it loads and caches models; this module never imports
torch); the handlers here only turn chat histories into messages and stream the answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.studio import jobview, render
from app.studio.session import actor as actor_of
from jobs.api import path_in_job

READY = {"completed", "cancelled", "interrupted"}


@dataclass
class Playground:
    job: Any


def model_for_job(jid: Any, actor: Any = None) -> tuple[str, str]:
    """(base model, adapter folder) of a job; raises ValueError with the reason."""
    from engine.evaluation.generate import adapter_kind

    if not jid:
        raise ValueError("Pick a finished job first.")
    try:
        job = jobview._api().get(jobview.parse_id(jid), actor=actor)
    except KeyError:       # JobNotFound: gone, or another owner's
        job = None
    if job is None:
        raise ValueError(f"Job {jid} no longer exists.")
    base = (job["config"].get("model") or {}).get("name")
    adapter = path_in_job(job, "adapter")
    if adapter_kind(adapter) is None:
        raise ValueError(f"Job {jid} has no trained adapter yet (status {job['status']}).")
    return str(base), str(adapter)


def messages_of(history: list[dict[str, Any]], system: str = "") -> list[dict[str, str]]:
    out = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history or []:
        content = m.get("content")
        if isinstance(content, list):  # gradio may hand back [{"type": "text", "text": ...}]
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        if m.get("role") in ("user", "assistant") and isinstance(content, str):
            out.append({"role": m["role"], "content": content})
    return out


def respond(message: str, tuned: list, base: list, jid: Any, compare: bool, system: str,
            max_new_tokens: int, temperature: float, top_p: float, top_k: int,
            repetition_penalty: float, request: gr.Request = None
            ) -> Iterator[tuple[Any, list, list, str]]:
    """Stream the tuned model's answer, then (side by side) the base model's."""
    from engine.evaluation.generate import stream_chat

    message = (message or "").strip()
    if not message:
        yield gr.skip(), tuned, base, ""
        return
    try:
        base_name, adapter = model_for_job(jid, actor_of(request))
    except Exception as exc:  # noqa: BLE001 - a deleted or unfinished job is a message
        yield gr.skip(), tuned, base, render.note(str(exc), "warn")
        return
    sampling = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                    top_p=float(top_p), top_k=int(top_k),
                    repetition_penalty=float(repetition_penalty))
    tuned = list(tuned or []) + [{"role": "user", "content": message}]
    base = list(base or []) + ([{"role": "user", "content": message}] if compare else [])
    runs = [(tuned, True)] + ([(base, False)] if compare else [])
    try:
        for history, use_adapter in runs:
            msgs = messages_of(history, system)
            history.append({"role": "assistant", "content": ""})
            for text in stream_chat(base_name, adapter, msgs, use_adapter=use_adapter,
                                    **sampling):
                history[-1] = {"role": "assistant", "content": text}
                yield "", tuned, base, ""
            if not history[-1]["content"]:
                history[-1] = {"role": "assistant", "content": "(no answer: the model ended "
                                                               "at once)"}
    except Exception as exc:  # noqa: BLE001 - out of memory, broken adapter: say it
        yield "", tuned, base, render.note(f"Generation failed: {exc}", "bad")
        return
    yield "", tuned, base, ""


def _job_changed(jid, request: gr.Request = None):
    return [], [], base_title_html(jid, request)


def base_title_html(jid: Any, request: gr.Request = None) -> str:
    try:
        name = model_for_job(jid, actor_of(request))[0]
    except Exception:  # noqa: BLE001 - no job picked yet
        name = ""
    shown = name.rstrip("/").rsplit("/", 1)[-1] if name.startswith("/") else name
    return (f'<div class="fs-col-title">Base model <span class="fs-muted">{render.esc(shown)}'
            '</span></div>')


def job_choices(current: Any = None, request: gr.Request = None):
    try:
        choices = jobview.choices(statuses=READY, actor=actor_of(request))
    except Exception:  # noqa: BLE001 - the queue not ready yet: an empty picker
        choices = []
    ids = [v for _, v in choices]
    value = current if current in ids else (ids[0] if ids else None)
    return gr.update(choices=choices, value=value)


def build() -> Playground:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280, elem_classes=["fs-section"]):
            job = gr.Dropdown(choices=[], label="Model of job", elem_id="play-job",
                              info="Finished jobs; the base model is the one it was tuned from.")
            compare = gr.Checkbox(value=True, label="Side by side with the base model",
                                  elem_id="play-compare")
            system = gr.Textbox(label="System prompt", lines=2, placeholder="optional")
            with gr.Accordion("Sampling", open=True):
                max_new = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature",
                                        info="0 answers greedily (deterministic).")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k")
                rep = gr.Slider(1, 2, value=1.0, step=0.05, label="Repetition penalty")
            refresh = gr.Button("↻ Refresh jobs", size="sm")
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                with gr.Column():
                    gr.HTML('<div class="fs-col-title">Fine-tuned</div>')
                    tuned = gr.Chatbot(height=440, elem_id="chat-tuned", show_label=False,
                                       placeholder="Ask the tuned model something.")
                with gr.Column(visible=True) as base_col:
                    base_title = gr.HTML('<div class="fs-col-title">Base model</div>')
                    base = gr.Chatbot(height=440, elem_id="chat-base", show_label=False,
                                      placeholder="The same prompt, answered without the "
                                                  "adapter.")
            with gr.Row(equal_height=True):
                prompt = gr.Textbox(placeholder="Type a message and press Enter", scale=5,
                                    show_label=False, elem_id="play-prompt", max_lines=6)
                send = gr.Button("Send", variant="primary", scale=0, min_width=110,
                                 elem_id="play-send")
                clear = gr.Button("Clear", scale=0, min_width=90)
            note = gr.HTML(elem_classes=["fs-slot"])
    inputs = [prompt, tuned, base, job, compare, system, max_new, temperature, top_p, top_k, rep]
    gr.on([prompt.submit, send.click], respond, inputs, [prompt, tuned, base, note],
          api_visibility="private")
    clear.click(lambda: ([], [], ""), None, [tuned, base, note], queue=False,
                api_visibility="private")
    compare.change(lambda c: gr.update(visible=c), compare, base_col, queue=False,
                   api_visibility="private")
    refresh.click(job_choices, job, job, api_visibility="private")
    job.change(_job_changed, job, [tuned, base, base_title],
               queue=False, api_visibility="private")
    return Playground(job)

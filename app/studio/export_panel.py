"""The Export section of a job's page: one button per format, the export jobs while they run
(each finished one with its verification line: verified, or unverified in amber with what
differed), and the exported files with their sizes, to download.

Exports are jobs on the queue (jobs.api.export): a worker runs them, never this web process.
The section is polled by the Jobs tab's timer (poll): one query for the job's export jobs per
tick, their new log lines only while one is queued or running, its files only when something
changed. A download names a recorded file of the job (its format and name in the table) and is
resolved by jobs.api.artifact_path, which keeps it inside the job's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.studio import jobview, render
from app.studio.session import actor as actor_of

# one entry per engine.export.FORMATS key, in its order (tests/app/test_studio_export.py checks)
FORMATS: dict[str, tuple[str, str]] = {
    "adapter": ("Adapter", "PEFT adapter folder + .zip with a model card; loads on the base"),
    "merged": ("Merged", "Adapter merged into the base: safetensors for transformers / vLLM"),
    "bnb4": ("bitsandbytes 4-bit", "Merged, quantized to NF4 by bitsandbytes; loads as 4-bit"),
    "bnb8": ("bitsandbytes 8-bit", "Merged, quantized to LLM.int8 by bitsandbytes"),
    "gguf-f16": ("GGUF f16", "One 16-bit GGUF file + Ollama Modelfile, for llama.cpp"),
    "gguf-q8_0": ("GGUF q8_0", "8-bit GGUF, near-lossless, + Modelfile for llama.cpp / Ollama"),
    "gguf-q4_0": ("GGUF q4_0", "4-bit GGUF, the smallest, + Modelfile for llama.cpp / Ollama"),
}
FILE_COLUMNS = ["Format", "File", "Size", "Exported"]
from jobs.api import ACTIVE  # noqa: E402 - the job statuses, defined once
OUTPUTS = 4         # what a poll updates: ExportPanel.outputs, the values of view()


@dataclass
class ExportPanel:
    box: Any            # the section, shown for a finished training job
    message: Any
    jobs: Any           # the export jobs' status (HTML)
    cancel: Any         # shown while an export is queued or running
    files: Any          # the exported files (table; a click downloads)
    download: Any

    @property
    def outputs(self) -> list[Any]:
        """What a poll of the job's page updates (see view)."""
        return [self.box, self.jobs, self.cancel, self.files]


def label(fmt: str) -> str:
    return FORMATS.get(fmt, (fmt, ""))[0]


# --------------------------------------------------------------------------- handlers


def start(job_id: Any, fmt: str, owner: str | None = None, actor: Any = None
          ) -> tuple[str | None, str]:
    """Queue an export of the job: (export job id, a note saying so), or (None, the reason
    it was refused)."""
    if not job_id:
        return None, render.note("Pick a job first.", "warn")
    jid = jobview.parse_id(job_id)
    try:
        exp = jobview._api().export(jid, fmt, owner=owner, actor=actor)
    except (KeyError, ValueError) as exc:     # JobNotFound, JobError: the reason, said plainly
        return None, render.note(f"Cannot export job {jid} as {label(fmt)}: {exc}", "bad")
    return exp["id"], render.note(f"Export {label(fmt)} queued as job {exp['id']}: a worker "
                                  "runs it, and its files are listed below when it is done.",
                                  "good")


def cancel(job_id: Any, actor: Any = None) -> str:
    """Cancel the job's queued and running exports: a note saying which."""
    if not job_id:
        return render.note("Pick a job first.", "warn")
    api, done = jobview._api(), []
    for exp in api.list_jobs(kind="export", parent=jobview.parse_id(job_id),
                             status=list(ACTIVE), actor=actor):
        try:
            api.cancel(exp["id"], actor=actor)
            done.append(f"{label(exp['config'].get('format'))} (job {exp['id']})")
        except (KeyError, ValueError):   # it ended meanwhile
            pass
    if not done:
        return render.note(f"Job {job_id} has no export queued or running.", "info")
    return render.note(f"Cancel requested: {', '.join(done)}.", "good")


def latest_exports(job_id: Any, actor: Any = None) -> list[dict[str, Any]]:
    """The newest export job of each format (newer ones replace older files), newest first."""
    seen, out = set(), []
    for job in jobview._api().list_jobs(kind="export", parent=jobview.parse_id(job_id),
                                        actor=actor):
        fmt = job["config"].get("format")
        if fmt not in seen:
            seen.add(fmt)
            out.append(job)
    return out


def poll(session: dict[str, Any], job: Any, actor: Any = None) -> tuple[dict[str, Any], bool]:
    """Refresh session["export"] (the job's export jobs, the last log line of each running
    one); changed tells whether the section must be drawn again."""
    state = session.setdefault("export", {"sig": None, "lines": {}, "exports": []})
    api = jobview._api()
    visible = api.finished_with_adapter(job)
    exports = latest_exports(job["id"], actor) if visible else []
    for exp in exports:
        if exp["status"] in ACTIVE:     # the stage it is at: only the lines after the last seen
            cursor, line = state["lines"].get(exp["id"], (0, ""))
            for event in api.logs(exp["id"], since=cursor, actor=actor):
                cursor, line = event["id"], event["line"]
            state["lines"][exp["id"]] = (cursor, line)
    sig = (job and job["id"], visible, tuple(
        (e["id"], e["status"], e.get("step"), state["lines"].get(e["id"], (0, ""))[1])
        for e in exports))
    changed = sig != state["sig"]
    state.update(sig=sig, exports=exports, visible=visible)
    return session, changed


def view(session: dict[str, Any], actor: Any = None) -> list[Any]:
    """The section's outputs from the last poll: visibility, export jobs, files."""
    state = session.get("export") or {}
    if not state.get("visible"):
        return [gr.update(visible=False), "", gr.update(visible=False), None]
    job_id = state["sig"][0]
    lines = {k: v[1] for k, v in state["lines"].items()}
    active = any(e["status"] in ACTIVE for e in state["exports"])
    return [gr.update(visible=True), jobs_html(state["exports"], lines),
            gr.update(visible=active), files_frame(job_id, actor)]


def jobs_html(exports: list[dict[str, Any]], lines: dict[str, str] | None = None) -> str:
    """One line per export job: format, status, what it is doing or what it made; a failed one
    with its error and hint."""
    if not exports:
        return ('<div class="fs-muted fs-export-empty">No exports yet. Each format runs as a job '
                "on the queue; its files are listed here with their sizes.</div>")
    rows = []
    for exp in exports:
        status = exp["status"]
        result = exp.get("result") or {}
        started, finished = exp.get("started_at"), exp.get("finished_at")
        took = render.duration(finished - started) if started and finished else ""
        detail = {
            "queued": "waiting for a worker",
            "running": (lines or {}).get(exp["id"]) or "starting",
            "completed": (f"{result.get('files', '?')} file(s) · "
                          f"{human(result.get('total_bytes', 0))}" + (f" in {took}" if took
                                                                        else "")),
        }.get(status, exp.get("hint") or "")
        bar = ('<div class="fs-progress fs-running fs-export-bar"><div class="fs-progress-bar">'
               '<div class="fs-progress-fill" style="width:100%"></div></div></div>'
               if status in ACTIVE else "")
        fmt = exp["config"].get("format", "?")
        notes = "".join(render.note(str(exp[k]), tone) for k, tone in (("error", "bad"),
                        ("hint", "info")) if status == "failed" and exp.get(k))
        check = verification_html(result.get("verification")) if status == "completed" else ""
        rows.append(f'<div class="fs-export-job" data-format="{render.esc(fmt)}">'
                    f'<div class="fs-export-line"><b>{render.esc(label(fmt))}</b>'
                    f'{render.badge(status)}<span class="fs-muted">job '
                    f'{render.esc(exp["id"])} · {render.esc(detail)}</span></div>{bar}{notes}'
                    f'{check}</div>')
    return f'<div class="fs-export-jobs">{"".join(rows)}</div>'


def verification_html(record: dict[str, Any] | None) -> str:
    """The export's verification as a line: green when its files behave like the tuned model,
    amber "unverified" with what differed (each failed check below it), muted when skipped."""
    if not record:
        return ""
    status = record.get("status")
    tone = {"verified": "good", "unverified": "warn"}.get(status, "info")
    more = "".join(f'<div class="fs-verify-detail">{render.esc(c.get("runtime", ""))} · '
                   f'{render.esc(c.get("name", ""))}: {render.esc(c.get("detail", ""))}</div>'
                   for c in (record.get("failed") or [])[1:])
    return (f'<div class="fs-verify fs-verify-{render.esc(status or "none")}" '
            f'data-status="{render.esc(status or "")}">'
            f'{render.note(str(record.get("line") or status), tone)}{more}</div>')


def human(n: Any) -> str:
    from engine.models.estimate import human_bytes

    return human_bytes(float(n or 0))


def _shown_name(artifact: dict[str, Any]) -> str:
    """The file's path inside its export folder (exports/<format>/), else in the job folder."""
    prefix = f"exports/{artifact.get('format')}/"
    path = artifact["path"]
    return path[len(prefix):] if path.startswith(prefix) else path


def exported_files(job_id: Any, actor: Any = None) -> list[dict[str, Any]]:
    """The job's exported files (jobs.api.artifacts, kind "export"): the newest export first,
    the files beside its folders (the .zip, the .gguf, the Modelfile) before those inside,
    the largest first (the file one came for)."""
    order = {fmt: i for i, fmt in enumerate(FORMATS)}
    rows = [a for a in jobview._api().artifacts(jobview.parse_id(job_id), actor=actor)
            if a.get("kind") == "export"]
    return sorted(rows, key=lambda a: (-(a.get("created_at") or 0),
                                       order.get(a.get("format"), len(order)),
                                       "/" in _shown_name(a), -(a.get("size") or 0),
                                       _shown_name(a)))


def files_frame(job_id: Any, actor: Any = None):
    rows = [{"Format": label(a.get("format")), "File": _shown_name(a), "Size": human(a["size"]),
             "Exported": jobview._clock(a.get("created_at"))}
            for a in exported_files(job_id, actor)]
    return jobview.frame(rows, {c: "str" for c in FILE_COLUMNS})


def download(job_id: Any, fmt_label: str, name: str, actor: Any = None) -> str:
    """The file shown as (format label, name) in the job's table: its path, resolved by
    jobs.api.artifact_path. Only a recorded export of the job can be fetched."""
    for a in exported_files(job_id, actor):
        if label(a.get("format")) == fmt_label and _shown_name(a) == name:
            return str(jobview._api().artifact_path(jobview.parse_id(job_id), a["path"],
                                                    actor=actor))
    raise FileNotFoundError(f"{name} is not an exported file of job {job_id} (any more); "
                            "export it again")


# --------------------------------------------------------------------------- the section


def build(job_picker: Any) -> ExportPanel:
    """The section (inside the job's page); its buttons act on the job in job_picker."""
    with gr.Column(visible=False, elem_id="export-panel", elem_classes=["fs-export"]) as box:
        gr.HTML('<div class="fs-card-h">Export</div><div class="fs-muted">Each format runs as '
                "a job on the queue and writes into this job's <code>exports/</code> folder; "
                "exporting a format again replaces its files.</div>")
        buttons = {}
        with gr.Row(equal_height=False, elem_classes=["fs-export-grid"]):
            for fmt, (name, text) in FORMATS.items():
                with gr.Column(min_width=160, elem_classes=["fs-export-fmt"]):
                    buttons[fmt] = gr.Button(f"⇩ {name}", size="sm", elem_id=f"export-{fmt}")
                    gr.HTML(f'<div class="fs-muted">{render.esc(text)}</div>')
        message = gr.HTML(elem_id="export-message", elem_classes=["fs-slot"])
        with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
            jobs = gr.HTML(elem_id="export-jobs")
            stop = gr.Button("■ Cancel exports", size="sm", scale=0, min_width=150,
                             visible=False, elem_id="cancel-exports")
        files = gr.Dataframe(headers=FILE_COLUMNS, interactive=False, wrap=False,
                             max_height=240, elem_id="export-files",
                             label="Exported files · click one to download it")
        fetched = gr.File(label="Download", interactive=False, visible=False,
                          elem_id="export-download")
    for fmt, button in buttons.items():
        button.click(_start(fmt), job_picker, message, api_visibility="private")
    stop.click(_cancel, job_picker, message, api_visibility="private")
    files.select(_download, job_picker, [fetched, message], api_visibility="private").success(
        None, js=jobview.click_download("export-download"), api_visibility="private")
    return ExportPanel(box, message, jobs, stop, files, fetched)


def _start(fmt: str):
    def run(job_id, request: gr.Request = None):
        return start(job_id, fmt, actor=actor_of(request))[1]
    return run


def _cancel(job_id, request: gr.Request = None):
    return cancel(job_id, actor=actor_of(request))


def _download(job_id, evt: gr.SelectData, request: gr.Request = None):
    """The clicked file, fetched only after the job is (jobs.api, with the actor), and handed
    out as a served copy: no path under FTSTUDIO_HOME/jobs is served directly."""
    row = evt.row_value if getattr(evt, "row_value", None) else None
    if not job_id or not row:
        return gr.skip(), gr.skip()
    try:
        path = jobview.served_copy(download(job_id, str(row[0]), str(row[1]),
                                            actor=actor_of(request)))
    except (FileNotFoundError, KeyError, ValueError) as exc:   # JobError: refused by the api
        return gr.skip(), render.note(str(exc), "bad")
    return gr.update(value=path, visible=True), ""

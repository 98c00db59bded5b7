"""The Export section of a job's page as plain functions, over the real jobs.api in a fresh
FTSTUDIO_HOME: buttons queue export jobs (or say why not), the section follows them, lists their
files with sizes and hands out downloads through jobs.api.artifact_path.

No worker runs here: where a test needs an export to run, it writes what the runner would
(status, a log line, the files) through jobs.store. tests/e2e/test_browser.py runs a real one.
"""

from __future__ import annotations

import json

import pytest

from app.studio import eval_panel, export_panel, jobs_tab, jobview
from jobs import api, store


def _finished_job(method: str = "lora", status: str = "completed", owner: str = "ana") -> str:
    """A training job that has run, with the run folder engine.export reads."""
    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    peft_type = {"lora": "LORA", "prompt_tuning": "PROMPT_TUNING"}[method]
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": peft_type, "base_model_name_or_path": "base-model"}))
    (folder / "run.json").write_text(json.dumps(
        {"status": status, "config": {"model": {"name": "base-model"},
                                      "method": {"kind": method}}}))
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name=f"{method}-run",
                         owner=owner, priority=0, job_id=job_id)
        assert store.transition(db, job_id, "running")
        assert store.transition(db, job_id, status)
    return job_id


def _run_export(export_id: str, files: dict[str, bytes], verification: dict | None = None
                ) -> None:
    """What the runner records for an export: running, a stage line, the files, completed."""
    exp = api.get(export_id)
    parent, fmt = exp["parent"], exp["config"]["format"]
    folder = store.job_dir(parent) / "exports" / fmt
    with store.connect() as db:
        assert store.transition(db, export_id, "running", started_at=store.now())
        store.add_event(db, export_id, f"{fmt}: zipping into base-model-ft-{fmt}.zip")
    written = []
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        written.append((folder / name, len(data)))
    with store.connect() as db:
        store.replace_exports(db, parent, fmt, written, meta={"export_job": export_id})
        assert store.transition(db, export_id, "completed", finished_at=store.now(), result={
            "format": fmt, "files": len(written), "total_bytes": sum(n for _, n in written),
            "verification": verification})


def test_the_section_offers_every_engine_format_with_a_description():
    from engine.export import FORMATS

    assert list(export_panel.FORMATS) == list(FORMATS)
    for name, text in export_panel.FORMATS.values():
        assert name and 20 < len(text) <= 70


def test_a_button_queues_an_export_job_and_a_refusal_says_why(home):
    lora, prompt = _finished_job(), _finished_job("prompt_tuning")
    export_id, note = export_panel.start(lora, "adapter")
    assert note.startswith('<div class="fs-note fs-good">') and "queued as job" in note
    assert [(j["id"], j["kind"], j["status"]) for j in api.list_jobs(parent=lora)] == \
        [(export_id, "export", "queued")]

    export_id, note = export_panel.start(prompt, "merged")
    assert export_id is None and "fs-bad" in note and "Traceback" not in note
    assert f"Cannot export job {prompt} as Merged: prompt_tuning cannot be exported as " \
        "merged" in note
    assert export_panel.start(prompt, "adapter", owner="bob")[1].count("belongs to ana") == 1
    assert "no job" in export_panel.start("nope", "adapter")[1]
    assert "Pick a job" in export_panel.start("", "adapter")[1]
    assert [j["id"] for j in api.list_jobs(kind="export")] == [api.list_jobs(parent=lora)[0]["id"]]


def test_the_section_follows_export_jobs_and_lists_their_files(home):
    job_id = _finished_job()
    session, changed = export_panel.poll(jobview.new_session(job_id), api.get(job_id))
    box, jobs, cancel, files = export_panel.view(session)
    assert changed and box["visible"] and not cancel["visible"] and files.empty
    assert "No exports yet" in jobs
    assert export_panel.poll(session, api.get(job_id)) == (session, False)   # nothing new

    export_id, _ = export_panel.start(job_id, "adapter")
    session, changed = export_panel.poll(session, api.get(job_id))
    _, jobs, cancel, _ = export_panel.view(session)
    assert changed and cancel["visible"] and "waiting for a worker" in jobs
    assert 'data-format="adapter"' in jobs and "fs-queued" in jobs

    zipped = b"z" * 2048
    _run_export(export_id, {"base-model-ft-adapter.zip": zipped, "adapter/README.md": b"# card",
                            "adapter/adapter_config.json": b"{}"})
    session, changed = export_panel.poll(session, api.get(job_id))
    _, jobs, cancel, files = export_panel.view(session)
    assert changed and not cancel["visible"] and "3 file(s) · 2.0 KB" in jobs
    assert files.values.tolist()[0][:3] == ["Adapter", "base-model-ft-adapter.zip", "2.0 KB"]
    assert [r[1] for r in files.values.tolist()] == ["base-model-ft-adapter.zip",
                                                     "adapter/README.md",
                                                     "adapter/adapter_config.json"]
    path = export_panel.download(job_id, "Adapter", "base-model-ft-adapter.zip")
    assert path == str((store.job_dir(job_id) / "exports/adapter/base-model-ft-adapter.zip")
                       .resolve())
    with open(path, "rb") as fh:
        assert fh.read() == zipped
    with pytest.raises(FileNotFoundError, match="not an exported file of job"):
        export_panel.download(job_id, "Adapter", "../../studio.db")
    with pytest.raises(FileNotFoundError):
        export_panel.download(job_id, "GGUF q8_0", "base-model-ft-adapter.zip")


def test_a_running_stage_shows_and_a_failed_export_says_what_to_do(home):
    job_id = _finished_job()
    session, _ = export_panel.poll(jobview.new_session(job_id), api.get(job_id))
    export_id, _ = export_panel.start(job_id, "gguf-q8_0")
    with store.connect() as db:
        store.transition(db, export_id, "running", started_at=store.now())
        store.add_event(db, export_id, "gguf-q8_0: writing 2 tensors")
    session, changed = export_panel.poll(session, api.get(job_id))
    assert changed and "gguf-q8_0: writing 2 tensors" in export_panel.view(session)[1]
    assert "fs-export-bar" in export_panel.view(session)[1]
    with store.connect() as db:
        store.transition(db, export_id, "failed", error=f"cannot export job {job_id} as "
                         "gguf-q8_0", hint="GGUF export supports the llama family")
    session, changed = export_panel.poll(session, api.get(job_id))
    jobs = export_panel.view(session)[1]
    assert changed and "fs-failed" in jobs and "GGUF export supports the llama family" in jobs
    assert "fs-export-bar" not in jobs


def test_cancel_stops_the_queued_exports(home):
    job_id = _finished_job()
    assert "no export queued or running" in export_panel.cancel(job_id)
    first, _ = export_panel.start(job_id, "adapter")
    second, _ = export_panel.start(job_id, "gguf-f16")
    note = export_panel.cancel(job_id)
    assert "Cancel requested" in note and first in note and second in note
    assert {api.get(i)["status"] for i in (first, second)} == {"cancelled"}


def test_only_a_finished_training_job_has_the_section(home):
    with store.connect() as db:
        running = store.insert_job(db, config={}, name="r", owner="ana", priority=0)
        assert store.transition(db, running, "running")
    assert not api.finished_with_adapter(api.get(running))
    stopped = _finished_job(status="cancelled")          # stopped, with its adapter saved
    assert api.finished_with_adapter(api.get(stopped))
    export_id, _ = export_panel.start(stopped, "adapter")
    assert not api.finished_with_adapter(api.get(export_id))
    session, _ = export_panel.poll(jobview.new_session(running), api.get(running))
    assert export_panel.view(session)[0]["visible"] is False


def test_export_jobs_stay_out_of_the_table_and_show_under_their_parent(home):
    job_id = _finished_job()
    export_panel.start(job_id, "adapter")
    assert jobview.table()["ID"].tolist() == [job_id]
    assert [v for _, v in jobview.choices()] == [job_id]
    outputs = jobs_tab.select_job(job_id, jobview.new_session())
    n = jobs_tab.JOB_OUTPUTS + export_panel.OUTPUTS + eval_panel.OUTPUTS
    assert len(outputs) == n + 9 and outputs[n] == job_id      # + the message, Really delete?
    session = outputs[0]
    assert "waiting for a worker" in outputs[jobs_tab.JOB_OUTPUTS + 1]
    again = jobs_tab.tick(session, job_id)          # nothing changed: every output skipped
    assert len(again) == n
    assert all(isinstance(o, dict) and o.get("__type__") == "update" and len(o) == 1
               for o in again[1:])


def test_each_finished_export_shows_its_verification_line(home):
    """Verified in green, unverified in amber with every check that differed, skipped muted;
    the files of an unverified export stay listed and downloadable."""
    job_id = _finished_job()
    session, _ = export_panel.poll(jobview.new_session(job_id), api.get(job_id))
    good, _ = export_panel.start(job_id, "gguf-q8_0")
    _run_export(good, {"m.gguf": b"g" * 10}, {
        "status": "verified", "failed": [],
        "line": "verified: 16/16 same answers, logits r=0.9999, template and stop tokens match"})
    bad, _ = export_panel.start(job_id, "merged")
    _run_export(bad, {"model.safetensors": b"m" * 10}, {
        "status": "unverified", "line": "unverified: tokenization: the export tokenizes prompt 1 "
        "differently from token 4 on", "failed": [
            {"runtime": "transformers", "name": "tokenization", "detail": "differs at 4"},
            {"runtime": "transformers", "name": "answers", "detail": "3/16 same greedy answers"}]})
    skipped, _ = export_panel.start(job_id, "adapter")
    _run_export(skipped, {"a.zip": b"z"}, {"status": "skipped", "failed": [],
                                          "line": "not verified (--no-verify)"})
    session, _ = export_panel.poll(session, api.get(job_id))
    jobs = export_panel.view(session)[1]
    assert 'data-status="verified"' in jobs and 'class="fs-note fs-good"' in jobs
    assert "verified: 16/16 same answers, logits r=0.9999, template and stop tokens match" in jobs
    assert 'data-status="unverified"' in jobs and 'class="fs-note fs-warn"' in jobs
    assert "unverified: tokenization: the export tokenizes prompt 1" in jobs
    assert "transformers · answers: 3/16 same greedy answers" in jobs
    assert "not verified (--no-verify)" in jobs
    names = [r[1] for r in export_panel.files_frame(job_id).values.tolist()]
    assert "model.safetensors" in names
    assert export_panel.download(job_id, "Merged", "model.safetensors").endswith(
        "model.safetensors")

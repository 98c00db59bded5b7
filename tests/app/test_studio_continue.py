"""The job page's "Continue with preference tuning" section: shown only for a finished SFT job
whose adapter can be merged, offers the bundled preference data and the person's uploads, and
queues the continued job (jobs.continuation) or says why not."""

from __future__ import annotations

import gradio as gr

from app.studio import continue_panel, jobs_tab, jobview
from jobs import api, store
from tests_paths import EXAMPLES


def _job(home, method="lora", objective="sft", status="completed") -> str:
    models = home / "models" / "base"
    models.mkdir(parents=True, exist_ok=True)
    (models / "config.json").write_text("{}")
    (models / "model.safetensors").write_bytes(b"")
    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    cfg = {"model": {"name": str(models)}, "output_dir": str(folder),
           "data": {"train": str(EXAMPLES / "alpaca.json")},
           "method": {"kind": method}, "train": {"objective": objective, "lr": 2e-4}}
    with store.connect() as db:
        store.insert_job(db, config=cfg, name="sft", owner="local", priority=0, job_id=job_id)
        assert store.transition(db, job_id, "running")
        if status != "running":
            assert store.transition(db, job_id, status)
    return job_id


def test_the_section_shows_for_a_finished_sft_job_and_queues_the_continued_job(home):
    sft = _job(home)
    assert continue_panel.can_continue(api.get(sft))
    for other in (_job(home, method="prompt_tuning"), _job(home, objective="dpo"),
                  _job(home, status="running")):
        assert not continue_panel.can_continue(api.get(other))
    outputs = jobs_tab.select_job(sft, jobview.new_session())
    assert outputs[jobs_tab.JOB_OUTPUTS - 1]["visible"] is True       # the section's box
    choices = dict((v, k) for k, v in continue_panel.data_choices())
    pairs = str(EXAMPLES / "preference.jsonl")
    assert pairs in choices and str(EXAMPLES / "kto.jsonl") in choices
    assert str(EXAMPLES / "alpaca.json") not in choices             # not preference data

    note = continue_panel.start(sft, pairs, "dpo")
    assert "Queued job" in note and "dpo on preference.jsonl" in note
    child = [j for j in api.list_jobs() if j["parent"] == sft][0]
    assert child["config"]["train"]["objective"] == "dpo"
    assert child["config"]["model"]["name"].endswith(api.START_MODEL)
    bad = continue_panel.start(_job(home, method="prompt_tuning"), pairs, "dpo")
    assert "Cannot continue job" in bad and "virtual tokens" in bad
    assert "Pick a job first" in continue_panel.start("", pairs)


def test_the_section_is_part_of_the_studio(home):
    from app.studio.ui import build_app

    demo = build_app()
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"continue-panel", "continue-data", "continue-objective", "continue-start",
            "reward-plot", "reward-accuracy-plot", "compare-metric"} <= ids

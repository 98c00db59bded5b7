"""The Evaluation section of a job's page as plain functions, over the real jobs.api in a fresh
FTSTUDIO_HOME: the card (base -> tuned per metric, with the change's interval), the answers
table and its filters, the CSV, the Evaluate button (an eval job on the queue, or why not) and
the compare table. The evaluations are real engine.evaluation.evaluate records of hand-written answers
(no model is needed to score them); tests/jobs/test_eval_jobs.py makes them by training."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from app.studio import eval_panel, jobs_tab, jobview
from engine.evaluation.evaluate import Answer, EvalExample, score
from jobs import api, store


def _finished_job(owner: str = "local", name: str = "run") -> str:
    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "base-model"}))
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name=name, owner=owner,
                         priority=0, job_id=job_id)
        assert store.transition(db, job_id, "running")
        assert store.transition(db, job_id, "completed")
    return job_id


def _evaluated(job_id: str, base: list[str], tuned: list[str], refs: list[str]) -> dict:
    examples = [EvalExample(f"line {i + 1}", [{"role": "user", "content": f"q{i}"}], r,
                            "messages") for i, r in enumerate(refs)]
    record = score(examples, [Answer(b, False, 9) for b in base],
                   [Answer(t, True, 2) for t in tuned], seconds={"base": 1.0, "tuned": 0.5},
                   source="held-out 0.1 of data.train", step=30, max_new_tokens=16)
    with store.connect() as db:
        store.add_eval(db, job_id, record, kind="end", path=store.job_dir(job_id) / "eval.json")
    return record


REFS = ["yes", "no", "blue", "red", "four"] * 2
BASE = ["well, maybe", "no", "green", "red", "4"] * 2
TUNED = ["yes", "yes", "blue", "Red.", "four"] * 2


def test_the_card_says_base_to_tuned_with_the_interval_of_the_change(home):
    job = _finished_job()
    _evaluated(job, BASE, TUNED, REFS)
    session, changed = eval_panel.poll(jobview.new_session(job), api.get(job))
    assert changed
    box, card, jobs, rows = eval_panel.view(session)
    assert box["visible"] is True and jobs == ""
    # base 2 of 5 exact (no, red), tuned 4 of 5 (yes, blue, Red., four): 40% -> 80%
    assert "exact match 40% \u2192 80% (+40 points, 95% CI" in card and "10 held-out" in card
    assert "token F1" in card and "chrF" in card and "BLEU" in card
    assert "at the end of training at step 30" in card
    assert list(rows.columns) == eval_panel.ROW_COLUMNS and len(rows) == 10
    assert rows["Change"].tolist()[:5] == ["improved", "worse", "improved", "same", "improved"]
    again, changed = eval_panel.poll(session, api.get(job))
    assert not changed                                  # nothing new: nothing is redrawn

    worse = eval_panel.rows_frame(job, session["eval"]["newest"], "got worse")
    assert worse["Tuned"].tolist() == ["yes", "yes"] and set(worse["Reference"]) == {"no"}
    changed_rows = eval_panel.rows_frame(job, session["eval"]["newest"], "changed")
    assert len(changed_rows) == 8                       # "Red." normalises to the base's "red"
    assert len(eval_panel.rows_frame(job, session["eval"]["newest"], "still wrong")) == 0

    path = eval_panel.answers_csv(job, "got worse")
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0].startswith("where,prompt,reference,base,tuned,change") and len(lines) == 3


def test_no_evaluation_yet_and_the_evaluate_button(home, tmp_path):
    job = _finished_job()
    session, _ = eval_panel.poll(jobview.new_session(job), api.get(job))
    box, card, jobs, rows = eval_panel.view(session)
    assert box["visible"] is True and "No evaluation yet" in card and len(rows) == 0
    note = eval_panel.start(job, "", 24)
    assert "queued as job" in note and "validation split" in note
    queued = api.list_jobs(kind="eval", parent=job)
    assert len(queued) == 1 and queued[0]["config"]["max_new_tokens"] == 24
    session, changed = eval_panel.poll(session, api.get(job))
    assert changed and "waiting for a worker" in eval_panel.view(session)[2]
    missing = eval_panel.start(job, str(tmp_path / "nope.jsonl"))
    assert "Cannot evaluate job" in missing and "does not exist" in missing
    assert "Pick a job first" in eval_panel.start(None, "")
    choices = eval_panel.data_choices()
    assert choices[0] == (eval_panel.SPLIT, "") and any("alpaca" in c[0] for c in choices)
    with pytest.raises(ValueError, match="no evaluation yet"):
        eval_panel.answers_csv(job)


def test_running_jobs_have_no_section_and_the_job_page_carries_it(home):
    job = _finished_job()
    _evaluated(job, BASE, TUNED, REFS)
    outputs = jobs_tab.select_job(job, jobview.new_session())
    n = jobs_tab.JOB_OUTPUTS + 4
    assert outputs[n]["visible"] is True and "exact match 40%" in outputs[n + 1]
    with store.connect() as db:
        running = store.new_id()
        store.insert_job(db, config={}, name="r", owner="local", priority=0, job_id=running)
        store.transition(db, running, "running")
    session, _ = eval_panel.poll(jobview.new_session(running), api.get(running))
    assert eval_panel.view(session)[0]["visible"] is False


def test_compare_shows_each_jobs_newest_evaluation_side_by_side(home):
    a, b = _finished_job(name="a"), _finished_job(name="b")
    _evaluated(a, BASE, TUNED, REFS)
    _evaluated(b, BASE, BASE, REFS)
    rows = eval_panel.compare_rows([a, b, "gone"])
    assert [r["Records"] for r in rows] == [10, 10]
    assert rows[0]["exact match"] == "40% \u2192 80%" and rows[1]["exact match"] == "40% \u2192 40%"
    plot, table = jobs_tab.compare([a, b])
    assert list(table["Job"]) == [r["Job"] for r in rows] and "BLEU" in table.columns


def test_another_owners_evaluation_is_not_there(home):
    job = _finished_job(owner="bob")
    _evaluated(job, BASE, TUNED, REFS)
    alice = {"username": "alice", "is_admin": 0}
    with pytest.raises(KeyError):          # JobNotFound, as for a missing id (a tick skips)
        eval_panel.poll(jobview.new_session(job), api.get(job), alice)
    with pytest.raises(KeyError):
        api.job_eval(job, actor=alice)
    assert eval_panel.compare_rows([job], alice) == []
    assert "Cannot evaluate job" in eval_panel.start(job, "", actor=alice)
    with pytest.raises(KeyError):
        eval_panel.answers_csv(job, actor=alice)


def test_every_n_evaluations_draw_a_live_curve_in_percent(home):
    with store.connect() as db:
        job = store.new_id()
        store.insert_job(db, config={}, name="every", owner="local", priority=0, job_id=job)
        store.transition(db, job, "running", attempt=1)
        for step, em in ((5, 0.25), (10, 0.75)):
            store.add_metrics(db, job, {"step": step, "loss": 1.0, "total_steps": 10},
                              attempt=1)
            store.add_metrics(db, job, {"step": step, "gen_exact_match": em,
                                        "gen_token_f1": em, "gen_chrf": 50.0}, attempt=1)
        store.publish_metrics(db, job, 10, attempt=1)
    session, changed, record = jobview.poll(jobview.new_session(job), job)
    gen = jobview.frames(session)["gen"]
    exact = gen[gen["series"] == "exact match"]
    assert exact["step"].tolist() == [5, 10] and exact["value"].tolist() == [25.0, 75.0]
    assert set(gen["series"]) == {"exact match", "token F1"}     # chrF is not a share
    outputs = jobs_tab._outputs(session, record)
    assert outputs[7]["visible"] is True and len(outputs[7]["value"]) == 4
    other = _finished_job()                  # no generation metrics: no chart
    plain, _, rec = jobview.poll(jobview.new_session(other), other)
    assert rec["id"] == other and jobs_tab._outputs(plain, rec)[7]["visible"] is False


def test_the_throughput_chart_shows_trained_and_all_tokens(home):
    with store.connect() as db:
        job = store.new_id()
        store.insert_job(db, config={}, name="rates", owner="local", priority=0, job_id=job)
        store.transition(db, job, "running", attempt=1)
        for step in (1, 2):
            store.add_metrics(db, job, {"step": step, "loss": 1.0, "tokens_per_s": 30.0,
                                        "total_tokens_per_s": 200.0, "total_steps": 2},
                              attempt=1)
        store.publish_metrics(db, job, 2, attempt=1)
    session, _, _ = jobview.poll(jobview.new_session(job), job)
    rates = jobview.frames(session)["tokens_per_s"]
    assert set(rates["series"]) == {"trained tokens/s", "all tokens/s"}
    assert rates[rates["series"] == "all tokens/s"]["value"].tolist() == [200.0, 200.0]

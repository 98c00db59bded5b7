"""The studio's distillation settings and "Make it smaller" section (app/studio/shrink_panel.py):
the form offers distill with its settings and their labels, and the section queues a prune job
or says why it cannot."""

from __future__ import annotations

from app.studio import form, shrink_panel


def test_the_form_offers_distillation_with_labelled_settings(tiny_model, examples):
    assert "distill" in form.widget_spec("train.objective")["choices"]
    keys = [k for k, objectives in form.OBJECTIVE_KEYS.items() if objectives == ("distill",)]
    assert keys == ["train.teacher", "train.distill_loss", "train.distill_temperature",
                    "train.distill_alpha", "train.gkd_beta", "train.teacher_topk_cache"]
    assert form.label_for("train.teacher") == "Teacher model"       # the field's label=
    assert form.label_for("train.teacher_topk_cache") == "Teacher top-k cache"
    assert form.widget_spec("train.distill_loss")["choices"] == ["forward_kl", "gkd"]
    values = dict(zip(form.FORM_KEYS, form.config_to_form(form.build_config({})[0])))
    values = form.form_to_values([values[k] for k in form.FORM_KEYS])
    values.update({"model.name": str(tiny_model), "data.train": str(examples / "alpaca.json"),
                   "train.objective": "distill", "train.teacher": str(tiny_model),
                   "train.teacher_topk_cache": "16"})
    cfg, problems = form.check_form(values)
    assert problems == [] and cfg.train.teacher_topk_cache == 16
    values["train.teacher"] = None
    assert [p.key for p in form.check_form(values)[1]] == ["train.teacher"]


def test_make_it_smaller_shows_for_finished_jobs_and_says_why_not(home):
    finished = {"kind": "train", "status": "completed", "config": {"method": {"kind": "lora"}}}
    assert shrink_panel.can_shrink(finished)
    assert not shrink_panel.can_shrink({**finished, "status": "running"})
    assert not shrink_panel.can_shrink({**finished, "config": {"method": {
        "kind": "prompt_tuning"}}})
    assert not shrink_panel.can_shrink(None)
    assert "Pick a job first" in shrink_panel.start("", "layers", "2", "layers", 0, "")
    said = shrink_panel.start("0123456789", "layers", "two", "layers", 0, "")
    assert "not a whole number" in said
    said = shrink_panel.start("0123456789", "layers", "2", "layers", 0, "")
    assert "Cannot make job 0123456789 smaller" in said and "source" in said


def test_the_section_lists_the_prune_jobs_of_the_job(home):
    from jobs import store

    with store.connect() as db:
        job = store.insert_job(db, config={"source_job": "aaaaaaaaaa", "name": "x-pruned"},
                               name="x-pruned", owner="local", priority=0, kind="prune")
        store.transition(db, job, "running")
        store.transition(db, job, "completed", result={
            "folder": str(home / "models" / "x-pruned"), "params_before": 1000,
            "params_after": 750, "heal_job": "bbbbbbbbbb"})
    listed = shrink_panel.made_from("aaaaaaaaaa")
    assert job in listed and "x-pruned: 750 of 1,000 parameters" in listed
    assert "healing job #bbbbbbbbbb" in listed and "completed" in listed
    assert shrink_panel.made_from("cccccccccc") == ""

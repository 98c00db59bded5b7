"""The studio's sweep handlers (app/studio/sweep_tab.py) without a browser: the Sweep toggle's
fields, the card's count, Start queueing a group, the group page's frames and actions."""

from __future__ import annotations

from app.studio import form, handlers, sweep_tab
from jobs import api, store, sweeps
from tests_paths import EXAMPLES


def fake_config() -> dict:
    """A valid config whose model is a stand-in folder under FTSTUDIO_HOME (nothing trains)."""
    folder = store.home() / "models" / "fake"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return {"model": {"name": str(folder)},
            "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128},
            "method": {"kind": "lora", "r": 8},
            "train": {"max_steps": 2, "lr": 3e-3, "batch_size": 4}}


def _values() -> dict:
    cfg = handlers.default_config()
    from engine.config import from_dict

    base = from_dict(fake_config())
    cfg.model.name, cfg.train.max_steps = base.model.name, 2
    return form.form_to_values(form.config_to_form(cfg))   # as the form sends them


def test_every_number_field_has_a_sweep_twin_and_the_toggle_swaps_them(home):
    assert {"train.lr", "method.r", "train.epochs", "train.max_steps"} <= set(
        sweep_tab.SWEEP_KEYS)
    assert "train.scheduler" not in sweep_tab.SWEEP_KEYS and "method.kind" not in \
        sweep_tab.SWEEP_KEYS
    values = {**_values(), "method.kind": "ia3"}
    n = len(sweep_tab.SWEEP_KEYS)
    updates = sweep_tab.toggled(True, values, [""] * n)
    fields, twins, start = updates[:n], updates[n:2 * n], updates[-1]
    assert all(f["visible"] is False for f in fields)
    by_key = dict(zip(sweep_tab.SWEEP_KEYS, twins))
    assert by_key["train.lr"]["visible"] and by_key["train.lr"]["value"] == str(values[
        "train.lr"])
    assert by_key["method.r"]["visible"] is False          # ia3 has no rank
    assert start["value"] == "▶ Start sweep"
    off = sweep_tab.toggled(False, values, ["x"] * n)
    assert dict(zip(sweep_tab.SWEEP_KEYS, off[:n]))["train.lr"]["visible"] is True
    assert all(t["visible"] is False and "value" not in t for t in off[n:2 * n])


def test_the_card_counts_the_jobs_and_start_queues_the_group(home):
    values = _values()
    texts = {"train.lr": "1e-3, 3e-3", "method.r": "4..8 step 4", "train.max_steps": "2"}
    card = sweep_tab.card(values, texts)
    assert "4 jobs" in card and "2 learning rate × 2 rank r" in card
    assert "time:" in card        # no finished run of this model measured its speed yet
    assert "two or more values" in sweep_tab.card(values, {"train.lr": "1e-3"})
    assert "ends below its start" in sweep_tab.card(values, {"method.r": "8..4"})

    sweep_id, problems = sweep_tab.start(values, {**texts, "train.batch_size": "0"}, "ui")
    assert sweep_id is None and any(p.key == "train.batch_size" and "every point" in p.message
                                    for p in problems)
    assert store.list_jobs(store.connect()) == []
    sweep_id, problems = sweep_tab.start(values, texts, "ui")
    assert problems == [] and len(sweeps.get(sweep_id)["jobs"]) == 4
    assert {j["config"]["train"]["max_steps"] for j in sweeps.get(sweep_id)["jobs"]} == {2}
    _, problems = sweep_tab.start(values, {"train.lr": "1e-3"}, "ui")
    assert [p.key for p in problems] == ["sweep"]


def test_the_group_page_frames_and_clone_the_best(home):
    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3"], name="page")
    a, b = (j["id"] for j in sw["jobs"])
    with store.connect() as db:
        for job_id, loss in ((a, 0.8), (b, 0.3)):
            store.transition(db, job_id, "running")
            store.add_metrics(db, job_id, {"step": 1, "loss": 1.0, "total_steps": 2}, attempt=0)
            store.add_metrics(db, job_id, {"step": 2, "loss": 0.9, "eval_loss": loss},
                              attempt=0)
            store.transition(db, job_id, "completed")
    header, board, metric, loss, ranked, cancel, resume, clone, tb, charts = \
        sweep_tab.view(sw["id"], "eval_loss")
    board, loss, ranked = board["value"], loss["value"], ranked["value"]
    loss_colors, ranked_colors = sweep_tab.colors(sw["id"], "eval_loss")
    assert set(loss_colors["color_map"]) == set(ranked_colors["color_map"]) == \
        {"page-1", "page-2"}                       # a colour per job: both drawn at once
    assert not cancel["interactive"] and not resume["interactive"] and clone["interactive"]
    assert "page" in header and "varies train.lr" in header
    assert list(board["Job"]) == [b, a] and list(board["eval_loss"]) == [0.3, 0.8]
    assert list(board.columns[-1:]) == ["train.lr"] and list(board["#"]) == [1, 2]
    assert metric["choices"] == ["eval_loss"]
    assert set(loss["job"]) == {"page-1", "page-2"} and set(ranked["job"]) == {"page-1",
                                                                               "page-2"}
    cloned = sweep_tab.best_values(sw["id"], "eval_loss")
    n = len(form.FORM_KEYS)
    assert cloned[n] == "page-2-copy"
    assert dict(zip(form.FORM_KEYS, cloned[:n]))["train.lr"] == 2e-3
    assert api.get(b)["status"] == "completed"


"""The Jobs tab's handlers as plain functions: incremental polling, charts, table, files."""

from __future__ import annotations

import os
import zipfile

import pytest

from app.studio import curves as charts, jobview
from jobs import api


class FakeApi:
    """jobs.api's shape, in memory: one record per step, events with ids."""

    def step_times(self, jobs):
        return {}           # no timed steps: the ETA counts from the start

    def __init__(self):
        self.jobs = {"a1": {"id": "a1", "name": "demo", "status": "running", "owner": "local",
                            "created_at": 1000.0, "started_at": 1000.0, "step": 0,
                            "total_steps": 10, "config": {"model": {"name": "m"},
                                                          "method": {"kind": "lora"}}}}
        self.records, self.events, self.calls = [], [], []

    def get(self, job_id, actor=None):
        if job_id not in self.jobs:
            raise KeyError(job_id)
        return self.jobs[job_id]

    def list_jobs(self, owner=None, status=None, kind=None, actor=None):
        return [j for j in self.jobs.values() if status in (None, j["status"])
                and kind in (None, j.get("kind", "train"))]

    def metrics(self, job_id, since_step=-1, actor=None):
        self.calls.append(since_step)
        return [r for r in self.records if r["step"] > since_step]

    def metric_buckets(self, job_id, points, names=None, actor=None):
        """jobs.api.metric_buckets' shape, every value a bucket of its own (short jobs)."""
        self.calls.append("buckets")
        out = {}
        for step, name, value in jobview.metric_rows(self.records):
            if names is None or name in names:
                one = {"step": step, "value": value}
                s = out.setdefault(name, {"buckets": [], "first": one})
                s["buckets"].append({"count": 1, "sum": value, "first_step": step,
                                     "last_step": step, "min": value, "min_step": step,
                                     "max": value, "max_step": step})
                s["last"] = one
        return {"width": 1, "metrics": out}

    def logs(self, job_id, since=0, actor=None):
        return [e for e in self.events if e["id"] > since]

    def step(self, n, eval_loss=None):
        rec = {"step": n, "loss": 3.0 / n, "lr": 1e-3, "tokens_per_s": 100.0 + n}
        if eval_loss is not None:
            rec["eval_loss"] = eval_loss
        self.records.append(rec)
        self.jobs["a1"]["step"] = n
        self.events.append({"id": len(self.events) + 1, "level": "info", "line": f"step {n}"})


@pytest.fixture()
def fake(monkeypatch):
    api = FakeApi()
    monkeypatch.setattr(jobview, "_api", lambda: api)
    return api


def test_poll_fetches_only_new_steps(fake):
    for n in range(1, 4):
        fake.step(n)
    session, changed, job = jobview.poll(None, "a1")
    assert changed and job["id"] == "a1" and session["since"] == 3
    assert fake.calls == ["buckets"]                # the first poll reads the curves so far
    fake.step(4, eval_loss=0.5)
    session, changed, _ = jobview.poll(session, "a1")
    assert changed and fake.calls[-1] == 2          # the last seen step again, then newer
    assert jobview.series(session, "eval_loss") == [(4, 0.5)]
    assert session["log"] == ["step 1", "step 2", "step 3", "step 4"]
    session, changed, _ = jobview.poll(session, "a1")
    assert not changed                              # nothing new: the tick skips its outputs


def test_switching_jobs_starts_a_new_session(fake):
    fake.step(1)
    session, _, _ = jobview.poll(None, "a1")
    session, changed, job = jobview.poll(session, "gone")
    assert session["job"] == "gone" and job is None and changed


def test_frames_have_raw_and_smoothed_loss(fake):
    for n in range(1, 6):
        fake.step(n, eval_loss=1.0 if n == 5 else None)
    session, _, job = jobview.poll(None, "a1")
    f = jobview.frames(session)
    assert set(f["loss"]["series"]) == {"raw", "smoothed", "eval"}   # train vs eval
    assert len(f["loss"]) == 11 and len(f["eval_loss"]) == 1 and len(f["tokens_per_s"]) == 5
    assert "step 5 of 10" in jobview.progress_html(session, job)


def test_smoothing_and_downsampling():
    assert charts.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    s = charts.smooth([1.0, 0.0] * 50)
    assert 0.4 < s[-1] < 0.6
    curve = charts.Curve(limit=100)
    for i in range(1, 10_001):
        curve.add(i, float(i))
    pts = curve.points()
    assert len(curve.buckets) <= 100 and len(pts) <= 202
    assert pts[0] == (1, 1.0) and pts[-1] == (10_000, 10_000.0)


def test_metric_rows_read_both_shapes():
    wide = [{"step": 3, "loss": 1.5, "lr": 0.1}]
    long = [{"step": 3, "name": "loss", "value": 1.5, "time": 9.0}]
    assert jobview.metric_rows(wide) == [(3, "loss", 1.5), (3, "lr", 0.1)]
    assert jobview.metric_rows(long) == [(3, "loss", 1.5)]


def test_table_and_choices(fake):
    fake.step(5)
    frame = jobview.table()
    row = frame.iloc[0].to_dict()
    assert row["ID"] == "a1" and "running" in row["Status"] and row["Progress"] == "50% · 5/10"
    assert row["Method"] == "lora"
    assert jobview.choices() == [("#a1 · demo · running", "a1")]
    assert jobview.pick_default(fake.list_jobs()) == "a1"
    assert jobview.pick_default(fake.list_jobs(), remembered="a1") == "a1"
    assert jobview.pick_default([], remembered="zz") is None


def test_job_paths_stay_inside_the_job_folder(home):
    job = {"id": "a1"}                     # a record without output_dir: FTSTUDIO_HOME/jobs/ID
    folder = api.path_in_job(job, "adapter").parent
    assert folder == (home / "jobs" / "a1").resolve()
    for bad in ("../a1", "..", "a1/../../etc", "/etc"):
        with pytest.raises(api.JobError):
            api.path_in_job(job, bad)
    with pytest.raises(api.JobError):
        api.path_in_job(job, "../other/config.yaml")


def test_downloads_zip_the_adapter_and_refuse_links_out(home, tmp_path, fake):
    adapter = home / "jobs" / "a1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 10)
    path = jobview.adapter_zip("a1")
    assert path.startswith(str((home / "jobs" / "a1").resolve()))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["adapter/adapter_config.json",
                                         "adapter/adapter_model.safetensors"]
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    os.symlink(secret, adapter / "leak.txt")
    with pytest.raises(api.JobError, match="leads outside job a1's folder"):
        jobview.adapter_zip("a1")


def test_bundle_and_csv(home, fake):
    folder = home / "jobs" / "a1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    (folder / "run.json").write_text("{}")
    with zipfile.ZipFile(jobview.bundle_zip("a1")) as zf:
        assert sorted(zf.namelist()) == ["config.yaml", "run.json"]
    fake.step(1)
    fake.step(2, eval_loss=0.7)
    text = open(jobview.metrics_csv("a1")).read().splitlines()
    assert text[0].startswith("step,loss") and text[2].endswith("0.7")
    with pytest.raises(FileNotFoundError):
        jobview.adapter_zip("a1")


def test_start_queues_a_real_job_and_the_tab_shows_it(home, tiny_model, examples):
    """Through the real jobs.api (no worker: the job stays queued)."""
    from app.studio import form, handlers, jobs_tab
    from engine.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = str(tiny_model), str(examples / "alpaca.json")
    values = form.form_to_values(form.config_to_form(cfg))
    job_id, problems = handlers.start_job({**values, "train.lr": -1}, "bad")
    assert job_id is None and [p.key for p in problems] == ["train.lr"]
    job_id, problems = handlers.start_job(values, "first run", owner="alice")
    assert problems == [] and isinstance(job_id, str)
    row = jobview.table().iloc[0].to_dict()
    assert row["ID"] == job_id and "queued" in row["Status"] and row["Owner"] == "alice"
    session, changed, job = jobview.poll(None, job_id)
    assert changed and job["status"] == "queued" and "queued" in session["log"][0]
    assert "first run" in jobview.header_html(job)
    cloned = jobs_tab.clone_values(job_id)
    filled = dict(zip(form.FORM_KEYS, cloned))
    assert filled["model.name"] == str(tiny_model) and cloned[len(form.FORM_KEYS)] == \
        "first run-copy"
    from jobs import api

    api.cancel(job_id)
    assert api.get(job_id)["status"] == "cancelled"
    api.delete(job_id)
    assert jobview.table().empty


def test_compare_overlays_smoothed_loss_per_job(fake):
    for n in range(1, 5):
        fake.step(n, eval_loss=0.9 if n == 4 else None)
    frame = jobview.compare_frame(["a1"])
    assert set(frame["job"]) == {"#a1 · demo", "#a1 · demo (eval)"}
    assert len(frame) == 5 and frame["loss"].dtype == "float64"

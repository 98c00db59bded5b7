"""The queue end to end: real worker processes (Huey consumers on SqliteHuey in a temp home),
real runner children, the tiny model and the real engine.

What each test proves is in its name. Tests that train for real take 10-40 s on 2 CPU cores;
those over 20 s are marked slow (CI runs them).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from jobs import api, store
from queue_helpers import fake_config, train_config, wait_for

DONE = ("completed", "failed", "cancelled", "interrupted")


def _status(job_id: str) -> str:
    return api.get(job_id)["status"]


def _wait_done(job_id: str, timeout: float = 120) -> dict:
    wait_for(lambda: _status(job_id) in DONE, timeout, what=f"job {job_id} to finish")
    return api.get(job_id)


def _loss_steps(job_id: str) -> list[int]:
    with store.connect() as db:
        return [r[0] for r in db.execute("SELECT step FROM metrics WHERE job_id = ? AND name = "
                                         "'loss' ORDER BY step, id", [job_id])]


def _runs(job_id: str) -> int:
    return sum(1 for e in api.logs(job_id) if e["level"] == "status" and e["line"] == "running")


def test_a_submitted_job_completes_with_its_metrics_in_the_store(workers, tiny_model):
    job = api.submit(train_config(tiny_model, max_steps=6), name="first")
    assert job["status"] == "queued"
    workers.start()
    done = _wait_done(job["id"])
    assert done["status"] == "completed", (done, workers.output())
    assert done["progress"] == 1.0 and done["step"] == 6 and done["total_steps"] == 6
    records = api.metrics(job["id"])
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "epoch"} <= set(records[0])
    assert any("eval_loss" in r for r in records)
    assert api.metrics(job["id"], since_step=4) == [r for r in records if r["step"] > 4]
    out = store.job_dir(job["id"])
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert done["adapter_dir"] == str(out / "adapter")
    assert [a["kind"] for a in done["artifacts"]] == ["adapter"]
    assert "loss" in done["result"]
    lines = [e["line"] for e in api.logs(job["id"])]
    assert lines[:2] == ["queued", "running"] and lines[-1] == "completed"
    assert any("training:" in ln for ln in lines)


def test_a_cancelled_queued_job_never_starts(workers):
    jobs = [api.submit(fake_config(), name=name) for name in ("keep-1", "drop", "keep-2")]
    assert api.cancel(jobs[1]["id"])["status"] == "cancelled"   # while no worker runs
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="3")
    for job in (jobs[0], jobs[2]):
        assert _wait_done(job["id"], 60)["status"] == "completed"
    time.sleep(1.0)
    dropped = api.get(jobs[1]["id"])
    assert dropped["status"] == "cancelled" and dropped["started_at"] is None
    assert _runs(jobs[1]["id"]) == 0 and dropped["attempt"] == 0


def test_cancel_of_a_running_job_checkpoints_and_stops_within_seconds(workers, tiny_model):
    job = api.submit(train_config(tiny_model, max_steps=400, save_every=1000, eval_every=0))
    workers.start()
    wait_for(lambda: api.get(job["id"])["step"] >= 2, 120, what="training to start")
    asked = time.monotonic()
    assert api.cancel(job["id"])["cancel_requested"] is True
    done = _wait_done(job["id"], 30)
    took = time.monotonic() - asked
    assert done["status"] == "cancelled", done
    assert took < 15, f"cancel took {took:.1f}s"
    steps = _loss_steps(job["id"])
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 400
    ckpts = list((store.job_dir(job["id"]) / "checkpoints").glob("step-*/state.json"))
    assert ckpts, "a cancelled job saves a checkpoint"
    assert "resume" in done["hint"]


def test_a_job_that_ignores_its_cancel_is_terminated_then_killed(workers):
    """A step that never ends (a hung kernel): after FTSTUDIO_CANCEL_GRACE the worker sends
    SIGTERM, after FTSTUDIO_KILL_AFTER SIGKILL, and the job ends cancelled."""
    job = api.submit(fake_config(max_steps=3))
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="3:60", FTSTUDIO_CANCEL_GRACE="1",
                  FTSTUDIO_KILL_AFTER="1")
    wait_for(lambda: _status(job["id"]) == "running" and api.get(job["id"])["pid"], 30,
             what="the job to start")
    asked = time.monotonic()
    api.cancel(job["id"])
    wait_for(lambda: _status(job["id"]) == "cancelled", 30, what="the forced cancel")
    assert time.monotonic() - asked < 10
    assert "stopped by force" in api.get(job["id"])["hint"]
    assert "sending SIGKILL" in workers.output()


def test_higher_priority_starts_first(workers):
    ids = {}
    for name, priority in (("low", 0), ("high", 10), ("mid", 5), ("low-2", 0)):
        ids[name] = api.submit(fake_config(), priority=priority, name=name)["id"]
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="2")
    for job_id in ids.values():
        assert _wait_done(job_id, 60)["status"] == "completed"
    order = sorted(ids, key=lambda n: api.get(ids[n])["started_at"])
    assert order == ["high", "mid", "low", "low-2"]


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_recovered_and_metrics_continue(workers, tiny_model):
    """SIGKILL the worker and its runner (a machine crash): the job is not left running; a new
    worker marks it interrupted, resumes it from the checkpoint, and steps 1..N appear once."""
    job = api.submit(train_config(tiny_model, max_steps=16, save_every=4, eval_every=4))
    first = workers.start()
    wait_for(lambda: api.get(job["id"])["step"] >= 7, 180, what="steps past a checkpoint")
    row = api.get(job["id"])
    first.send_signal(signal.SIGSTOP)      # both die at once: neither can record anything
    os.killpg(row["pid"], signal.SIGKILL)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _status(job["id"]) == "running"  # what a crash leaves behind
    workers.start()
    wait_for(lambda: _status(job["id"]) in ("completed", "failed"), 180, what="the resumed job")
    done = api.get(job["id"])
    assert done["status"] == "completed", (done, workers.output())
    assert done["attempt"] == 2
    assert _loss_steps(job["id"]) == list(range(1, 17))
    evals = [r["step"] for r in api.metrics(job["id"]) if "eval_loss" in r]
    assert evals == sorted(set(evals)) and evals[-1] == 16
    statuses = [e["line"].split(" ")[0] for e in api.logs(job["id"]) if e["level"] == "status"]
    assert statuses == ["queued", "running", "interrupted", "queued", "running", "completed"]
    assert any("resum" in e["line"] for e in api.logs(job["id"]))


def test_an_orphaned_runner_stops_itself_and_resumes_on_the_next_worker(workers):
    """SIGKILL only the worker: its runner notices, stops as interrupted, and a new worker
    resumes it to completion (fake engine: no checkpoints, so it starts over, still once)."""
    job = api.submit(fake_config(max_steps=40))
    first = workers.start(FTSTUDIO_TEST_FAKE_TRAIN="40:0.1")
    wait_for(lambda: api.get(job["id"])["step"] >= 3, 60, what="the fake run to start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: _status(job["id"]) == "interrupted", 30, what="the orphan to stop")
    assert api.get(job["id"])["resume_on_start"] is True
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="40:0.01")
    wait_for(lambda: _status(job["id"]) == "completed", 60, what="the resumed job to finish")
    assert api.get(job["id"])["attempt"] == 2
    assert _loss_steps(job["id"]) == list(range(1, 41))


def test_no_resume_leaves_interrupted_jobs_for_a_person(workers):
    job = api.submit(fake_config(max_steps=40))
    first = workers.start(FTSTUDIO_TEST_FAKE_TRAIN="40:0.1")
    wait_for(lambda: api.get(job["id"])["step"] >= 2, 60, what="the fake run to start")
    first.send_signal(signal.SIGTERM)  # a clean shutdown: the job checkpoints and stops
    first.wait(timeout=30)
    assert _status(job["id"]) == "interrupted"
    workers.start("--no-resume", FTSTUDIO_TEST_FAKE_TRAIN="40:0.01")
    time.sleep(3)
    assert _status(job["id"]) == "interrupted"
    api.resume(job["id"])
    assert _wait_done(job["id"], 60)["status"] == "completed"


@pytest.mark.slow
def test_failing_jobs_get_a_hint_and_the_worker_serves_the_next_one(workers, tiny_model,
                                                                    tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]')
    bad_data = train_config(tiny_model)
    bad_data["data"]["train"] = str(bad)
    ids = {
        "bad-data": api.submit(bad_data, name="bad-data", priority=4)["id"],
        "oom": api.submit(train_config(tiny_model), name="oom", priority=3)["id"],
        "killed": api.submit(train_config(tiny_model), name="killed", priority=2)["id"],
        "good": api.submit(train_config(tiny_model, max_steps=3), name="good", priority=1)["id"],
    }
    workers.start(FTSTUDIO_TEST_FAIL="oom:oom,kill:killed")
    wait_for(lambda: _status(ids["good"]) in DONE, 240, what="the last job")
    jobs = {name: api.get(job_id) for name, job_id in ids.items()}
    assert {n: j["status"] for n, j in jobs.items()} == {
        "bad-data": "failed", "oom": "failed", "killed": "failed", "good": "completed"}
    assert str(bad) in jobs["bad-data"]["hint"] and "output" in jobs["bad-data"]["error"]
    assert "OutOfMemoryError" in jobs["oom"]["error"]
    assert jobs["oom"]["hint"].startswith("out of memory: lower train.batch_size")
    assert "signal 9 (SIGKILL)" in jobs["killed"]["error"]
    assert "out of memory" in jobs["killed"]["hint"]
    assert "Traceback" in (store.job_dir(ids["oom"]) / "log.txt").read_text()
    assert workers.procs[0].poll() is None  # the worker is still up


@pytest.mark.slow
def test_fifty_jobs_submitted_from_threads_all_run_exactly_once(workers):
    from concurrent.futures import ThreadPoolExecutor

    cfg = fake_config()
    workers.start("--workers", "3", FTSTUDIO_TEST_FAKE_TRAIN="2")
    with ThreadPoolExecutor(max_workers=10) as pool:
        ids = list(pool.map(lambda i: api.submit(cfg, name=f"j{i}", priority=i % 3)["id"],
                            range(50)))
    assert len(set(ids)) == 50
    assert len(api.list_jobs()) == 50
    wait_for(lambda: all(_status(i) in DONE for i in ids), 240, every=1,
             what="all 50 jobs")
    jobs = api.list_jobs()
    assert {j["status"] for j in jobs} == {"completed"}
    assert {j["attempt"] for j in jobs} == {1}
    assert all(_runs(i) == 1 for i in ids)
    assert all(_loss_steps(i) == [1, 2] for i in ids)

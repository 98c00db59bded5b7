"""jobs.api, crash recovery and the task's helpers, without training (fast)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.config import ConfigError
from jobs import api, store, tasks, worker
from jobs.errors import OOM_HINT, explain_exception, explain_exit
from jobs.queue import get_huey
from queue_helpers import fake_config, wait_for
from tests_paths import ROOT


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_running(job_id: str, **fields) -> None:
    """Make a job look claimed by some worker (as a crash leaves it)."""
    with store.connect() as db:
        assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"),
                                hostname=tasks.HOST, started_at=store.now(), **fields)


def test_submit_refuses_a_bad_config_listing_every_problem(home):
    cfg = fake_config(lr=-1, batch_size=0, resume_from="latest")
    cfg["data"]["train"] = str(home / "missing.json")
    with pytest.raises(ConfigError) as err:
        api.submit(cfg)
    keys = {p.key for p in err.value.problems}
    assert {"train.lr", "train.batch_size", "data.train", "train.resume_from"} <= keys
    assert api.list_jobs() == []


def test_submit_records_a_queued_job_with_its_folder_and_absolute_paths(home, monkeypatch):
    cfg = fake_config()
    monkeypatch.chdir(ROOT)
    cfg["data"]["train"] = "static/examples/alpaca.json"
    job = api.submit(cfg, owner="ana", priority=3, name="first")
    assert (job["status"], job["owner"], job["priority"], job["name"]) == \
        ("queued", "ana", 3, "first")
    assert job["output_dir"] == str(home / "jobs" / job["id"])
    assert job["config"]["output_dir"] == job["output_dir"]
    assert job["config"]["data"]["train"] == str(ROOT / "static/examples/alpaca.json")
    assert tasks.queued_job_ids() == {job["id"]}
    assert [j["id"] for j in api.list_jobs(owner="ana", status="queued")] == [job["id"]]
    assert api.list_jobs(owner="bob") == [] and api.list_jobs(status="running") == []


def test_cancel_resume_clone_and_delete_follow_the_status(home):
    job = api.submit(fake_config(), name="base")
    assert api.cancel(job["id"])["status"] == "cancelled"
    with pytest.raises(store.JobError, match="already cancelled"):
        api.cancel(job["id"])
    resumed = api.resume(job["id"])
    assert resumed["status"] == "queued" and resumed["config"]["train"]["resume_from"] is None
    with pytest.raises(store.JobError, match="only interrupted, failed or cancelled"):
        api.resume(job["id"])
    copy = api.clone(job["id"], **{"train.lr": 1e-3}, method={"r": 4})
    assert copy["id"] != job["id"] and copy["name"] == "base-copy"
    assert copy["config"]["train"]["lr"] == 1e-3 and copy["config"]["method"]["r"] == 4
    assert copy["output_dir"] != job["output_dir"]
    with pytest.raises(ConfigError):
        api.clone(job["id"], bogus=1)
    _fake_running(job["id"])
    running = api.cancel(job["id"])
    assert running["status"] == "running" and running["cancel_requested"] is True
    with pytest.raises(store.JobError, match="cancel it first"):
        api.delete(job["id"])
    folder = store.job_dir(copy["id"])
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("x")
    assert api.delete(copy["id"]) == {"id": copy["id"], "deleted": True}
    assert not folder.exists()
    with pytest.raises(store.JobNotFound, match="no job"):
        api.get(copy["id"])


def test_resume_continues_from_the_newest_checkpoint_and_drops_later_metrics(home):
    job = api.submit(fake_config(max_steps=8))
    _fake_running(job["id"])
    with store.connect() as db:
        for step in range(1, 7):
            store.add_metrics(db, job["id"], {"step": step, "loss": 1.0}, attempt=1)
        store.transition(db, job["id"], "failed", error="boom")
    ckpts = store.job_dir(job["id"]) / "checkpoints"
    for name, complete in (("step-2", True), ("step-4", True), ("step-6", False)):
        (ckpts / name).mkdir(parents=True)
        if complete:
            (ckpts / name / "state.json").write_text("{}")
    resumed = api.resume(job["id"])
    assert resumed["config"]["train"]["resume_from"] == "latest"
    assert resumed["error"] is None and resumed["step"] == 4
    assert [r["step"] for r in api.metrics(job["id"])] == [1, 2, 3, 4]


def test_a_task_for_a_job_that_is_no_longer_queued_does_nothing(home):
    job = api.submit(fake_config())
    api.cancel(job["id"])
    tasks.run_job(job["id"])
    after = api.get(job["id"])
    assert after["status"] == "cancelled" and after["pid"] is None and after["attempt"] == 0


def test_recovery_interrupts_jobs_of_dead_workers_and_resumes_them(home, monkeypatch):
    job = api.submit(fake_config())
    get_huey().storage.flush_queue()
    _fake_running(job["id"], worker="gone", worker_pid=_dead_pid())
    monkeypatch.setenv("FTSTUDIO_AUTO_RESUME", "0")
    done = worker.recover()
    assert done == {"interrupted": [job["id"]], "resumed": [], "requeued": []}
    row = api.get(job["id"])
    assert row["status"] == "interrupted" and row["resume_on_start"] is True
    assert "is gone" in row["hint"]
    monkeypatch.setenv("FTSTUDIO_AUTO_RESUME", "1")
    assert worker.recover(auto_resume=False)["resumed"] == []
    assert worker.recover()["resumed"] == [job["id"]]
    assert api.get(job["id"])["status"] == "queued"
    assert tasks.queued_job_ids() == {job["id"]}


def test_recovery_leaves_live_workers_alone_and_interrupts_stale_remote_jobs(home, monkeypatch):
    live = api.submit(fake_config(), name="live")
    remote = api.submit(fake_config(), name="remote")
    stale = api.submit(fake_config(), name="stale")
    _fake_running(live["id"], worker="other", worker_pid=os.getppid())
    _fake_running(remote["id"], worker="far", worker_pid=1)
    _fake_running(stale["id"], worker="far", worker_pid=1)
    with store.connect() as db:
        store.update(db, remote["id"], hostname="elsewhere")
        store.update(db, stale["id"], hostname="elsewhere", updated_at=store.now() - 600)
    monkeypatch.setenv("FTSTUDIO_STALE_AFTER", "120")
    done = worker.recover(auto_resume=False)
    assert done["interrupted"] == [stale["id"]]
    assert "no heartbeat from elsewhere" in api.get(stale["id"])["hint"]
    assert api.get(live["id"])["status"] == api.get(remote["id"])["status"] == "running"


def test_recovery_checks_pids_only_in_the_worker_s_own_pid_namespace(home, monkeypatch):
    """Containers with host networking share the hostname, not their pids: a job claimed by a
    worker in another pid namespace is judged by its heartbeat, never by a pid here."""
    beating = api.submit(fake_config(), name="beating")
    silent = api.submit(fake_config(), name="silent")
    here = api.submit(fake_config(), name="here")
    elsewhere = f"{tasks.HOST}:{_dead_pid()}:abc123@4026000000"
    assert tasks.new_worker_id().endswith(f"@{tasks.PIDNS}") and tasks.PIDNS
    _fake_running(beating["id"], worker=elsewhere, worker_pid=_dead_pid())
    _fake_running(silent["id"], worker=elsewhere, worker_pid=_dead_pid())
    _fake_running(here["id"], worker=f"{tasks.HOST}:1:abc@{tasks.PIDNS}",
                  worker_pid=_dead_pid())
    with store.connect() as db:
        store.update(db, silent["id"], updated_at=store.now() - 600)
    monkeypatch.setenv("FTSTUDIO_STALE_AFTER", "120")
    assert sorted(worker.recover(auto_resume=False)["interrupted"]) == \
        sorted([silent["id"], here["id"]])
    assert api.get(beating["id"])["status"] == "running"
    assert "no heartbeat" in api.get(silent["id"])["hint"]
    assert "is gone" in api.get(here["id"])["hint"]


def test_recovery_does_not_resume_a_job_whose_cancel_was_pending(home):
    job = api.submit(fake_config())
    _fake_running(job["id"], worker="gone", worker_pid=_dead_pid())
    api.cancel(job["id"])  # asked to stop, but its worker had already crashed
    assert worker.recover()["resumed"] == []
    assert api.get(job["id"])["status"] == "cancelled"


def test_recovery_reenqueues_queued_jobs_missing_from_the_queue_once(home):
    job = api.submit(fake_config())
    get_huey().storage.flush_queue()  # e.g. the Redis queue was lost
    assert worker.recover()["requeued"] == [job["id"]]
    assert worker.recover()["requeued"] == []
    assert len(get_huey().pending()) == 1


def test_recovery_stops_an_orphaned_runner_before_anything_else_runs_the_job(home):
    job = api.submit(fake_config())
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               "jobs.runner", job["id"]], start_new_session=True)
    try:
        _fake_running(job["id"], worker="gone", worker_pid=_dead_pid(), pid=orphan.pid)
        worker.recover(auto_resume=False)
        assert orphan.wait(timeout=10) == -15  # SIGTERM
        assert api.get(job["id"])["status"] == "interrupted"
    finally:
        orphan.kill()


def test_child_commands_and_the_gpu_pool():
    assert tasks.child_command("abc")[1:] == ["-m", "jobs.runner", "abc"]
    assert tasks.child_command("abc", ["3"])[1:] == ["-m", "jobs.runner", "abc"]
    cmd = tasks.child_command("abc", ["0", "1"])
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-3:] == ["-m", "jobs.runner", "abc"]
    fsdp = tasks.child_command("abc", ["3"], distributed=True)  # FSDP needs the launch on 1 GPU
    assert fsdp[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in fsdp
    assert fsdp[fsdp.index("--num_processes") + 1] == "1"
    assert tasks.launched({"kind": "train", "config": {"parallel": {"strategy": "fsdp"}}})
    assert not tasks.launched({"kind": "export", "config": {"parallel": {"strategy": "fsdp"}}})
    assert tasks.gpus_wanted({"kind": "train", "config": {"parallel": {"gpus": 2}}}) == 2
    assert tasks.gpus_wanted({"kind": "train", "config": {}}) == 1
    assert tasks.gpus_wanted({"kind": "eval", "config": {"parallel": {"gpus": 4}}}) == 1
    pool = tasks.gpu_pool(["0", "1", "2", "3"])
    assert pool.take(2) == ["0", "1"] and pool.take(1) == ["2"]
    pool.put(["0", "1"])
    assert pool.take(3) == ["0", "1", "3"]
    pool.put(["2"])
    with pytest.raises(RuntimeError, match="returned twice"):
        pool.put(["2"])
    assert tasks.gpu_pool(None) is None
    with pytest.raises(ValueError, match="asks for 5 GPUs .* this worker has 4"):
        pool.take(5)
    env = tasks.child_env({"attempt": 3}, ["1"])
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["FTSTUDIO_JOB_ATTEMPT"] == "3"
    assert worker.parse_gpus("0, 1") == ["0", "1"] and worker.parse_gpus("") is None
    with pytest.raises(ValueError):
        worker.parse_gpus("cuda:0")


def test_errors_become_an_error_line_and_a_hint(tmp_path):
    import torch

    from engine.data import DataError

    error, hint = explain_exception(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))
    assert error.startswith("OutOfMemoryError: CUDA out of memory") and hint == OOM_HINT
    error, hint = explain_exception(DataError("line 3: field 'output' is missing"), "d.json")
    assert "line 3" in error and hint.startswith("fix d.json")
    error, hint = explain_exit(-9)
    assert "signal 9 (SIGKILL)" in error and "OOM killer" in hint
    assert "native code" in explain_exit(-11)[1]
    log = tmp_path / "log.txt"
    log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    assert explain_exit(1, log) == ("RuntimeError: boom", f"the traceback is in {log}")


def test_embedded_worker_runs_jobs_and_its_stop_interrupts_them_for_later(home, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_TEST_FAKE_TRAIN", "200:0.05")
    handle = worker.start_embedded_worker()
    job = api.submit(fake_config())
    try:
        wait_for(lambda: api.get(job["id"])["step"] >= 2, 30, what="the job to start")
    finally:
        handle.stop()
    stopped = api.get(job["id"])
    assert stopped["status"] == "interrupted" and stopped["resume_on_start"] is True
    monkeypatch.setenv("FTSTUDIO_TEST_FAKE_TRAIN", "200")
    handle = worker.start_embedded_worker()
    try:
        wait_for(lambda: api.get(job["id"])["status"] == "completed", 60, what="the resumed job")
    finally:
        handle.stop()
    assert api.get(job["id"])["attempt"] == 2
    assert [r["step"] for r in api.metrics(job["id"])] == list(range(1, 201))
    assert time.time() - api.get(job["id"])["finished_at"] < 60


def test_the_gpu_pool_serves_jobs_in_turn_and_never_hands_a_gpu_twice():
    """A 2-GPU job waits while one GPU is busy; a 1-GPU job asking after it waits behind it
    (no starvation), though a GPU is free; no GPU is ever held twice."""
    import threading

    pool, held, got, lock = tasks.gpu_pool(["0", "1"]), set(), {}, threading.Lock()

    def job(name: str, n: int, release: threading.Event) -> None:
        gpus = pool.take(n, poll_s=0.01)
        with lock:
            assert not held & set(gpus), f"{name} got {gpus} while {held} are held"
            held.update(gpus)
            got[name] = gpus
        release.wait(10)
        with lock:
            held.difference_update(gpus)
        pool.put(gpus)

    done = {name: threading.Event() for name in "abc"}
    threads = {name: threading.Thread(target=job, args=(name, n, done[name]))
               for name, n in (("a", 1), ("b", 2), ("c", 1))}
    threads["a"].start()
    wait = lambda cond: [time.sleep(0.01) for _ in range(500) if not cond()]  # noqa: E731
    wait(lambda: "a" in got)
    threads["b"].start()
    wait(lambda: len(pool.waiting) == 1)
    threads["c"].start()
    wait(lambda: len(pool.waiting) == 2)
    time.sleep(0.1)
    assert got == {"a": ["0"]} and pool.free == ["1"]   # b waits; c waits behind b
    assert "1 of 2 GPUs free, 2 job(s) waiting" == pool.describe()
    done["a"].set()
    wait(lambda: "b" in got)
    assert got["b"] == ["0", "1"] and "c" not in got
    done["b"].set()
    wait(lambda: "c" in got)
    done["c"].set()
    for t in threads.values():
        t.join(5)
    assert got["c"] == ["0"] and pool.free == ["0", "1"]

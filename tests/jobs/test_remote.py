"""Remote workers (`ftstudio worker --remote`, jobs/remote.py) report through a real
redis-server to the studio's machine (jobs/owner.py), and never open studio.db or queue.db.

Each test runs a real owner process (`python -m jobs.owner`, the loop `ftstudio serve` runs in a
thread) on the studio's FTSTUDIO_HOME, and real remote worker processes whose FTSTUDIO_HOME is
another folder holding only the shared files (jobs/, models/, datasets/, cache/ linked to the
studio's): studio.db is not there to open.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import api, store
from queue_helpers import fake_config, train_config, wait_for
from test_redis import redis_url  # noqa: F401 - the fixture: a real redis-server
from tests_paths import ROOT

SHARED = ("jobs", "models", "datasets", "cache")


class Machines:
    """The owner process and remote workers of one test; everything is killed after it."""

    def __init__(self, home: Path, tmp: Path, url: str):
        self.home, self.tmp, self.url = home, tmp, url
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def remote_home(self, name: str) -> Path:
        """A FTSTUDIO_HOME holding the studio's shared folders, and no studio.db."""
        folder = self.tmp / name
        folder.mkdir()
        for sub in SHARED:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub).symlink_to(self.home / sub, target_is_directory=True)
        return folder

    def _start(self, name: str, args: list[str], home: Path, **env: str) -> subprocess.Popen:
        full = {**os.environ, "FTSTUDIO_HOME": str(home), "FTSTUDIO_REDIS_URL": self.url,
                "PYTHONUNBUFFERED": "1", **env}
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(args, cwd=ROOT, env=full, stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def owner(self, **env: str) -> subprocess.Popen:
        return self._start("owner", [sys.executable, "-m", "jobs.owner"], self.home, **env)

    def remote_worker(self, home: Path, *, trace: Path | None = None, **env: str
                      ) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "jobs.worker", "--remote"]
        if trace is not None:
            cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=openat,open,creat",
                   "-o", str(trace)] + cmd
        return self._start("remote", cmd, home, **env)

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:]
                         for p in self.logs if p.exists())

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in _runner_pids(self.tmp):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _runner_pids(tmp: Path, job_id: str = "") -> list[int]:
    """Runner children of this test (their FTSTUDIO_HOME is under its tmp folder or home)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            environ = (cmdline.parent / "environ").read_bytes()
        except OSError:
            continue
        if b"jobs.runner" in args and (not job_id or job_id.encode() in args) and \
                f"FTSTUDIO_HOME={tmp}".encode() in environ:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.fixture()
def machines(home, tmp_path, redis_url):  # noqa: F811
    home.mkdir(parents=True, exist_ok=True)
    m = Machines(home, tmp_path, redis_url)
    yield m
    m.stop_all()


def _done(job_id: str, timeout: float, machines: Machines) -> dict:
    wait_for(lambda: api.get(job_id)["status"] in store.FINISHED, timeout,
             what=f"job {job_id} to finish\n{machines.output()}")
    job = api.get(job_id)
    if job["status"] != "completed":  # what the assertion will show
        log = store.folder_of(job) / "log.txt"
        print(job["error"], job["hint"], log.read_text()[-3000:] if log.exists() else "")
    return job


@pytest.mark.e2e
def test_a_remote_worker_trains_evaluates_and_exports_without_opening_the_database(
        machines, tiny_model, tmp_path):
    remote = machines.remote_home("gpu-box")
    trace = tmp_path / "openat.txt"
    job = api.submit(train_config(tiny_model, max_steps=4, eval_every=2, save_every=2),
                     name="remote")
    machines.owner()
    machines.remote_worker(remote, trace=trace, FTSTUDIO_TRAIN_ENTRY="")
    done = _done(job["id"], 240, machines)
    assert done["status"] == "completed", (done, machines.output())
    assert done["worker"].startswith("remote:") and done["pid"] is None
    assert [r["step"] for r in api.metrics(job["id"]) if "loss" in r] == [1, 2, 3, 4]
    assert any("eval_loss" in r for r in api.metrics(job["id"]))
    assert any("fake" not in e["line"] and "step" in e["line"] for e in api.logs(job["id"]))
    assert [a["kind"] for a in api.artifacts(job["id"])] == ["adapter"]

    ev = api.evaluate(job["id"], max_new_tokens=4, max_records=2)
    ex = api.export(job["id"], "adapter", verify=False)
    for queued in (ev, ex):
        finished = _done(queued["id"], 240, machines)
        assert finished["status"] == "completed", (finished, machines.output())
    evaluation = api.job_eval(job["id"])
    assert evaluation["eval"]["n"] == 2 and evaluation["eval"]["eval_job"] == ev["id"]
    assert len(evaluation["rows"]) == 2
    exported = [a for a in api.artifacts(job["id"]) if a["kind"] == "export"]
    assert exported and all(a["path"].startswith("exports/adapter/") for a in exported)
    assert api.get(ex["id"])["result"]["files"] == len(exported)

    machines.stop_all()
    opened = trace.read_text(errors="replace")
    assert "jobs/runner" in opened or "jobs.runner" in opened or "runner.py" in opened
    assert "studio.db" not in opened and "queue.db" not in opened
    assert not (remote / "studio.db").exists() and not (remote / "queue.db").exists()


def _metrics_jsonl(job_id: str) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for line in (store.job_dir(job_id) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(
            {k: v for k, v in record.items() if k not in ("total_steps",)
             and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return steps


@pytest.mark.e2e
def test_the_owner_killed_mid_job_loses_no_metric_and_duplicates_none(machines, tiny_model):
    remote = machines.remote_home("gpu-box")
    job = api.submit(train_config(tiny_model, max_steps=40, eval_every=10, save_every=100),
                     name="survivor")
    owner = machines.owner()
    machines.remote_worker(remote, FTSTUDIO_TRAIN_ENTRY="")
    wait_for(lambda: api.get(job["id"])["step"] >= 5, 180,
             what=f"the first steps\n{machines.output()}")
    os.killpg(owner.pid, signal.SIGKILL)
    owner.wait()
    killed_at = api.get(job["id"])["step"]
    jsonl = store.job_dir(job["id"]) / "metrics.jsonl"
    wait_for(lambda: jsonl.is_file() and len(_metrics_jsonl(job["id"])) >= killed_at + 5, 120,
             what="training to go on without the owner")
    assert api.get(job["id"])["status"] == "running"
    machines.owner()
    done = _done(job["id"], 240, machines)
    assert done["status"] == "completed", (done, machines.output())
    stored = {r["step"]: r for r in api.metrics(job["id"])}
    written = _metrics_jsonl(job["id"])
    assert sorted(stored) == sorted(written) == list(range(1, 41))
    for step, record in written.items():
        assert {k: stored[step].get(k) for k in record} == record, step
    with store.connect() as db:  # one row per (step, name): nothing persisted twice
        dup = db.execute("SELECT COUNT(*) FROM (SELECT step, name FROM metrics WHERE job_id = ? "
                         "GROUP BY step, name HAVING COUNT(*) > 1)", [job["id"]]).fetchone()[0]
    assert dup == 0


@pytest.mark.e2e
def test_two_remote_workers_on_one_hostname_keep_their_own_jobs(machines):
    """Same hostname (one machine here, as with host networking): each takes its own job; one
    worker's machine dying (worker and runner SIGKILLed) interrupts only its job, after the
    heartbeat timeout, and the other worker resumes it."""
    fast = {"FTSTUDIO_TEST_FAKE_TRAIN": "30:0.2", "FTSTUDIO_STALE_AFTER": "3"}
    ids = [api.submit(fake_config(max_steps=30), name=f"j{i}")["id"] for i in range(2)]
    machines.owner(FTSTUDIO_STALE_AFTER="3")
    a = machines.remote_worker(machines.remote_home("box-a"), **fast)
    machines.remote_worker(machines.remote_home("box-b"), **fast)
    wait_for(lambda: all(api.get(i)["status"] == "running" for i in ids), 60,
             what=f"both jobs running\n{machines.output()}")
    rows = {i: api.get(i) for i in ids}
    assert rows[ids[0]]["hostname"] == rows[ids[1]]["hostname"]
    assert rows[ids[0]]["worker"] != rows[ids[1]]["worker"]
    victim = next(i for i in ids if str(a.pid) in rows[i]["worker"].split(":"))
    survivor = next(i for i in ids if i != victim)
    os.killpg(a.pid, signal.SIGKILL)  # the machine dies: worker and runner
    for pid in _runner_pids(machines.tmp, victim):
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: api.get(victim)["attempt"] == 2, 60,
             what=f"the dead worker's job to resume elsewhere\n{machines.output()}")
    first = _done(survivor, 60, machines)
    second = _done(victim, 60, machines)
    assert first["status"] == second["status"] == "completed", machines.output()
    assert first["attempt"] == 1  # never "recovered" by anyone
    assert second["worker"] != rows[victim]["worker"]
    hints = [e["line"] for e in api.logs(victim)]
    assert any("fake training" in h for h in hints)


@pytest.mark.e2e
def test_a_cancel_and_a_successive_halving_reach_remote_jobs(machines):
    """Commands the other way: a person's cancel stops a remote job at its next step; a halving
    sweep's jobs pause remotely at the rung, the owner decides it, and the kept half
    continues on a remote worker."""
    from jobs import sweeps

    fake = {"FTSTUDIO_TEST_FAKE_TRAIN": "8:0.3"}
    machines.owner()
    machines.remote_worker(machines.remote_home("box"), **fake)
    long = api.submit(fake_config(max_steps=8), name="long")
    wait_for(lambda: api.get(long["id"])["step"] >= 2, 60,
             what=f"the job to train\n{machines.output()}")
    api.cancel(long["id"])
    done = _done(long["id"], 60, machines)
    assert done["status"] == "cancelled" and "stopped at step" in done["hint"], done
    assert done["step"] < 8

    sw = sweeps.submit(fake_config(max_steps=8, eval_every=4),
                       ["train.lr=1e-3,3e-3"], halving_steps=[4], name="sh")
    ids = {j["config"]["train"]["lr"]: j["id"] for j in sw["jobs"]}
    for job_id in ids.values():
        wait_for(lambda i=job_id: api.get(i)["status"] in ("completed", "cancelled"), 120,
                 what=f"the sweep\n{machines.output()}")
    jobs = {lr: api.get(i) for lr, i in ids.items()}
    assert jobs[3e-3]["status"] == "completed" and jobs[3e-3]["step"] == 8
    assert jobs[1e-3]["status"] == "cancelled"
    assert "cut by successive halving at step 4" in jobs[1e-3]["hint"]


def _redis(server: str, port: int, folder: Path) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 10, what="redis-server")
    return proc


def _pings(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.e2e
def test_a_redis_restart_with_its_append_only_file_loses_nothing(home, tmp_path, monkeypatch):
    from test_redis import _free_port

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port, folder = _free_port(), tmp_path / "redis"
    folder.mkdir()
    redis_proc = _redis(server, port, folder)
    url = f"redis://127.0.0.1:{port}/0"
    monkeypatch.setenv("FTSTUDIO_REDIS_URL", url)
    home.mkdir(parents=True, exist_ok=True)
    machines = Machines(home, tmp_path, url)
    try:
        job = api.submit(fake_config(max_steps=30), name="through-a-restart")
        machines.owner()
        machines.remote_worker(machines.remote_home("box"), FTSTUDIO_TEST_FAKE_TRAIN="30:0.2")
        wait_for(lambda: api.get(job["id"])["step"] >= 5, 90,
                 what=f"the first steps\n{machines.output()}")
        redis_proc.terminate()  # writes its append-only file and stops
        redis_proc.wait(timeout=30)
        time.sleep(2)  # the job goes on meanwhile, holding its events until Redis is back
        redis_proc = _redis(server, port, folder)
        done = _done(job["id"], 120, machines)
        assert done["status"] == "completed", (done, machines.output())
        assert [r["step"] for r in api.metrics(job["id"]) if "loss" in r] == list(range(1, 31))
        with store.connect() as db:
            rows = db.execute("SELECT COUNT(*) FROM metrics WHERE job_id = ? AND name = 'loss'",
                              [job["id"]]).fetchone()[0]
        assert rows == 30
    finally:
        machines.stop_all()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)

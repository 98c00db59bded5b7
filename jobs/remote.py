"""Remote workers' side of the road through Redis: what a worker on another machine (`ftstudio
worker --remote`) and its runner children send to the machine that owns studio.db, and what
they read back. Nothing here opens studio.db or queue.db; the owner's side is jobs/owner.py.

Use from Python (jobs/tasks.py and jobs/runner.py pick these when the worker is remote):
    link = RemoteLink(url)                 # the worker: claim, cancel state, a child's exit
    job = link.claim(job_id, worker_id)    # None: not ours (no longer queued, or no owner)
    reporter = RedisReporter(job, attempt) # the runner child: jobs/reporting.py's shape

The road, all keys under "ftstudio:":
- events      one stream (STREAM): each remote write is an event {"type", "job", ...} added
              with XADD; the owner reads it with XREADGROUP, persists it through the same
              jobs.store functions the local reporter calls, then XACKs it. An event leaves
              the stream's pending list only once persisted: an owner killed mid-way reads
              its pending events again when it restarts (jobs/owner.py).
- job:<id>    a hash the owner keeps current for each job a remote worker runs: status,
              attempt, cancel, cancel_at. The commands the other way (a cancel, a newer
              attempt after a resume) are read from it; halving decisions and resumes queue
              the job again on the Huey queue, which remote workers consume.
- alive:<id>  set by the runner child's heartbeat with a time to live of FTSTUDIO_STALE_AFTER:
              the owner marks a remote job interrupted when it lapses (jobs/owner.py).
- reply:<token>  the owner's answer to one claim (a list the worker blocks on).

Paths travel relative to FTSTUDIO_HOME (`jobs/ID/adapter`), so each machine may mount the shared
files folder where it likes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jobs import settings, store
from jobs.endings import End
from jobs.redact import redact

PREFIX = "ftstudio:"
STREAM = PREFIX + "events"
GROUP = "owner"
REMOTE_JOBS = PREFIX + "remote-jobs"
HEARTBEAT_S = 5.0
CHECK_EVERY_S = 0.5
CLAIM_WAIT_S = 30.0
#: how long an event waits for Redis to come back before the runner gives up
RETRY_S = 600.0
HOST = socket.gethostname()
#: the stream's length the owner trims to (approximately); far more than a backlog needs
MAXLEN = 1_000_000


def client(url: str | None = None):
    import redis

    url = url or settings.redis_url()
    if not url:
        raise ValueError("a remote worker needs FTSTUDIO_REDIS_URL (redis://host:6379/0): the "
                         "queue and the road to the studio's machine go through Redis")
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def state(r, job_id: str) -> dict[str, str]:
    """The owner's view of a job (job:<id>: status, attempt, cancel, cancel_at); empty when
    Redis is away for a moment (a restart) or the owner has said nothing yet: no news, so the
    job goes on."""
    import redis

    try:
        return r.hgetall(job_key(job_id)) or {}
    except (redis.ConnectionError, redis.TimeoutError):
        return {}


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def alive_key(job_id: str) -> str:
    return f"{PREFIX}alive:{job_id}"


def send(r, event_type: str, job_id: str, /, **data: Any) -> str:
    """Add one event to the stream; returns its id. Redis away (restarting): wait and retry
    for up to RETRY_S, so a restart loses nothing and the job goes on."""
    import redis

    event = {"type": event_type, "job": job_id, "t": time.time(), **data}
    fields = {"e": json.dumps(event, ensure_ascii=False)}
    deadline, pause = time.monotonic() + RETRY_S, 0.2
    while True:
        try:
            return r.xadd(STREAM, fields)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"Redis unreachable for {RETRY_S:.0f}s ({exc}); the job "
                                      "cannot report to the studio's machine") from exc
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def relative(path: str | os.PathLike | None) -> str | None:
    """A path under FTSTUDIO_HOME as it travels (relative to it); other paths as they are."""
    if path is None:
        return None
    p = Path(os.path.normpath(path))
    if not p.is_absolute():
        return str(path)
    home = Path(os.path.normpath(store.home().absolute()))
    for inside, top in ((p, home), (p.resolve(), home.resolve())):  # as named, then real
        if inside.is_relative_to(top):
            return inside.relative_to(top).as_posix()
    return str(path)


def local(path: str | None) -> Path | None:
    """A travelled path on this machine: relative ones under this machine's FTSTUDIO_HOME."""
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else store.home() / p


def portable(row: dict[str, Any]) -> dict[str, Any]:
    """A job row with its folder relative to FTSTUDIO_HOME (for the other machine)."""
    return {**row, "output_dir": relative(row.get("output_dir"))}


def localized(row: dict[str, Any]) -> dict[str, Any]:
    """A travelled job row with its folder on this machine."""
    folder = local(row.get("output_dir"))
    return {**row, "output_dir": str(folder) if folder else None}


# --------------------------------------------------------------------------- the worker's link


class RemoteLink:
    """What the queue's task (jobs/tasks.py) asks the studio's machine, through Redis."""

    remote = True

    def __init__(self, url: str | None = None):
        self.url = url or settings.redis_url()
        self.r = client(self.url)
        self._beating: dict[str, threading.Event] = {}

    def claim(self, job_id: str, worker_id: str, stopping: threading.Event | None = None
              ) -> dict[str, Any] | None:
        """Ask the owner to claim `job_id` for this worker (queued -> running, decided by
        store.transition there); the job as it now is (with "parents" and "rungs"), or None
        when it is not to run here. Raises TimeoutError when no owner answers."""
        token = os.urandom(8).hex()
        reply = f"{PREFIX}reply:{token}"
        deadline = time.time() + CLAIM_WAIT_S
        send(self.r, "claim", job_id, worker=worker_id, hostname=HOST, reply=reply,
             deadline=deadline)
        while time.time() < deadline:
            got = self.r.blpop([reply], timeout=1)
            if got:
                answer = json.loads(got[1])
                if not answer.get("ok"):
                    return None
                job = localized(answer["job"])
                job["parents"] = {k: localized(v) for k, v in answer["parents"].items()}
                job["rungs"] = answer.get("rungs") or []
                return job
            if stopping is not None and stopping.is_set():
                break
        raise TimeoutError(f"no answer from the studio's machine within {CLAIM_WAIT_S:.0f}s "
                           f"(is `ftstudio serve` or a local `ftstudio worker` running against "
                           f"{describe(self.url)}?)")

    def still_queued(self, job_id: str) -> bool:
        return True  # the owner's claim decides; a duplicate task is harmless

    def queued_since(self, job_id: str) -> float | None:
        return None  # the queue keeps the first time a job was queued (jobs.queue)

    def started(self, job: dict[str, Any], pid: int, gpus: list[str] | None = None) -> None:
        """The child runs (its pid means nothing to the owner): keep the job's heartbeat in
        Redis from this worker until exited(), also while the child starts up or stops."""
        done = threading.Event()
        self._beating[job["id"]] = done
        beat_loop(self.r, job["id"], job["attempt"], done)

    def worker_error(self, job: dict[str, Any], exc: Exception) -> None:
        send(self.r, "end", job["id"], attempt=job["attempt"], status="failed", fields={
            "error": f"worker error: {type(exc).__name__}: {exc}",
            "hint": f"see the remote worker's output on {HOST}; `ftstudio jobs resume "
                    f"{job['id']}` tries again"})

    def cancel_state(self, job: dict[str, Any]) -> tuple[bool, float | None]:
        now = state(self.r, job["id"])
        at = now.get("cancel_at")
        return now.get("cancel") == "1", float(at) if at else None

    def exited(self, job: dict[str, Any], code: int, stopping: bool, log_path: Path) -> None:
        """The child ended: the owner records the end if the child did not (jobs.endings)."""
        done = self._beating.pop(job["id"], None)
        if done is not None:
            done.set()
        send(self.r, "exited", job["id"], attempt=job["attempt"], code=code,
             stopping=stopping, log=relative(log_path))

    def child_env(self, job: dict[str, Any]) -> dict[str, str]:
        """What the runner child needs to run the job without the database."""
        return {"FTSTUDIO_REMOTE_JOB": json.dumps(job)}


def describe(url: str) -> str:
    return "redis " + (url.split("@")[-1] if "@" in url else url.removeprefix("redis://"))


# --------------------------------------------------------------------------- the runner's sink


class RedisReporter:
    """jobs/reporting.py's reporter shape, sending everything as events to the owner."""

    def __init__(self, job: dict, attempt: int, *, main: bool = True,
                 worker_pid: int | None = None, url: str | None = None):
        self.job = job
        self.job_id, self.name, self.attempt, self.main = job["id"], job["name"], attempt, main
        self.worker_pid = worker_pid
        self.r = client(url)
        self.last_step = 0
        self.total_steps: int | None = None
        self.stop_reason: str | None = None
        self.rung: int | None = None
        self._checked = 0.0

    def _send(self, event_type: str, job_id: str | None = None, /, **data: Any) -> None:
        if self.main:
            send(self.r, event_type, job_id or self.job_id, attempt=self.attempt, **data)

    def on_metrics(self, record: dict[str, Any]) -> None:
        self.total_steps = record.get("total_steps") or self.total_steps
        step = int(record["step"])
        self._send("metrics", record=record, total_steps=self.total_steps)
        if step > self.last_step:
            if self.last_step:
                self._send("publish", step=self.last_step)
            self.last_step = step

    def on_log(self, line: str) -> None:
        line = redact(line)
        print(line, flush=True)
        self._send("log", line=line)

    def should_stop(self) -> bool:
        from jobs.reporting import pid_alive

        if self.rung is not None and self.stop_reason is None and self.last_step >= self.rung:
            self.stop_reason = "rung"
        now = time.monotonic()
        if self.stop_reason is None and now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            now_known = state(self.r, self.job_id)
            if now_known and (now_known.get("status") != "running"
                              or int(now_known.get("attempt") or 0) != self.attempt):
                self.stop_reason = "superseded"
            elif now_known.get("cancel") == "1":
                self.stop_reason = "cancel"
            elif self.worker_pid and not pid_alive(self.worker_pid):
                self.stop_reason = "orphaned"
            elif self.last_step:
                self._send("publish", step=self.last_step)
        return self.stop_reason is not None

    @property
    def owns(self) -> bool:
        return self.main and self.stop_reason != "superseded"

    def cancel_requested(self) -> bool:
        return state(self.r, self.job_id).get("cancel") == "1"

    def stage_done(self) -> None:
        self._send("stage")

    def resumed_at(self, step: int) -> int:
        self.last_step = step
        self._send("resumed", step=step)
        return 0  # the owner drops the rows past it (and logs nothing more)

    def job_row(self, job_id: str) -> dict[str, Any]:
        try:
            return self.job["parents"][job_id]
        except KeyError:
            raise store.JobNotFound(f"job {job_id} was not sent with this job's claim") \
                from None

    def add_artifact(self, kind: str, path: str | os.PathLike) -> None:
        self._send("artifact", kind=kind, path=relative(path))

    def replace_exports(self, parent_id: str, fmt: str, files: list[tuple[Path, int]],
                        meta: dict | None = None) -> None:
        if self.owns:
            self._send("exports", parent_id, fmt=fmt, meta=meta,
                       files=[(relative(p), int(size)) for p, size in files])

    def add_eval(self, job_id: str, record: dict[str, Any], *, kind: str,
                 path: str | os.PathLike, eval_job: str | None = None) -> int | None:
        if self.owns:
            self._send("eval", job_id, record=record, kind=kind, path=relative(path),
                       eval_job=eval_job)
        return None  # the id is the owner's; the job page finds the evaluation by its job

    def next_rung(self) -> None:
        if self.main:
            self.rung = next((s for s in sorted(self.job.get("rungs") or [])
                              if s > self.last_step), None)

    def left_race(self, paused_at: int | None = None) -> None:
        self._send("halving", paused_at=paused_at)

    def end(self, end: End, **fields: Any) -> bool:
        return self.finish(end.status, **end.fields(), **fields)

    def finish(self, status: str, **fields: Any) -> bool:
        if not self.owns:
            return False
        fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        self._send("end", status=status, fields=fields)
        return True

    def start_heartbeat(self) -> None:
        if self.main:
            beat_loop(client(), self.job_id, self.attempt, threading.Event())


def beat_loop(r, job_id: str, attempt: int, done: threading.Event) -> None:
    """From a thread until `done`: refresh alive:<id> (time to live FTSTUDIO_STALE_AFTER) and
    send a beat event (the owner writes jobs.updated_at), several times within the TTL."""
    ttl = max(1, int(settings.stale_after_s()))
    every = min(HEARTBEAT_S, ttl / 3)

    def beat() -> None:
        while not done.is_set():
            try:
                r.set(alive_key(job_id), attempt, ex=ttl)
                send(r, "beat", job_id, attempt=attempt)
            except Exception as exc:  # Redis away for a moment must not end the heartbeat
                print(f"heartbeat: {exc}", file=sys.stderr, flush=True)
            done.wait(every)

    threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True).start()

"""The studio's machine side of the road through Redis (jobs/remote.py has the other side):
persist what remote workers report, answer their claims, keep the commands they read current,
and notice the remote workers that went silent.

Run as: python -m jobs.owner     (only the owner loop; `ftstudio serve` and a local `ftstudio
        worker` run the same loop in a thread whenever FTSTUDIO_REDIS_URL is set)

One owner at a time consumes the stream: whoever holds the lock ftstudio:owner-lock (renewed
while it runs, lapsing FTSTUDIO_STALE_AFTER/4 after it dies). It reads with XREADGROUP as the
consumer "owner", first its own pending events (delivered to a predecessor that died before
acknowledging them), then new ones; each is persisted through jobs.store (transition() decides
every status change, as for local runners) and only then acknowledged with XACK. Metrics are
written idempotently (store.add_metrics(replace=True)), so an event persisted just before a crash
and read again adds no duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from jobs import api, halving, settings, store, tasks
from jobs.endings import job_end
from jobs.remote import (GROUP, MAXLEN, PREFIX, REMOTE_JOBS, STREAM, alive_key,
                         client, job_key, local, portable)

log = logging.getLogger("ftstudio.owner")
LOCK = PREFIX + "owner-lock"
CONSUMER = "owner"
MIRROR_EVERY_S = 0.5


class Owner:
    """The owner loop over one Redis; start() runs it in a thread, run() in this one."""

    def __init__(self, url: str | None = None):
        self.url = url or settings.redis_url()
        self.r = client(self.url)
        self.id = f"{tasks.HOST}:{os.getpid()}:{os.urandom(3).hex()}"
        self.stop_event = threading.Event()
        self.held = False
        self._backlog = True
        self._mirrored = 0.0
        self._checked = 0.0
        self.thread: threading.Thread | None = None
        try:
            self.r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: made by an earlier owner
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> "Owner":
        self.thread = threading.Thread(target=self.run, name="ftstudio-owner", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.held and self.r.get(LOCK) == self.id:
            self.r.delete(LOCK)

    def run(self) -> None:
        log.info("owner %s: persisting remote workers' events from %s", self.id, STREAM)
        while not self.stop_event.is_set():
            try:
                if not self._hold_lock():
                    self.stop_event.wait(1.0)
                    continue
                self.step()
            except Exception:  # Redis or the database away for a moment: try again
                log.exception("owner: will retry")
                self._backlog = True
                self.stop_event.wait(1.0)

    def step(self, block_ms: int = 500) -> int:
        """Persist one batch of events (pending ones first); returns how many."""
        got = self.r.xreadgroup(GROUP, CONSUMER, {STREAM: "0" if self._backlog else ">"},
                                count=200, block=None if self._backlog else block_ms)
        entries = got[0][1] if got else []
        if self._backlog and not entries:
            self._backlog = False
        with store.connect() as db:
            for event_id, fields in entries:
                if not fields:  # trimmed away
                    self.r.xack(STREAM, GROUP, event_id)
                    continue
                try:
                    apply(db, self.r, json.loads(fields["e"]))
                except store.JobError as exc:  # the job was deleted: nothing to write to
                    log.info("owner: event %s dropped: %s", event_id, exc)
                except sqlite3.OperationalError:  # busy or unwritable: retry it, in order
                    raise
                except Exception:  # a malformed event must not block the ones behind it
                    log.exception("owner: event %s dropped: %s", event_id, fields["e"][:500])
                self.r.xack(STREAM, GROUP, event_id)
            now = time.monotonic()
            if now - self._mirrored >= MIRROR_EVERY_S:
                self._mirrored = now
                mirror(db, self.r)
            if now - self._checked >= max(1.0, settings.stale_after_s() / 4):
                self._checked = now
                silent_workers(db, self.r)
        if entries and len(entries) < 200:
            self.r.xtrim(STREAM, maxlen=MAXLEN, approximate=True)
        return len(entries)

    def _hold_lock(self) -> bool:
        ttl_ms = int(max(3.0, settings.stale_after_s() / 4) * 1000)
        if self.r.set(LOCK, self.id, nx=True, px=ttl_ms):
            self.held, self._backlog = True, True
            log.info("owner %s holds the owner lock", self.id)
            return True
        if self.r.get(LOCK) == self.id:
            self.r.pexpire(LOCK, ttl_ms)
            return True
        self.held = False
        return False


# --------------------------------------------------------------------------- one event


def apply(db, r, e: dict[str, Any]) -> None:
    """Persist one remote event through the store (the local reporter's calls)."""
    kind, job_id, attempt = e["type"], e["job"], e.get("attempt")
    if kind == "claim":
        return _claim(db, r, e)
    if kind == "metrics":
        if not store.add_metrics(db, job_id, e["record"], attempt=attempt,
                                 total_steps=e.get("total_steps"), replace=True):
            log.info("owner: metrics of job %s attempt %s dropped (superseded)", job_id, attempt)
    elif kind == "publish":
        store.publish_metrics(db, job_id, e["step"], attempt=attempt)
    elif kind == "log":
        store.add_event(db, job_id, e["line"])
    elif kind == "beat":
        store.update(db, job_id, updated_at=e["t"],
                     expect={"attempt": attempt, "status": "running"})
    elif kind == "stage":
        store.update(db, job_id, step=store.Expr("step + 1"),
                     expect={"attempt": attempt, "status": "running"})
    elif kind == "resumed":
        store.truncate_metrics(db, job_id, e["step"])
    elif kind == "artifact":
        store.add_artifact(db, job_id, e["kind"], local(e["path"]))
    elif kind == "exports":
        store.replace_exports(db, job_id, e["fmt"], [(local(p), n) for p, n in e["files"]],
                              meta=e.get("meta"))
    elif kind == "eval":
        store.add_eval(db, job_id, e["record"], kind=e["kind"], path=local(e["path"]),
                       eval_job=e.get("eval_job"))
    elif kind == "halving":
        if e.get("paused_at") is not None:
            halving.paused(db, job_id, e["paused_at"])
        else:
            halving.job_left(db, job_id)
    elif kind == "end":
        store.transition(db, job_id, e["status"], frm=("running",), expect={"attempt": attempt},
                         finished_at=e["t"], **e["fields"])
        mirror_job(db, r, job_id)
    elif kind == "exited":
        _exited(db, r, e)
    else:
        log.warning("owner: unknown event %r of job %s (a newer worker?)", kind, job_id)


def _claim(db, r, e: dict[str, Any]) -> None:
    job_id = e["job"]
    answer: dict[str, Any] = {"ok": False}
    if time.time() <= e["deadline"]:  # a worker that gave up waiting is not told "yes"
        claimed = store.transition(db, job_id, "running", frm=("queued",),
                                   **tasks.claim_fields(e["worker"], e["hostname"], None))
        if claimed:
            job = store.get_job(db, job_id)
            parents = {}
            for pid in {job.get("parent"), (job.get("config") or {}).get("parent")} - {None}:
                try:
                    parents[pid] = portable(store.get_job(db, pid))
                except store.JobNotFound:
                    pass
            member = store.sweep_of(db, job_id)
            rungs = store.get_sweep(db, member["sweep_id"])["halving"] if member else []
            r.set(alive_key(job_id), job["attempt"], ex=max(1, int(settings.stale_after_s())))
            r.sadd(REMOTE_JOBS, job_id)
            mirror_job(db, r, job_id)
            answer = {"ok": True, "job": portable(job), "parents": parents, "rungs": rungs}
            log.info("job %s claimed by remote worker %s", job_id, e["worker"])
    r.rpush(e["reply"], json.dumps(answer))
    r.expire(e["reply"], 120)


def _exited(db, r, e: dict[str, Any]) -> None:
    """A remote child ended; record its end if it did not (as jobs.tasks._record_end)."""
    job_id = e["job"]
    row = store.get_job(db, job_id)
    if row["status"] == "running" and row["attempt"] == e["attempt"]:
        end = job_end(row, "exited", code=e["code"], cancel=bool(row["cancel_requested"]),
                      stopping=bool(e.get("stopping")), log_path=local(e.get("log")))
        store.transition(db, job_id, end.status, frm=("running",),
                         expect={"attempt": e["attempt"]}, finished_at=e["t"], **end.fields())
    r.srem(REMOTE_JOBS, job_id)
    r.delete(alive_key(job_id))
    mirror_job(db, r, job_id)


# --------------------------------------------------------------------------- commands back


def mirror_job(db, r, job_id: str) -> None:
    """The job's status, attempt and cancel request where its remote runner reads them."""
    try:
        row = store.get_job(db, job_id)
    except store.JobNotFound:
        r.srem(REMOTE_JOBS, job_id)
        r.hset(job_key(job_id), mapping={"status": "deleted", "attempt": 0, "cancel": 1})
        return
    r.hset(job_key(job_id), mapping={
        "status": row["status"], "attempt": row["attempt"] or 0,
        "cancel": int(bool(row["cancel_requested"])),
        "cancel_at": row["cancel_requested_at"] or ""})
    r.expire(job_key(job_id), 7 * 24 * 3600)


def mirror(db, r) -> None:
    for job_id in r.smembers(REMOTE_JOBS):
        mirror_job(db, r, job_id)


def silent_workers(db, r) -> list[str]:
    """Mark `interrupted` every remote job whose runner's heartbeat lapsed (its machine died,
    or the network between), and queue it again to resume from its last checkpoint elsewhere
    (unless FTSTUDIO_AUTO_RESUME=0). Returns the job ids."""
    done = []
    for job in store.list_jobs(db, status="running"):
        if not is_remote(job) or r.exists(alive_key(job["id"])):
            continue
        reason = (f"no heartbeat from remote worker {job['worker']} for "
                  f"{settings.stale_after_s():.0f}s")
        end = job_end(job, "lost", cancel=bool(job["cancel_requested"]), reason=reason)
        if store.transition(db, job["id"], end.status, frm=("running",), note=reason,
                            expect={"attempt": job["attempt"]}, finished_at=store.now(),
                            **end.fields()):
            done.append(job["id"])
            mirror_job(db, r, job["id"])
            log.warning("job %s: %s", job["id"], reason)
            if end.status == "interrupted" and settings.auto_resume():
                try:
                    api.resume(job["id"])
                except store.JobError as exc:
                    log.info("not resuming %s: %s", job["id"], exc)
    return done


def is_remote(job: dict[str, Any]) -> bool:
    """A job claimed by a remote worker (jobs/remote.py): its worker id says so."""
    return str(job.get("worker") or "").startswith("remote:")


def alive(job: dict[str, Any], url: str | None = None) -> bool:
    """Whether a remote job's runner still beats (for jobs.worker's recovery)."""
    return bool(client(url).exists(alive_key(job["id"])))


def main() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import signal

    owner = Owner()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: owner.stop_event.set())
    owner.run()
    owner.stop()


if __name__ == "__main__":
    main()

"""A worker: recover what a crash left behind, then run a Huey consumer over the job queue.

Run as: ftstudio worker [--gpus 0,1] [--workers N] [--no-resume] [--remote]
    or: python -m jobs.worker [--gpus 0,1] [--workers N] [--no-resume] [--remote]

On start it (1) marks `interrupted` every job that says running but whose worker is gone (a dead
pid on this host, or no heartbeat for FTSTUDIO_STALE_AFTER seconds from another host), stopping
any runner child that outlived its worker so two runs never write one job; (2) re-queues the
interrupted jobs to continue from their last checkpoint, unless auto_resume is off
(FTSTUDIO_AUTO_RESUME=0 or --no-resume); (3) re-enqueues queued jobs that have no task in the
queue (claiming is atomic, so a duplicate task is harmless). Ctrl-C / SIGTERM asks running jobs to
checkpoint and stop; they resume when a worker starts again.

With FTSTUDIO_REDIS_URL, a worker on the studio's machine also runs the owner loop
(jobs/owner.py): it persists what remote workers report. `--remote` makes a worker for another
machine: it needs only FTSTUDIO_REDIS_URL and the shared files folder (FTSTUDIO_HOME), never opens
studio.db or queue.db, and leaves recovery to the studio's machine (jobs/remote.py).

`ftstudio serve` embeds one: handle = start_embedded_worker(); ...; handle.stop().
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from huey.consumer import Consumer

from jobs import settings
from jobs import api, halving, owner, store, tasks
from jobs.endings import job_end
from jobs.queue import describe, get_huey
from jobs.remote import RemoteLink
from jobs.reporting import pid_alive
from jobs.tasks import HOST, WorkerContext, gpu_pool

log = logging.getLogger("ftstudio.worker")
_live_ids: set[str] = set()  # worker ids running in this process


def _stale_after_s() -> float:
    return settings.stale_after_s()


def auto_resume_enabled(auto_resume: bool = True) -> bool:
    return auto_resume and settings.auto_resume()


# --------------------------------------------------------------------------- recovery


def recover(auto_resume: bool = True) -> dict[str, list[str]]:
    """Clean up after crashed workers; returns the job ids interrupted, resumed, re-enqueued."""
    done: dict[str, list[str]] = {"interrupted": [], "resumed": [], "requeued": []}
    with store.connect() as db:
        running = store.list_jobs(db, status="running")
    for job in running:
        reason = _gone(job)
        if not reason:
            continue
        _stop_orphan(job)
        end = job_end(job, "lost", cancel=bool(job["cancel_requested"]), reason=reason)
        with store.connect() as db:
            if store.transition(db, job["id"], end.status, frm=("running",), note=reason,
                                expect={"attempt": job["attempt"]}, finished_at=store.now(),
                                **end.fields()) and end.status == "interrupted":
                done["interrupted"].append(job["id"])
    if auto_resume_enabled(auto_resume):
        with store.connect() as db:
            waiting = [j for j in store.list_jobs(db, status="interrupted")
                       if j["resume_on_start"]]
        for job in reversed(waiting):  # oldest first
            try:
                api.resume(job["id"])
                done["resumed"].append(job["id"])
            except store.JobError as exc:  # another worker resumed it first
                log.info("not resuming %s: %s", job["id"], exc)
    try:
        in_queue = tasks.queued_job_ids()
    except Exception as exc:  # e.g. Redis is down
        raise store.JobError(f"cannot reach the queue ({describe()}): {exc}; check "
                             "FTSTUDIO_REDIS_URL and that Redis is running") from exc
    with store.connect() as db:
        queued = store.list_jobs(db, status="queued")
        for job in reversed(queued):
            if job["id"] not in in_queue:
                tasks.enqueue(job["id"], halving.queue_priority(db, job), job.get("created_at"))
                done["requeued"].append(job["id"])
    for key, ids in done.items():
        if ids:
            log.info("recovery: %s %s", key, ", ".join(ids))
    return done


def _gone(job: dict) -> str | None:
    """Why a running job's worker is gone, or None while it may still be alive."""
    if owner.is_remote(job) and settings.redis_url():  # its runner's heartbeat is in Redis
        return None if owner.alive(job) else \
            f"no heartbeat from remote worker {job['worker']} for {_stale_after_s():.0f}s"
    if tasks.same_pids(job):  # else: the same hostname is another container or machine
        pid = job["worker_pid"]
        if pid == os.getpid():
            return None if job["worker"] in _live_ids else "its worker in this process stopped"
        if pid and pid_alive(pid) and not _zombie(pid):
            return None
        return f"its worker (pid {pid} on {HOST}) is gone"
    silent = store.now() - (job["updated_at"] or 0)
    if silent > _stale_after_s():
        return f"no heartbeat from {job['hostname']} for {silent:.0f}s"
    return None


def _stop_orphan(job: dict) -> None:
    """SIGTERM (then SIGKILL) a runner child that outlived its worker on this host."""
    pid = job["pid"]
    if not tasks.same_pids(job) or not pid or not pid_alive(pid) or _zombie(pid):
        return
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        args = cmdline.read_bytes().decode(errors="replace")
        if "jobs.runner" not in args or job["id"] not in args:
            return  # the pid was reused by something else
    log.warning("stopping orphaned runner pid %d of job %s", pid, job["id"])
    deadline = time.monotonic() + tasks.context().kill_after_s
    sig = signal.SIGTERM
    while pid_alive(pid) and not _zombie(pid):
        try:
            os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.2)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def _zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- the consumer


class _Consumer(Consumer):
    """Huey's consumer, leaving signal handling to whoever hosts it (CLI or web server)."""

    def _set_signal_handlers(self) -> None:
        pass


class WorkerHandle:
    """A running worker: a Huey consumer with `workers` threads, each running one job at a
    time in a child process. stop() asks running jobs to checkpoint and waits for them."""

    def __init__(self, gpus: list[str] | None = None, workers: int = 1,
                 auto_resume: bool = True, remote: bool = False):
        if remote and not settings.redis_url():
            raise ValueError("`ftstudio worker --remote` needs FTSTUDIO_REDIS_URL "
                             "(redis://host:6379/0, the studio's Redis): a remote worker "
                             "takes jobs from that queue and reports through it")
        self.remote = remote
        self.ctx = WorkerContext(gpu_pool=gpu_pool(gpus),  # each job takes parallel.gpus
                                 worker_id=tasks.new_worker_id(remote),
                                 link=RemoteLink() if remote else tasks.LocalLink())
        #: the owner loop of a worker on the studio's machine with a Redis queue
        self.owner: owner.Owner | None = None
        self.auto_resume = auto_resume
        self.gpus, self.workers = gpus, workers
        tasks.set_context(self.ctx)
        self.huey = get_huey()
        tasks.task_for(self.huey)
        self.consumer = _Consumer(self.huey, workers=workers, periodic=False,
                                  worker_type="thread", initial_delay=0.1, backoff=1.15,
                                  max_delay=1.0, shutdown_timeout=self.ctx.kill_after_s + 15)
        self.recovered: dict[str, list[str]] | None = None
        self.started = threading.Event()

    def start(self) -> "WorkerHandle":
        _live_ids.add(self.ctx.worker_id)
        if not self.remote and settings.redis_url():
            self.owner = owner.Owner().start()
        # a remote worker reads no job rows: the studio's machine recovers (jobs/owner.py)
        self.recovered = None if self.remote else recover(self.auto_resume)
        if not self.ctx.stopping.is_set():
            self.consumer.start()
            log.info("worker %s: %d job thread(s), gpus %s, queue %s", self.ctx.worker_id,
                     self.workers, ",".join(self.gpus) if self.gpus else "not assigned",
                     describe(self.huey))
        self.started.set()
        return self

    def check(self) -> None:
        self.consumer.check_worker_health()

    def stop(self) -> None:
        """Ask running jobs to checkpoint and stop (they resume on the next start), then stop."""
        self.ctx.stopping.set()
        self.started.wait()
        self.consumer.stop(graceful=True)
        if self.owner is not None:
            self.owner.stop()
        _live_ids.discard(self.ctx.worker_id)
        log.info("worker %s stopped", self.ctx.worker_id)

    @property
    def alive(self) -> bool:
        return self.started.is_set() and not self.ctx.stopping.is_set()


def run_worker(gpus: list[str] | None = None, workers: int = 1, auto_resume: bool = True,
               remote: bool = False) -> None:
    """Recover, then consume the queue in this process until SIGINT or SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("%s received: stopping (running jobs checkpoint first)",
                 signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the worker at once

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    handle = WorkerHandle(gpus, workers, auto_resume, remote).start()
    last_check = time.monotonic()
    while not stop.wait(0.5):
        if time.monotonic() - last_check > 10:
            handle.check()
            last_check = time.monotonic()
    handle.stop()


def start_embedded_worker(gpus: list[str] | None = None, workers: int = 1,
                          auto_resume: bool = True) -> WorkerHandle:
    """Start a worker in background threads of this process (for `ftstudio serve`); returns
    its handle at once (recovery runs in the background). Call handle.stop() on shutdown."""
    handle = WorkerHandle(gpus, workers, auto_resume)

    def run() -> None:
        try:
            handle.start()
        finally:
            handle.started.set()

    threading.Thread(target=run, name="ftstudio-worker", daemon=True).start()
    return handle


def parse_gpus(text: str | None) -> list[str] | None:
    """'0,1' -> ['0', '1']; empty -> None."""
    if not text:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in gpus if not g.isdigit()]
    if bad:
        raise ValueError(f"--gpus takes device numbers like 0,1; got {text!r}")
    return gpus or None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--gpus", default=None, help="GPUs this worker owns, e.g. 0,1; each "
                        "job takes as many as it asks for (parallel.gpus)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at once (with "
                        "--gpus: jobs share the GPUs, each waiting for its count)")
    parser.add_argument("--no-resume", action="store_true",
                        help="do not resume interrupted jobs on start")
    parser.add_argument("--remote", action="store_true",
                        help="a worker on another machine: needs only FTSTUDIO_REDIS_URL and "
                             "the shared files; never opens studio.db")
    args = parser.parse_args(argv)
    run_worker(parse_gpus(args.gpus), args.workers, auto_resume=not args.no_resume,
               remote=args.remote)


if __name__ == "__main__":
    main()

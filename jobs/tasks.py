"""The queue's one task: claim a job, run it in a child process, record how it ended.

The task carries only the job id, of a training, an export or an eval job alike (the runner
dispatches on the job's kind). It claims the job with the atomic queued -> running transition (a cancelled
job, or a duplicate task, does nothing), starts `python -m jobs.runner JOB_ID` (or `accelerate
launch ... -m jobs.runner JOB_ID` when this worker thread owns several GPUs and the job trains;
an export or an eval gets one of them) in its own session, and waits: it escalates a cancel the child ignores
(SIGTERM after the grace period, SIGKILL later) and, when the worker shuts down, asks the child to
checkpoint and stop. A child that dies without recording its end (a signal, an OOM kill, a crash
before Python could report) becomes a failed job with an error and a hint.

What the task asks of the studio's database goes through the worker's link: LocalLink (here:
jobs.store, on the machine that owns studio.db) or RemoteLink (jobs/remote.py: the same
questions through Redis, for `ftstudio worker --remote`, which never opens the database).

Enqueue from Python:  from jobs.tasks import enqueue; enqueue(job_id, priority=0)
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huey import Huey

from jobs import settings
from jobs import store
from jobs.endings import job_end
from jobs.queue import get_huey

ROOT = Path(__file__).resolve().parents[1]
TASK_NAME = "ftstudio.run_job"
HOST = socket.gethostname()


def _pid_namespace() -> str:
    """This process's pid namespace (containers on one host, host networking included, share
    a hostname but not their pids); empty where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return ""


#: where a pid means this process's pids: the host and the pid namespace
PIDNS = _pid_namespace()
POLL_S = 0.5
log = logging.getLogger("ftstudio.worker")


class LocalLink:
    """The task's questions to studio.db, answered here (a worker on the studio's machine)."""

    remote = False

    def still_queued(self, job_id: str) -> bool:
        with store.connect() as db:
            return bool(store.list_jobs(db, status="queued", ids=[job_id]))

    def claim(self, job_id: str, worker_id: str, stopping: threading.Event | None = None
              ) -> dict | None:
        with store.connect() as db:
            if not store.transition(db, job_id, "running", frm=("queued",),
                                    **claim_fields(worker_id, HOST, os.getpid())):
                return None
            return store.get_job(db, job_id)

    def started(self, job: dict, pid: int) -> None:
        with store.connect() as db:
            store.update(db, job["id"], pid=pid, expect={"attempt": job["attempt"]})

    def cancel_state(self, job: dict) -> tuple[bool, float | None]:
        with store.connect() as db:
            row = store.get_job(db, job["id"])
        return bool(row["cancel_requested"]), row["cancel_requested_at"]

    def exited(self, job: dict, code: int, stopping: bool, log_path: Path) -> None:
        """Record the end of a child that did not record it itself (jobs.endings.job_end)."""
        with store.connect() as db:
            row = store.get_job(db, job["id"])
            if row["status"] != "running" or row["attempt"] != job["attempt"]:
                log.info("job %s ended: %s", job["id"], row["status"])
                return
            end = job_end(job, "exited", code=code, cancel=bool(row["cancel_requested"]),
                          stopping=stopping, log_path=log_path)
            store.transition(db, job["id"], end.status, frm=("running",),
                             expect={"attempt": job["attempt"]}, finished_at=store.now(),
                             **end.fields())
            log.info("job %s ended: %s", job["id"], store.get_job(db, job["id"])["status"])

    def worker_error(self, job: dict, exc: Exception) -> None:
        with store.connect() as db:
            store.transition(db, job["id"], "failed", frm=("running",),
                             expect={"attempt": job["attempt"]}, finished_at=store.now(),
                             **_worker_error(job, exc))

    def child_env(self, job: dict) -> dict[str, str]:
        return {}


def claim_fields(worker_id: str, hostname: str, worker_pid: int | None) -> dict:
    """The fields of a queued -> running claim by worker `worker_id` (local or remote)."""
    return dict(started_at=store.now(), finished_at=None, worker=worker_id, hostname=hostname,
                worker_pid=worker_pid, pid=None, attempt=store.Expr("attempt + 1"),
                cancel_requested=0, cancel_requested_at=None, error=None, hint=None,
                resume_on_start=0)


def _worker_error(job: dict, exc: Exception) -> dict:
    return {"error": f"worker error: {type(exc).__name__}: {exc}",
            "hint": f"see the worker's output; `ftstudio jobs resume {job['id']}` tries again"}


def new_worker_id(remote: bool = False) -> str:
    """Unique per worker process (not the hostname alone: containers with host networking
    share one): host, pid, a random tag and the pid namespace; recorded with each claim (the
    jobs.worker column), so recovery checks a pid only where it means the same process."""
    return ("remote:" if remote else "") + \
        f"{HOST}:{os.getpid()}:{os.urandom(3).hex()}" + (f"@{PIDNS}" if PIDNS else "")


def same_pids(job: dict) -> bool:
    """Whether the job's worker ran where this process's pids mean the same processes: this
    host and pid namespace (a worker id without a namespace: this host)."""
    worker = str(job.get("worker") or "")
    if job.get("hostname") != HOST or worker.startswith("remote:"):
        return False
    _, at, ns = worker.rpartition("@")
    return not at or ns == PIDNS


@dataclass
class WorkerContext:
    """What the task needs from the worker that runs it (set by jobs.worker)."""

    worker_id: str = field(default_factory=new_worker_id)
    #: GPU groups handed to tasks, one group per concurrent job; None: leave devices alone
    gpu_groups: "queue.Queue[list[str]] | None" = None
    stopping: threading.Event = field(default_factory=threading.Event)
    #: seconds a running job has to stop by itself after a cancel before SIGTERM
    cancel_grace_s: float = field(default_factory=settings.cancel_grace_s)
    #: seconds after SIGTERM before SIGKILL (cancel and worker shutdown)
    kill_after_s: float = field(default_factory=settings.kill_after_s)
    #: where the task's questions about jobs go: studio.db here, or Redis (jobs/remote.py)
    link: Any = field(default_factory=LocalLink)

    def take_gpus(self) -> list[str] | None:
        return None if self.gpu_groups is None else self.gpu_groups.get()

    def put_gpus(self, gpus: list[str] | None) -> None:
        if self.gpu_groups is not None and gpus is not None:
            self.gpu_groups.put(gpus)


_context = WorkerContext()
_wrappers: dict[int, object] = {}
_lock = threading.Lock()


def context() -> WorkerContext:
    return _context


def set_context(ctx: WorkerContext) -> None:
    global _context
    _context = ctx


def task_for(huey: Huey):
    """The run_job task registered on `huey` (tasks are registered per instance)."""
    with _lock:
        wrapper = _wrappers.get(id(huey))
        if wrapper is None:
            wrapper = _wrappers[id(huey)] = huey.task(name=TASK_NAME, context=True)(run_job)
    return wrapper


def enqueue(job_id: str, priority: float = 0) -> None:
    """Put a job's task on the queue; higher priority starts first (FIFO within one). A float:
    the jobs of a sweep queue between whole priorities (halving.queue_priority)."""
    task_for(get_huey())(job_id, priority=float(priority))


def queued_job_ids(huey: Huey | None = None) -> set[str]:
    """Job ids of the tasks waiting in the queue."""
    huey = huey or get_huey()
    task_for(huey)
    return {t.args[0] for t in huey.pending() if t.name == TASK_NAME and t.args}


# --------------------------------------------------------------------------- the task


def run_job(job_id: str, task=None) -> None:
    ctx = _context
    if ctx.stopping.is_set():  # taken while shutting down: leave it for the next worker
        if ctx.link.still_queued(job_id):
            enqueue(job_id, getattr(task, "priority", None) or 0)
        return
    try:
        job = ctx.link.claim(job_id, ctx.worker_id, ctx.stopping)
    except TimeoutError as exc:  # no owner to answer (jobs/remote.py): leave it queued
        log.warning("job %s: %s; it goes back on the queue", job_id, exc)
        enqueue(job_id, getattr(task, "priority", None) or 0)
        ctx.stopping.wait(5.0)
        return
    if job is None:
        log.info("job %s is no longer queued; nothing to do", job_id)
        return
    log.info("job %s (%s) started, attempt %d", job_id, job["name"], job["attempt"])
    try:
        _supervise(job, ctx)
    except Exception as exc:  # the worker must survive anything one job does
        log.exception("job %s: worker error", job_id)
        ctx.link.worker_error(job, exc)


def _supervise(job: dict, ctx: WorkerContext) -> None:
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    gpus = ctx.take_gpus()
    # an export or an eval is one process: on one GPU of the group, never under accelerate
    child_gpus = gpus[:1] if gpus and job["kind"] in ("export", "eval") else gpus
    try:
        with open(out / "log.txt", "ab") as logfile:
            proc = subprocess.Popen(child_command(job["id"], child_gpus), stdout=logfile,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**child_env(job, child_gpus), **ctx.link.child_env(job)},
                                    start_new_session=True)
        ctx.link.started(job, proc.pid)
        _wait(job, proc, ctx)
    finally:
        ctx.put_gpus(gpus)
    from jobs.redact import scrub_run_folder

    scrub_run_folder(out)  # a child killed before it could (jobs/redact.py)
    ctx.link.exited(job, proc.returncode, ctx.stopping.is_set(), out / "log.txt")


def _wait(job: dict, proc: subprocess.Popen, ctx: WorkerContext) -> None:
    """Wait for the child; escalate an ignored cancel, pass a worker shutdown on."""
    term_at = None
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        if term_at is not None:
            if time.monotonic() - term_at > ctx.kill_after_s:
                log.warning("job %s did not stop after SIGTERM; sending SIGKILL", job["id"])
                _signal_group(proc, signal.SIGKILL)
                term_at = float("inf")
            continue
        if ctx.stopping.is_set():
            log.info("worker stopping: asking job %s to checkpoint and stop", job["id"])
            _signal_group(proc, signal.SIGTERM)
            term_at = time.monotonic()
            continue
        cancel, cancel_at = ctx.link.cancel_state(job)
        if cancel and cancel_at and store.now() - cancel_at > ctx.cancel_grace_s:
            log.warning("job %s ignored its cancel for %.0fs; sending SIGTERM", job["id"],
                        ctx.cancel_grace_s)
            _signal_group(proc, signal.SIGTERM)
            term_at = time.monotonic()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session: reaches every rank
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- the child


def child_command(job_id: str, gpus: list[str] | None = None) -> list[str]:
    if gpus and len(gpus) > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(len(gpus)), "--main_process_port", str(free_port()),
                "-m", "jobs.runner", job_id]
    return [sys.executable, "-m", "jobs.runner", job_id]


def child_env(job: dict, gpus: list[str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FTSTUDIO_HOME=str(store.home()), FTSTUDIO_JOB_ATTEMPT=str(job["attempt"]),
               FTSTUDIO_WORKER_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_groups(gpus: list[str] | None, workers: int) -> "queue.Queue[list[str]] | None":
    """Split the worker's GPUs evenly between its `workers` concurrent jobs."""
    if not gpus:
        return None
    if len(gpus) < workers:
        raise ValueError(f"{workers} concurrent jobs need at least {workers} GPUs; got "
                         f"{','.join(gpus)}; lower --workers or add --gpus")
    size = len(gpus) // workers
    groups: "queue.Queue[list[str]]" = queue.Queue()
    for i in range(workers):
        groups.put(list(gpus[i * size:(i + 1) * size]))
    return groups

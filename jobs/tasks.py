"""The queue's one task: claim a job, run it in a child process, record how it ended.

The task carries only the job id, of a training, an export or an eval job alike (the runner
dispatches on the job's kind). It claims the job with the atomic queued -> running transition (a cancelled
job, or a duplicate task, does nothing), starts `python -m jobs.runner JOB_ID` (or `accelerate
launch ... -m jobs.runner JOB_ID` when this worker thread owns several GPUs and the job trains;
an export or an eval gets one of them) in its own session, and waits: it escalates a cancel the child ignores
(SIGTERM after the grace period, SIGKILL later) and, when the worker shuts down, asks the child to
checkpoint and stop. A child that dies without recording its end (a signal, an OOM kill, a crash
before Python could report) becomes a failed job with an error and a hint.

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

from huey import Huey

from jobs import settings
from jobs import store
from jobs.errors import explain_exit
from jobs.queue import get_huey

ROOT = Path(__file__).resolve().parents[1]
TASK_NAME = "ftstudio.run_job"
HOST = socket.gethostname()
POLL_S = 0.5
log = logging.getLogger("ftstudio.worker")


@dataclass
class WorkerContext:
    """What the task needs from the worker that runs it (set by jobs.worker)."""

    worker_id: str = field(default_factory=lambda: f"{HOST}:{os.getpid()}:{os.urandom(3).hex()}")
    #: GPU groups handed to tasks, one group per concurrent job; None: leave devices alone
    gpu_groups: "queue.Queue[list[str]] | None" = None
    stopping: threading.Event = field(default_factory=threading.Event)
    #: seconds a running job has to stop by itself after a cancel before SIGTERM
    cancel_grace_s: float = field(default_factory=settings.cancel_grace_s)
    #: seconds after SIGTERM before SIGKILL (cancel and worker shutdown)
    kill_after_s: float = field(default_factory=settings.kill_after_s)

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
            wrapper = _wrappers[id(huey)] = huey.task(name=TASK_NAME)(run_job)
    return wrapper


def enqueue(job_id: str, priority: float = 0) -> None:
    """Put a job's task on the queue; higher priority starts first (FIFO within one). A float:
    the jobs of a sweep queue between whole priorities (store.queue_priority)."""
    task_for(get_huey())(job_id, priority=float(priority))


def queued_job_ids(huey: Huey | None = None) -> set[str]:
    """Job ids of the tasks waiting in the queue."""
    huey = huey or get_huey()
    task_for(huey)
    return {t.args[0] for t in huey.pending() if t.name == TASK_NAME and t.args}


# --------------------------------------------------------------------------- the task


def run_job(job_id: str) -> None:
    ctx = _context
    if ctx.stopping.is_set():  # taken while shutting down: leave it for the next worker
        with store.connect() as db:
            job = next(iter(store.list_jobs(db, status="queued", ids=[job_id])), None)
            if job:
                enqueue(job_id, store.queue_priority(db, job))
        return
    with store.connect() as db:
        claimed = store.transition(
            db, job_id, "running", frm=("queued",), started_at=store.now(), finished_at=None,
            worker=ctx.worker_id, hostname=HOST, worker_pid=os.getpid(), pid=None,
            attempt=store.Expr("attempt + 1"), cancel_requested=0, cancel_requested_at=None,
            error=None, hint=None, resume_on_start=0)
        if not claimed:
            log.info("job %s is no longer queued; nothing to do", job_id)
            return
        job = store.get_job(db, job_id)
    log.info("job %s (%s) started, attempt %d", job_id, job["name"], job["attempt"])
    try:
        _supervise(job, ctx)
    except Exception as exc:  # the worker must survive anything one job does
        log.exception("job %s: worker error", job_id)
        with store.connect() as db:
            store.transition(db, job_id, "failed", frm=("running",),
                             expect={"attempt": job["attempt"]}, finished_at=store.now(),
                             error=f"worker error: {type(exc).__name__}: {exc}",
                             hint="see the worker's output; `ftstudio jobs resume "
                                  f"{job_id}` tries again")


def _supervise(job: dict, ctx: WorkerContext) -> None:
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    gpus = ctx.take_gpus()
    # an export or an eval is one process: on one GPU of the group, never under accelerate
    child_gpus = gpus[:1] if gpus and job["kind"] in ("export", "eval", "prune") else gpus
    try:
        with open(out / "log.txt", "ab") as logfile:
            proc = subprocess.Popen(child_command(job["id"], child_gpus), stdout=logfile,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_env(job, child_gpus), start_new_session=True)
        with store.connect() as db:
            store.update(db, job["id"], pid=proc.pid, expect={"attempt": job["attempt"]})
        _wait(job, proc, ctx)
    finally:
        ctx.put_gpus(gpus)
    from jobs.redact import scrub_run_folder

    scrub_run_folder(out)  # a child killed before it could (jobs/redact.py)
    _record_end(job, proc.returncode, ctx, out / "log.txt")


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
        with store.connect() as db:
            row = store.get_job(db, job["id"])
        if row["cancel_requested"] and row["cancel_requested_at"] and \
                store.now() - row["cancel_requested_at"] > ctx.cancel_grace_s:
            log.warning("job %s ignored its cancel for %.0fs; sending SIGTERM", job["id"],
                        ctx.cancel_grace_s)
            _signal_group(proc, signal.SIGTERM)
            term_at = time.monotonic()


def _record_end(job: dict, returncode: int, ctx: WorkerContext, log_path: Path) -> None:
    """Record the end of a child that did not record it itself."""
    with store.connect() as db:
        row = store.get_job(db, job["id"])
        if row["status"] != "running" or row["attempt"] != job["attempt"]:
            log.info("job %s ended: %s", job["id"], row["status"])
            return
        common = dict(frm=("running",), expect={"attempt": job["attempt"]},
                      finished_at=store.now())
        resume = f"`ftstudio jobs resume {job['id']}` " + (
            "runs it again" if job["kind"] in ("export", "eval", "prune")
            else "continues from the last checkpoint")
        if row["cancel_requested"]:
            store.transition(db, job["id"], "cancelled", **common,
                             hint=f"stopped by force after the cancel grace period; {resume}")
        elif ctx.stopping.is_set():
            store.transition(db, job["id"], "interrupted", **common, resume_on_start=1,
                             hint=f"the worker shut down; it resumes when a worker starts, or "
                                  f"{resume}")
        else:
            error, hint = explain_exit(returncode, log_path, job["id"],
                                       what={"export": "the export process",
                                             "eval": "the evaluation process"}.get(
                                           job["kind"], "the training process"))
            store.transition(db, job["id"], "failed", **common, error=error, hint=hint)
        log.info("job %s ended: %s", job["id"], store.get_job(db, job["id"])["status"])


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

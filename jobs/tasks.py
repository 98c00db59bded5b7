"""The queue's one task: claim a job, run it in a child process, record how it ended.

The task carries only the job id, of a training, an export or an eval job alike (the runner
dispatches on the job's kind). On a worker with GPUs it first takes the GPUs the job asks for
(parallel.gpus; an export or an eval one) from the worker's GpuPool, waiting its turn while they
are busy. It claims the job with the atomic queued -> running transition (a cancelled
job, or a duplicate task, does nothing), records the GPUs it holds, starts `python -m
jobs.runner JOB_ID` (or `accelerate launch ... -m jobs.runner JOB_ID`, one process per GPU, when
the job trains on several GPUs or under FSDP) in its own session, and waits: it escalates a cancel the child ignores
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
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huey import Huey

from jobs import settings
from jobs import store
from jobs.endings import job_end
from jobs.queue import get_huey, queued_since

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
#: job kinds that run as one process on one GPU, never under accelerate launch
ONE_PROCESS_KINDS = ("export", "eval", "prune")
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

    def queued_since(self, job_id: str) -> float | None:
        with store.connect() as db:
            return store.get_job(db, job_id).get("created_at")

    def started(self, job: dict, pid: int, gpus: list[str] | None = None) -> None:
        with store.connect() as db:
            store.update(db, job["id"], pid=pid, gpus=",".join(gpus) if gpus else None,
                         expect={"attempt": job["attempt"]})

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
    #: the worker's GPUs, handed to each job as many as it asks for; None: leave devices alone
    gpu_pool: "GpuPool | None" = None
    stopping: threading.Event = field(default_factory=threading.Event)
    #: seconds a running job has to stop by itself after a cancel before SIGTERM
    cancel_grace_s: float = field(default_factory=settings.cancel_grace_s)
    #: seconds after SIGTERM before SIGKILL (cancel and worker shutdown)
    kill_after_s: float = field(default_factory=settings.kill_after_s)
    #: where the task's questions about jobs go: studio.db here, or Redis (jobs/remote.py)
    link: Any = field(default_factory=LocalLink)

    def put_gpus(self, gpus: list[str] | None) -> None:
        if self.gpu_pool is not None and gpus:
            self.gpu_pool.put(gpus)


class GpuPool:
    """A worker's GPUs, handed to jobs N at a time. A job asking for N waits until N are free;
    jobs are served in the order they asked (a 4-GPU job at the head is not overtaken by 1-GPU
    jobs behind it, so it never starves), while jobs already running keep what they hold. No GPU
    is ever in two hands: take() and put() change the free list under one lock."""

    def __init__(self, gpus: list[str]):
        self.gpus = list(gpus)
        self.free = list(gpus)
        self.waiting: deque[object] = deque()
        self.cond = threading.Condition()

    def take(self, n: int, give_up=lambda: False, poll_s: float = POLL_S) -> list[str] | None:
        """n free GPUs, waiting for them in turn; None when give_up() says so first (the job
        was cancelled, the worker is stopping). ValueError: this worker has fewer than n."""
        if n > len(self.gpus):
            raise ValueError(f"the job asks for {n} GPUs (parallel.gpus) but this worker has "
                             f"{len(self.gpus)} ({','.join(self.gpus)}); lower parallel.gpus, "
                             f"or start a worker with more: ftstudio worker --gpus ...")
        ticket = object()
        with self.cond:
            self.waiting.append(ticket)
            try:
                while self.waiting[0] is not ticket or len(self.free) < n:
                    if give_up():
                        return None
                    self.cond.wait(poll_s)
                taken, self.free = self.free[:n], self.free[n:]
                return taken
            finally:
                self.waiting.remove(ticket)
                self.cond.notify_all()

    def put(self, gpus: list[str]) -> None:
        with self.cond:
            doubled = set(gpus) & set(self.free)
            if doubled:
                raise RuntimeError(f"GPU(s) {','.join(sorted(doubled))} returned twice")
            self.free = [g for g in self.gpus if g in self.free or g in gpus]
            self.cond.notify_all()

    def describe(self) -> str:
        with self.cond:
            return (f"{len(self.free)} of {len(self.gpus)} GPUs free"
                    f"{f', {len(self.waiting)} job(s) waiting' if self.waiting else ''}")


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


def enqueue(job_id: str, priority: float = 0, since: float | None = None) -> None:
    """Put a job's task on the queue; higher priority starts first, then the oldest job. A
    float priority: the jobs of a sweep queue between whole priorities (halving.queue_priority).
    since: when the job was first submitted (its created_at), so a job queued again (resumed,
    recovered) keeps its place ahead of later ones (jobs.queue); None: now."""
    with queued_since(since):
        task_for(get_huey())(job_id, priority=float(priority))


def queued_job_ids(huey: Huey | None = None) -> set[str]:
    """Job ids of the tasks waiting in the queue."""
    huey = huey or get_huey()
    task_for(huey)
    return {t.args[0] for t in huey.pending() if t.name == TASK_NAME and t.args}


# --------------------------------------------------------------------------- the task


def run_job(job_id: str, task=None) -> None:
    ctx = _context
    priority = getattr(task, "priority", None) or 0
    if ctx.stopping.is_set():  # taken while shutting down: leave it for the next worker
        if ctx.link.still_queued(job_id):
            enqueue(job_id, priority, ctx.link.queued_since(job_id))
        return
    gpus = None
    if ctx.gpu_pool is not None and not ctx.link.remote:  # wait for GPUs, then claim
        gpus = _take_gpus(job_id, ctx, priority)
        if gpus is None:
            return
    try:
        job = ctx.link.claim(job_id, ctx.worker_id, ctx.stopping)
    except TimeoutError as exc:  # no owner to answer (jobs/remote.py): leave it queued
        ctx.put_gpus(gpus)
        log.warning("job %s: %s; it goes back on the queue", job_id, exc)
        enqueue(job_id, priority)
        ctx.stopping.wait(5.0)
        return
    if job is None:
        ctx.put_gpus(gpus)
        log.info("job %s is no longer queued; nothing to do", job_id)
        return
    if ctx.gpu_pool is not None and ctx.link.remote:  # a remote worker's own pool, once claimed
        try:
            gpus = ctx.gpu_pool.take(gpus_wanted(job), ctx.stopping.is_set)
        except ValueError as exc:
            ctx.link.worker_error(job, exc)
            return
        if gpus is None:  # the worker stops: the owner finds the job interrupted and resumes it
            return
    log.info("job %s (%s) started, attempt %d%s", job_id, job["name"], job["attempt"],
             f", on GPU(s) {','.join(gpus)}" if gpus else "")
    try:
        _supervise(job, ctx, gpus)
    except Exception as exc:  # the worker must survive anything one job does
        log.exception("job %s: worker error", job_id)
        ctx.link.worker_error(job, exc)


def gpus_wanted(job: dict) -> int:
    """GPUs a job asks for: parallel.gpus for training, one for an export or an eval."""
    if job["kind"] in ONE_PROCESS_KINDS:
        return 1
    return int(((job.get("config") or {}).get("parallel") or {}).get("gpus") or 1)


def _take_gpus(job_id: str, ctx: WorkerContext, priority: float = 0) -> list[str] | None:
    """The GPUs of a queued job from the worker's pool, waiting its turn; None when the job is
    no longer queued or the worker stops (then it is queued again at its task's `priority`; a
    job no worker can serve fails here, clearly)."""
    with store.connect() as db:
        job = store.get_job(db, job_id)
    checked = [0.0]

    def give_up() -> bool:
        if ctx.stopping.is_set():
            return True
        if time.monotonic() - checked[0] < 2:
            return False
        checked[0] = time.monotonic()
        with store.connect() as db:
            return store.get_job(db, job_id)["status"] != "queued"

    try:
        gpus = ctx.gpu_pool.take(gpus_wanted(job), give_up)
    except ValueError as exc:
        with store.connect() as db:
            store.transition(db, job_id, "failed", frm=("queued",), finished_at=store.now(),
                             error=str(exc), hint="resubmit it with fewer parallel.gpus")
        return None
    if gpus is None and ctx.stopping.is_set():
        with store.connect() as db:  # leave it for the next worker
            row = store.get_job(db, job_id)
            if row["status"] == "queued":
                enqueue(job_id, priority, row.get("created_at"))
    return gpus


def _supervise(job: dict, ctx: WorkerContext, gpus: list[str] | None = None) -> None:
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / "log.txt", "ab") as logfile:
            proc = subprocess.Popen(child_command(job["id"], gpus, distributed=launched(job)),
                                    stdout=logfile, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env={**child_env(job, gpus), **ctx.link.child_env(job)},
                                    start_new_session=True)
        ctx.link.started(job, proc.pid, gpus)
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


def launched(job: dict) -> bool:
    """Whether a training job runs under `accelerate launch` even on one GPU: FSDP needs the
    distributed launch to shard (and to offload) at all."""
    return job["kind"] not in ONE_PROCESS_KINDS and \
        ((job.get("config") or {}).get("parallel") or {}).get("strategy") == "fsdp"


def child_command(job_id: str, gpus: list[str] | None = None, distributed: bool = False
                  ) -> list[str]:
    """`python -m jobs.runner JOB_ID`, or under `accelerate launch` (one process per GPU; the
    command engine.training.parallel.launch_command builds) on several GPUs, or when
    `distributed` (FSDP on one GPU)."""
    if gpus and (len(gpus) > 1 or distributed):
        from engine.training.parallel import launch_command

        return launch_command(len(gpus), ["-m", "jobs.runner", job_id], port=free_port())
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


def gpu_pool(gpus: list[str] | None) -> GpuPool | None:
    """The worker's pool of GPUs (None on a worker that leaves devices alone)."""
    return GpuPool(gpus) if gpus else None

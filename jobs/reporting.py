"""What a runner child tells the studio, and how it learns it should stop: the reporter.

Use from Python (jobs/runner.py makes one per child; the job kinds in jobs/kinds/ use it):
    reporter = StoreReporter(job, attempt, main=True, worker_pid=pid)
    reporter.on_metrics({"step": 3, "loss": 1.2})       # engine.training.reporter.Reporter
    reporter.end(job_end(job, "finished"), progress=1.0) # the job's end (jobs/endings.py)

StoreReporter writes into studio.db through jobs.store (rank 0 only writes): every metrics
record and log line, artifacts, exports and evaluation rows, the halving pauses, the heartbeat
(jobs.updated_at) and the end, whose transition() decides a race with a cancel or a newer
attempt. should_stop() answers from the job row: a cancel request, SIGTERM (cancel escalation or
worker shutdown), a worker that died, or a newer attempt that owns the job. Everything a job
kind reports goes through these methods, so another transport (a queue instead of the database)
is one more class of the same shape.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jobs import halving, store
from jobs.endings import End
from jobs.redact import redact

HEARTBEAT_S = 5.0
CHECK_EVERY_S = 0.5


class StoreReporter:
    """engine.training.reporter.Reporter that writes into studio.db (rank 0 only writes)."""

    def __init__(self, job: dict, attempt: int, *, main: bool = True,
                 worker_pid: int | None = None):
        self.job = job
        self.job_id, self.name, self.attempt, self.main = job["id"], job["name"], attempt, main
        self.worker_pid = worker_pid
        self.db = store.connect()
        self.last_step = 0
        self.total_steps: int | None = None
        self.stop_reason: str | None = None
        #: successive halving (jobs/halving.py): pause after the evaluation at this step
        self.rung: int | None = None
        self._checked = 0.0

    # ----------------------------------------------------------------- the engine's callbacks

    def on_metrics(self, record: dict[str, Any]) -> None:
        self.total_steps = record.get("total_steps") or self.total_steps
        step = int(record["step"])
        if self.main and not store.add_metrics(self.db, self.job_id, record,
                                               attempt=self.attempt,
                                               total_steps=self.total_steps):
            self.stop_reason = "superseded"
        if step > self.last_step:
            if self.main and self.last_step:
                store.publish_metrics(self.db, self.job_id, self.last_step, attempt=self.attempt)
            self.last_step = step

    def on_log(self, line: str) -> None:
        line = redact(line)  # no HF_TOKEN or other *_TOKEN/_KEY value in logs (jobs/redact.py)
        print(line, flush=True)
        if self.main:
            store.add_event(self.db, self.job_id, line)

    def should_stop(self) -> bool:
        if self.rung is not None and self.stop_reason is None and self.last_step >= self.rung:
            self.stop_reason = "rung"  # asked after the step's evaluation: its eval_loss is in
        now = time.monotonic()
        if self.stop_reason is None and now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            row = store.get_job(self.db, self.job_id)
            if row["status"] != "running" or row["attempt"] != self.attempt:
                self.stop_reason = "superseded"
            elif row["cancel_requested"]:
                self.stop_reason = "cancel"
            elif self.worker_pid and not pid_alive(self.worker_pid):
                self.stop_reason = "orphaned"
            elif self.main and self.last_step:
                store.publish_metrics(self.db, self.job_id, self.last_step, attempt=self.attempt)
        return self.stop_reason is not None

    def cancel_requested(self) -> bool:
        """Whether a person asked the job to stop (read now: a SIGTERM may have come first)."""
        try:
            return bool(store.get_job(self.db, self.job_id)["cancel_requested"])
        except store.JobNotFound:
            return False

    # ----------------------------------------------------------------- what a job kind records

    @property
    def owns(self) -> bool:
        """This process writes for the job: the main rank of an attempt not superseded."""
        return self.main and self.stop_reason != "superseded"

    def stage_done(self) -> None:
        """One stage of an export or eval job is done (its step counts them)."""
        if self.main:
            store.update(self.db, self.job_id, step=store.Expr("step + 1"),
                         expect={"attempt": self.attempt, "status": "running"})

    def resumed_at(self, step: int) -> int:
        """A training job resumes from its checkpoint at `step`: metric rows past it go (so
        steps continue with no gap and no duplicate); returns how many."""
        self.last_step = step
        return store.truncate_metrics(self.db, self.job_id, step) if self.main else 0

    def job_row(self, job_id: str) -> dict[str, Any]:
        """Another job's row (a parent's), read-only."""
        return store.get_job(self.db, job_id)

    def add_artifact(self, kind: str, path: str | os.PathLike) -> None:
        if self.main:
            store.add_artifact(self.db, self.job_id, kind, path)

    def replace_exports(self, parent_id: str, fmt: str, files: list[tuple[Path, int]],
                        meta: dict | None = None) -> None:
        """The files of an export of job `parent_id` in `fmt` (none: unlist the old ones)."""
        if self.owns:
            store.replace_exports(self.db, parent_id, fmt, files, meta=meta)

    def add_eval(self, job_id: str, record: dict[str, Any], *, kind: str,
                 path: str | os.PathLike, eval_job: str | None = None) -> int | None:
        """Store an evaluation record under training job `job_id`; returns its id."""
        if not self.owns:
            return None
        return store.add_eval(self.db, job_id, record, kind=kind, path=path, eval_job=eval_job)

    def next_rung(self) -> None:
        """Successive halving: the step this job pauses at next (self.rung), if any."""
        if self.main:
            self.rung = halving.next_rung(self.db, self.job_id, self.last_step)

    def left_race(self, paused_at: int | None = None) -> None:
        """The job paused at halving step `paused_at`, or ended otherwise (None): the sweep's
        rung may now be decidable (jobs/halving.py)."""
        if not self.main:
            return
        if paused_at is not None:
            halving.paused(self.db, self.job_id, paused_at)
        else:
            halving.job_left(self.db, self.job_id)

    def end(self, end: End, **fields: Any) -> bool:
        """Record the job's end (jobs.endings.job_end) with extra fields (progress, result)."""
        return self.finish(end.status, **end.fields(), **fields)

    def finish(self, status: str, **fields: Any) -> bool:
        if not self.owns:
            return False
        fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return store.transition(self.db, self.job_id, status, frm=("running",),
                                expect={"attempt": self.attempt}, finished_at=store.now(),
                                **fields)

    def start_heartbeat(self) -> None:
        """Keep jobs.updated_at fresh from a thread while the child lives (main rank)."""
        if not self.main:
            return
        job_id, attempt = self.job_id, self.attempt

        def beat() -> None:
            while True:
                try:
                    with store.connect() as db:
                        store.update(db, job_id, updated_at=store.now(),
                                     expect={"attempt": attempt, "status": "running"})
                except Exception as exc:  # a busy database must not end the heartbeat
                    print(f"heartbeat: {exc}", file=sys.stderr, flush=True)
                time.sleep(HEARTBEAT_S)

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

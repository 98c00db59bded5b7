"""Run one job that a worker has claimed: load it from studio.db (or, started by a remote
worker, from the claim it was given), run it by its kind (train, export, eval: jobs/kinds/),
record the end (jobs/endings.py).

Run as: python -m jobs.runner JOB_ID     (started by the worker, in its own session, with stdout
        and stderr going to FTSTUDIO_HOME/jobs/JOB_ID/log.txt; or under `accelerate launch`)

The child reports through a reporter (jobs/reporting.py: metrics, log lines, artifacts,
evaluation rows, the heartbeat, the end: StoreReporter into studio.db, or RedisReporter as
events to the studio's machine, jobs/remote.py) and asks it "should I stop?": a cancel request,
SIGTERM (cancel escalation or worker shutdown), a worker that died, or a newer attempt that
owns the job. Each kind is a module of jobs/kinds/ with run(job, reporter), found through
jobs.kinds.KINDS.
"""

from __future__ import annotations

import json
import os
import signal
import sys

#: a SIGTERM that arrives while the child is still starting (importing for seconds on a busy
#: machine, before its reporter exists) is noted here and honoured once it runs, rather than
#: ending the process with nothing recorded
_EARLY: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: _EARLY.append(signum))

from jobs import settings, store  # noqa: E402
from jobs.kinds import runner_for  # noqa: E402
from jobs.redact import RedactingStream  # noqa: E402
from jobs.reporting import StoreReporter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jobs.runner JOB_ID", file=sys.stderr)
        return 2
    job_id = argv[0]
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    remote = settings.remote_job()
    if remote:  # a remote worker's child: the job as claimed, and no database
        from jobs.remote import RedisReporter

        job = json.loads(remote)
        reporter = RedisReporter(job, job["attempt"], main=main_rank,
                                 worker_pid=settings.worker_pid())
        return run(job, reporter)
    with store.connect() as db:
        job = store.get_job(db, job_id)
    attempt = settings.job_attempt() or job["attempt"]
    if job["status"] != "running" or job["attempt"] != attempt:
        print(f"job {job_id} is {job['status']} (attempt {job['attempt']}, this runner "
              f"{attempt}); the worker starts runners, not people", file=sys.stderr)
        return 2
    reporter = StoreReporter(job, attempt, main=main_rank, worker_pid=settings.worker_pid())
    return run(job, reporter)


def run(job: dict, reporter) -> int:
    """Run a claimed job with `reporter` (any transport of jobs/reporting.py's shape)."""
    signal.signal(signal.SIGTERM, lambda *_: setattr(reporter, "stop_reason",
                                                     reporter.stop_reason or "terminated"))
    if _EARLY:
        reporter.stop_reason = reporter.stop_reason or "terminated"
    reporter.start_heartbeat()
    return runner_for(job["kind"])(job, reporter)


if __name__ == "__main__":
    sys.exit(main())

"""How a job ended, decided in one place: (how its process ended, its exit code, whether a
cancel was requested, whether its worker is stopping or gone) -> (status, hint).

Use from Python:
    from jobs.endings import job_end
    end = job_end(job, "stopped", step=40, stop_reason="cancel")
    end.status, end.hint, end.fields()     # "cancelled", "stopped at step 40; ...", {...}

Every place that records an end calls it: the runner child when its work finishes, stops or
raises (jobs/runner.py and the job kinds in jobs/kinds/), the worker's task when the child
exited without recording anything (jobs/tasks.py), and the worker's recovery when a running
job's worker is gone (jobs/worker.py). The table (HOW, in order of the checks):

    how        cancel   worker stopping/gone   -> status
    finished     -            -                   completed
    paused       -            -                   interrupted (successive halving; no auto-resume)
    stopped     yes           -                   cancelled
    stopped      no          yes                  interrupted (resumes when a worker starts)
    stopped      no           no                  cancelled
    raised       -            -                   failed (hint: the explained exception)
    exited      yes           -                   cancelled (stopped by force)
    exited       no          yes                  interrupted (resumes when a worker starts)
    exited       no           no                  failed (hint: the explained exit code)
    lost        yes           -                   cancelled
    lost         no           -                   interrupted (resumes when a worker starts)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import explain_exception, explain_exit

#: how a job's process can end: its work finished; it paused at a halving step; it stopped
#: early when asked; it raised; it exited without recording its end; its worker is gone
HOW = ("finished", "paused", "stopped", "raised", "exited", "lost")
#: the runner's stop reasons (SIGTERM, its worker's pid gone) that mean "the worker went away"
WORKER_GONE = {"terminated": "its worker stopped", "orphaned": "its worker died"}
#: job kinds that run again from the start rather than continue from a checkpoint
RERUN_KINDS = ("export", "eval", "prune")
#: what the hint calls each kind's process when it dies
PROCESS = {"export": "the export process", "eval": "the evaluation process",
           "prune": "the pruning process"}


@dataclass(frozen=True)
class End:
    """The status a job ends in, the hint people read, and whether a starting worker resumes
    it; error only for failures."""

    status: str
    hint: str | None = None
    error: str | None = None
    resume_on_start: int = 0

    def fields(self) -> dict[str, Any]:
        """The job-row fields to write with the transition."""
        out: dict[str, Any] = {"hint": self.hint, "resume_on_start": self.resume_on_start}
        if self.status == "failed":
            out["error"] = self.error
        return out


def job_end(job: dict[str, Any], how: str, *, code: int | None = None, cancel: bool = False,
            stopping: bool = False, stop_reason: str | None = None, step: int | None = None,
            stage: str | None = None, reason: str | None = None,
            exc: BaseException | None = None, error: str | None = None,
            data_file: str | None = None, log_path: Path | None = None) -> End:
    """The End of `job` (a row: id and kind are read) that ended `how` (one of HOW).

    code: the exit code ("exited"). cancel: a cancel was requested. stopping: the worker is
    stopping ("exited"), or, for "stopped", implied by stop_reason in WORKER_GONE. step: the
    step it stopped at (training); stage: what was running (an export's or eval's "export
    gguf", "evaluation"), named in the hint instead of a step. reason: why recovery found the
    worker gone ("lost"). exc (+ data_file, log_path): what it raised; error: the headline
    of an engine error whose message is itself the hint (ExportError, EvalError)."""
    if how not in HOW:
        raise ValueError(f"unknown end {how!r}; use one of: {', '.join(HOW)}")
    rerun = job.get("kind") in RERUN_KINDS
    resume = f"`ftstudio jobs resume {job['id']}` " + (
        "runs it again" if rerun else "continues from the last checkpoint")
    at = f"during {stage}" if stage else f"at step {step}"
    if how == "finished":
        return End("completed")
    if how == "paused":
        return End("interrupted", f"paused at step {step} for the sweep's successive halving: "
                                  "it continues, or is cut, once every job of the sweep has "
                                  "reached this step")
    if how == "stopped":
        gone = WORKER_GONE.get(stop_reason or "")
        if cancel or stop_reason == "cancel":
            return End("cancelled", (f"{stage} stopped before it finished" if stage
                                     else f"stopped at step {step}") + f"; {resume}")
        if gone or stopping:
            return End("interrupted", f"{gone or 'its worker stopped'} {at}; it "
                                      f"{'runs again' if rerun else 'resumes'} when a worker "
                                      f"starts, or {resume}", resume_on_start=1)
        return End("cancelled", f"{stage} stopped before it finished; {resume}" if stage
                   else f"stopped at step {step}")
    if how == "raised":
        if error is not None:
            return End("failed", str(exc) if exc is not None else None, error)
        error, hint = explain_exception(exc, data_file, log_path)
        return End("failed", hint, error)
    if how == "exited":
        if cancel:
            return End("cancelled", f"stopped by force after the cancel grace period; {resume}")
        if stopping:
            return End("interrupted", f"the worker shut down; it resumes when a worker starts, "
                                      f"or {resume}", resume_on_start=1)
        error, hint = explain_exit(code if code is not None else -1, log_path, job["id"],
                                   what=PROCESS.get(job.get("kind"), "the training process"))
        return End("failed", hint, error)
    # lost: recovery found the job running with its worker gone
    if cancel:
        return End("cancelled", f"{reason} after the cancel request")
    return End("interrupted", f"{reason}; it " + (
        "runs again" if rerun else "resumes from its last checkpoint") +
        f" when a worker starts, or `ftstudio jobs resume {job['id']}`", resume_on_start=1)

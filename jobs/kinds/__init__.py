"""The job kinds the runner can run, one module each, all with the same entry
`run(job, reporter) -> exit code` (jobs/runner.py dispatches on the job row's kind through
KINDS):

- jobs.kinds.train       a training job: engine.training.loop.run (or FTSTUDIO_TRAIN_ENTRY)
- jobs.kinds.export      an export of a finished job (engine.export.export), stage by stage
- jobs.kinds.evaluation  a generation evaluation of a finished job (kind "eval")
- jobs.kinds.prune       pruning a model to a target, then queueing its healing (jobs/prune_job.py)
- jobs.kinds.stages      what export, eval and prune share: progress by logged stage, cancel between

A new kind is a module here with a `run(job, reporter)` and a line in
KINDS; it reports only through the reporter (jobs/reporting.py) and records its end with
jobs.endings.job_end, so it needs nothing from the database.
"""

from __future__ import annotations

from typing import Callable

from jobs.kinds import evaluation, export, prune, train

#: job kind (the jobs.kind column) -> its run(job, reporter) -> exit code
KINDS: dict[str, Callable[..., int]] = {
    "train": train.run,
    "export": export.run,
    "eval": evaluation.run,
    "prune": prune.run,
}


def runner_for(kind: str) -> Callable[..., int]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r}; this worker runs: {', '.join(KINDS)} "
                         "(a newer studio queued it? update the worker)") from None

"""A prune job (kind "prune"): prune a model, or a finished job's merged model, to a target, then
queue the healing distillation job (jobs/prune_job.py holds the stages and the submit side).

Run as: python -m jobs.runner JOB_ID   (the runner dispatches kind "prune" here)
"""

from __future__ import annotations

from jobs.kinds.stages import run_stages
from jobs.prune_job import run_prune


def run(job: dict, reporter) -> int:
    return run_prune(job, reporter, run_stages)

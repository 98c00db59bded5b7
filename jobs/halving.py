"""Successive halving of a sweep group: at each of its halving steps, the worse half of the
jobs still in the race (by eval loss at that step) is cut, the better half continues. And the
queue order of a sweep's jobs (queue_priority), which the worker, the api and the sweeps use
alike (here, not in jobs/sweeps.py, which imports jobs/api.py).

Use from Python (the runner and jobs.api call these; nothing else needs to):
    halving.next_rung(db, job_id, after_step)    # the step this job pauses at next, or None
    halving.paused(db, job_id, step)             # it paused there: decide the rung if all have
    halving.job_left(db, job_id)                 # it ended otherwise: the rung may be decidable
    halving.queue_priority(db, job)              # where a (sweep's) job stands on the queue

How it runs on the queue, with any number of workers: a job of a halving sweep evaluates at the
halving step (the step is a multiple of train.eval_every, checked when the sweep is queued),
saves a checkpoint and stops as `interrupted`, "paused at step N". When no job of the group is
still on its way to that step (every one is paused there, or has failed, been cancelled or
finished), the last one to arrive decides, once (store.claim_rung, under the write lock): the
ceil(n/2) with the lowest eval loss at that step are queued again and continue from their
checkpoint, the others become `cancelled` with the reason in their hint. With one worker the
group trains one job at a time to the step, then the better half on; with several, in parallel.
"""

from __future__ import annotations

import math
from typing import Any

from jobs import store, tasks

METRIC = "eval_loss"


def next_rung(db, job_id: str, after_step: int) -> int | None:
    """The first halving step past `after_step` of the job's sweep, or None (no sweep, no
    halving, or past every step)."""
    member = store.sweep_of(db, job_id)
    if member is None:
        return None
    steps = store.get_sweep(db, member["sweep_id"])["halving"] or []
    return next((s for s in sorted(steps) if s > after_step), None)


def paused(db, job_id: str, step: int) -> None:
    """Record that the job paused at halving step `step`, then decide the rung if it can be."""
    store.set_sweep_job(db, job_id, paused_at=int(step))
    job_left(db, job_id)


def job_left(db, job_id: str) -> None:
    """A job of a sweep stopped (paused, failed, cancelled, completed): decide what can be."""
    member = store.sweep_of(db, job_id)
    if member is not None:
        advance(db, member["sweep_id"])


def advance(db, sweep_id: str) -> list[dict[str, Any]]:
    """Decide every halving step of the sweep that is due; returns the decisions
    [{step, kept: [job ids], cut: [job ids]}] (empty when nothing was due)."""
    sweep = store.get_sweep(db, sweep_id)
    decided = []
    for step in sorted(sweep["halving"] or []):
        if step <= (sweep["rung_done"] or 0):
            continue
        members = store.claim_rung(db, sweep_id, step, lambda ms, s=step: _ready(ms, s))
        if members is None:
            break
        decided.append(_cut(db, [m for m in members if _reached(m, step)], step))
    return decided


def in_race(member: dict[str, Any]) -> bool:
    """Not cut by halving, not failed or cancelled by a person."""
    return member["cut_at"] is None and member["status"] not in ("failed", "cancelled")


def _reached(member: dict[str, Any], step: int) -> bool:
    return in_race(member) and member["status"] == "interrupted" and \
        (member["paused_at"] or 0) >= step


def _ready(members: list[dict[str, Any]], step: int) -> bool:
    """Every job still in the race is paused at `step` (or has completed before it)."""
    race = [m for m in members if in_race(m)]
    return any(_reached(m, step) for m in race) and \
        all(_reached(m, step) or m["status"] == "completed" for m in race)


def _cut(db, reached: list[dict[str, Any]], step: int) -> dict[str, Any]:
    losses = store.metric_at(db, [m["id"] for m in reached], METRIC, step)
    ranked = sorted(reached, key=lambda m: (losses.get(m["id"], (0, math.inf))[1],
                                            m["sweep_index"]))
    keep = math.ceil(len(ranked) / 2)
    n = len(ranked)
    for rank, m in enumerate(ranked[keep:], start=keep + 1):
        loss = losses.get(m["id"], (step, math.nan))[1]
        store.set_sweep_job(db, m["id"], cut_at=step, paused_at=None)
        store.transition(db, m["id"], "cancelled", frm=("interrupted",), resume_on_start=0,
                         note=f"cut by successive halving at step {step}",
                         hint=f"cut by successive halving at step {step}: eval loss "
                              f"{loss:.4f}, rank {rank} of {n}; `ftstudio jobs resume "
                              f"{m['id']}` continues it anyway")
    for m in ranked[:keep]:
        _continue(db, m, step)
    return {"step": step, "kept": [m["id"] for m in ranked[:keep]],
            "cut": [m["id"] for m in ranked[keep:]]}


def queue_priority(db, job: dict[str, Any]) -> float:
    """The priority a job's task is queued at: its priority, and for the k-th job of a sweep
    (k from 0) that minus k/(k+1). A sweep's first job ties with a single job of the same
    priority, each later one ranks lower but above the next priority down, so a single job
    waits for at most one job of each sweep ahead of it, and sweeps of several people take
    turns (SQLite and Redis both run the highest priority first, FIFO within one)."""
    member = store.sweep_of(db, job["id"])
    k = member["idx"] if member else 0
    return float(job["priority"] or 0) - k / (k + 1)


def _continue(db, job: dict[str, Any], step: int) -> None:
    """Queue a paused job again; it resumes from the checkpoint it saved at `step`."""
    config = dict(job["config"])
    config["train"] = {**config["train"], "resume_from": "latest"}
    store.set_sweep_job(db, job["id"], paused_at=None)
    if store.transition(db, job["id"], "queued", frm=("interrupted",), config=config,
                        error=None, hint=None, finished_at=None, cancel_requested=0,
                        resume_on_start=0, note=f"kept by successive halving at step {step}"):
        tasks.enqueue(job["id"], queue_priority(db, job), job.get("created_at"))

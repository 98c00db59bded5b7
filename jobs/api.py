"""What the UI and the CLI call: submit, list, inspect, follow, cancel, resume, clone, delete.

Use from Python:
    from jobs import api
    job = api.submit(cfg, owner="local", priority=0, name="my-run")   # cfg: TrainConfig or dict
    api.metrics(job["id"], since_step=last_seen_step)    # only whole steps after last_seen_step
    api.logs(job["id"], since=last_seen_event_id)
    api.cancel(job["id"]); api.resume(job["id"])

Every function returns plain dicts (JSON-ready; times are unix seconds) and raises
engine.config.ConfigError (bad config, every problem listed) or jobs.store.JobError (JobNotFound,
or a request the job's status does not allow; the message says what to do instead).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Problem, TrainConfig, apply_overrides, from_dict, \
    is_local_model, validate
from jobs import store, tasks
from jobs.runner import latest_checkpoint_step
from jobs.store import JobError, JobNotFound

__all__ = ["submit", "list_jobs", "get", "metrics", "logs", "cancel", "resume", "clone",
           "delete", "artifacts", "JobError", "JobNotFound", "ConfigError"]


def submit(config: TrainConfig | dict, owner: str = "local", priority: int = 0,
           name: str | None = None) -> dict[str, Any]:
    """Validate (every problem at once, as ConfigError), record the job as queued, enqueue it.
    Relative model and data paths are made absolute so the worker finds them."""
    cfg = from_dict(config) if isinstance(config, dict) else config.copy()
    job_id = store.new_id()
    cfg.output_dir = str(store.job_dir(job_id))
    _absolute_paths(cfg)
    problems = validate(cfg)
    if cfg.train.resume_from == "latest":
        problems.append(Problem("train.resume_from", "latest: a new job has no checkpoints; "
                                "to continue a job use `ftstudio jobs resume ID`, or name a "
                                "checkpoint folder (output_dir/checkpoints/step-N)"))
    if problems:
        raise ConfigError(problems)
    with store.connect() as db:
        store.insert_job(db, config=cfg.to_dict(), name=name, owner=owner,
                         priority=int(priority), job_id=job_id)
        _enqueue_or_fail(db, job_id, priority)
        return _public(store.get_job(db, job_id))


def list_jobs(owner: str | None = None, status: str | list[str] | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Newest first; filter by owner and status (one or several)."""
    with store.connect() as db:
        return [_public(j) for j in store.list_jobs(db, owner=owner, status=status,
                                                    limit=limit)]


def get(job_id: str) -> dict[str, Any]:
    """One job: status, progress (0-1), step/total_steps, error and hint, config, result
    metrics, times, output_dir, adapter_dir, artifacts."""
    with store.connect() as db:
        job = _public(store.get_job(db, job_id))
        job["artifacts"] = store.artifacts(db, job_id)
        return job


def metrics(job_id: str, since_step: int = -1) -> list[dict[str, Any]]:
    """Metrics records after `since_step`, one dict per step ({step, epoch, loss, lr, grad_norm,
    tokens_per_s, and at eval steps eval_loss, eval_perplexity, eval_token_accuracy}). While a
    job runs only whole steps are returned, so the next poll passes the last step it got."""
    with store.connect() as db:
        return store.metrics(db, job_id, since_step)


def logs(job_id: str, since: int = 0) -> list[dict[str, Any]]:
    """Log lines and status changes after event id `since`: [{id, time, level, line}]."""
    with store.connect() as db:
        store.get_job(db, job_id)
        return store.events(db, job_id, since)


def cancel(job_id: str) -> dict[str, Any]:
    """A queued (or interrupted) job never starts; a running one is asked to stop: it saves a
    checkpoint and ends as cancelled within seconds, or its worker kills it after
    FTSTUDIO_CANCEL_GRACE seconds (SIGTERM, then SIGKILL)."""
    with store.connect() as db:
        if store.transition(db, job_id, "cancelled", frm=("queued", "interrupted"),
                            finished_at=store.now(), resume_on_start=0,
                            hint=f"cancelled before it ran; `ftstudio jobs resume {job_id}` "
                                 "queues it again"):
            return _public(store.get_job(db, job_id))
        if store.update(db, job_id, cancel_requested=1, cancel_requested_at=store.now(),
                        expect={"status": "running", "cancel_requested": 0}):
            store.add_event(db, job_id, "cancel requested: stopping at the next step", "status")
        job = store.get_job(db, job_id)
        if job["status"] != "running":
            raise JobError(f"job {job_id} is already {job['status']}; nothing to cancel")
        return _public(job)


def resume(job_id: str) -> dict[str, Any]:
    """Queue an interrupted, failed or cancelled job again as the SAME job: it continues from
    its newest checkpoint (train.resume_from=latest) or starts over when it has none."""
    with store.connect() as db:
        job = store.get_job(db, job_id)
        step = latest_checkpoint_step(Path(job["output_dir"]))
        config = dict(job["config"])
        own = config["train"].get("resume_from")  # a checkpoint folder it started from
        config["train"] = {**config["train"], "resume_from": "latest" if step is not None
                           else (own if own != "latest" else None)}
        if not store.transition(db, job_id, "queued", config=config, error=None, hint=None,
                                finished_at=None, cancel_requested=0, resume_on_start=0,
                                note=f"resume from step {step}" if step else "start over"):
            raise JobError(f"job {job_id} is {job['status']}; only interrupted, failed or "
                           "cancelled jobs can be resumed")
        store.truncate_metrics(db, job_id, step or 0)  # steps continue with no duplicate
        _enqueue_or_fail(db, job_id, job["priority"])
        return _public(store.get_job(db, job_id))


def clone(job_id: str, *, name: str | None = None, owner: str | None = None,
          priority: int | None = None, **changes: Any) -> dict[str, Any]:
    """Submit a new job with this job's config and `changes`: dotted keys
    (clone(id, **{"train.lr": 1e-4})) or sections (clone(id, train={"lr": 1e-4}))."""
    job = get(job_id)
    data = dict(job["config"])
    data["train"] = {**data["train"], "resume_from": None}
    overrides = []
    for key, value in changes.items():
        if "." in key:
            overrides.append(f"{key}={_yaml_value(value)}")
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            raise ConfigError([Problem(key, "unknown change; pass a dotted key such as "
                                            "train.lr or a section dict such as train={...}")])
    cfg = apply_overrides(from_dict(data), overrides)
    return submit(cfg, owner=owner or job["owner"],
                  priority=job["priority"] if priority is None else priority,
                  name=name or f"{job['name']}-copy")


def delete(job_id: str) -> dict[str, Any]:
    """Remove a job's rows and its folder; refused while it runs (cancel it first)."""
    with store.connect() as db:
        job = store.get_job(db, job_id)
        if job["status"] == "running" or not store.delete_job(db, job_id):
            raise JobError(f"job {job_id} is running; cancel it first "
                           f"(`ftstudio jobs cancel {job_id}`)")
    folder = Path(job["output_dir"] or store.job_dir(job_id))
    if folder.resolve().is_relative_to(store.home()):  # never outside FTSTUDIO_HOME
        shutil.rmtree(folder, ignore_errors=True)
    return {"id": job_id, "deleted": True}


def artifacts(job_id: str) -> list[dict[str, Any]]:
    with store.connect() as db:
        store.get_job(db, job_id)
        return store.artifacts(db, job_id)


# --------------------------------------------------------------------------- helpers


def _enqueue_or_fail(db, job_id: str, priority: int) -> None:
    try:
        tasks.enqueue(job_id, priority)
    except Exception as exc:  # the queue (Redis) is unreachable: say so, keep nothing queued
        store.transition(db, job_id, "failed", frm=("queued",), finished_at=store.now(),
                         error=f"could not reach the queue: {exc}",
                         hint="check FTSTUDIO_REDIS_URL and that Redis is running, then "
                              f"`ftstudio jobs resume {job_id}`")
        raise JobError(f"could not enqueue job {job_id}: {exc}") from exc


def _absolute_paths(cfg: TrainConfig) -> None:
    if is_local_model(cfg.model.name):
        cfg.model.name = str(Path(cfg.model.name).expanduser().resolve())
    for key in ("train", "validation"):
        value = getattr(cfg.data, key)
        if value and Path(value).expanduser().exists():
            setattr(cfg.data, key, str(Path(value).expanduser().resolve()))


def _public(job: dict[str, Any]) -> dict[str, Any]:
    job = dict(job)
    job["cancel_requested"] = bool(job.get("cancel_requested"))
    job["resume_on_start"] = bool(job.get("resume_on_start"))
    return job


def _yaml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


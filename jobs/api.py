"""What the UI and the CLI call: submit, export, list, inspect, follow, cancel, resume, clone,
delete, and the files to download.

Use from Python:
    from jobs import api
    job = api.submit(cfg, owner="local", priority=0, name="my-run")   # cfg: TrainConfig or dict
    api.metrics(job["id"], since_step=last_seen_step)    # only whole steps after last_seen_step
    api.metric_buckets(job["id"], points=1500)           # a long curve in <= 1500 buckets
    api.measured_throughput(model_name, "lora")          # tokens/s of a finished run, or None
    api.logs(job["id"], since=last_seen_event_id)
    api.cancel(job["id"]); api.resume(job["id"])
    exp = api.export(job["id"], "gguf-q8_0")             # an export job on the same queue
    ev = api.evaluate(job["id"], data="held-out.jsonl")  # an eval job: base vs tuned answers
    api.job_eval(job["id"], which="got worse")           # the newest evaluation and its rows
    api.finished_with_adapter(api.get(job["id"]))        # may it be exported and evaluated?
    api.report_for(cfg, tokenizer)                       # a data report, kept (jobs/reports.py)
    for a in api.artifacts(job["id"]):                   # the adapter, then each exported file
        api.artifact_path(job["id"], a["path"])          # -> the file, checked to be inside

Each function that acts on jobs takes `actor`: a jobs.users user dict, or None (the default) for
local mode with no restriction. A non-admin actor sees only its own jobs: another owner's job is
JobNotFound, worded like a missing one (jobs/access.py holds the rules).

Every function returns plain dicts (JSON-ready; times are unix seconds) and raises
engine.config.ConfigError (bad config, every problem listed) or jobs.store.JobError (JobNotFound,
or a request the job's status does not allow; the message says what to do instead).

About 480 lines: the one facade over jobs.store, jobs.tasks and jobs.access that every caller
uses (each function a few lines of checks and one transaction), kept together so the rules a
request passes are read in one place; continuing a job (jobs.continuation) and sweeps
(jobs.sweeps) build on it in modules of their own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Problem, TrainConfig, apply_overrides, from_dict, \
    is_local_model, validate
from jobs import access, halving, settings, store, tasks
from jobs.reports import kept_report, measured_throughput, preview_for, report_for, \
    time_estimate
from jobs.store import ACTIVE, FINISHED, STATUSES, JobError, JobNotFound

#: a continued job's starting point, in its own folder: its parent's adapter merged into the
#: parent's base (jobs.runner writes it before training; jobs.continuation)
START_MODEL = "start_model"

__all__ = ["STATUSES", "ACTIVE", "FINISHED", "submit", "export", "evaluate", "finished_with_adapter", "job_eval",
           "list_jobs", "get", "metrics", "metric_buckets", "measured_throughput",
           "report_for", "preview_for", "kept_report", "time_estimate", "logs", "cancel", "resume", "clone",
           "delete", "artifacts", "artifact_path", "path_in_job", "prepare", "JobError", "JobNotFound",
           "ConfigError"]


def submit(config: TrainConfig | dict, owner: str | None = None, priority: int = 0,
           name: str | None = None, actor: dict | None = None, parent: str | None = None
           ) -> dict[str, Any]:
    """Validate (every problem at once, as ConfigError), record the job as queued, enqueue it.
    Relative model and data paths are made absolute so the worker finds them. With an actor the
    job is theirs (an admin may name another owner), the config must pass jobs.access (remote
    code, which files) and a non-admin may have at most FTSTUDIO_MAX_QUEUED_PER_USER queued.

    parent: a finished training job this one starts from (jobs.continuation): the config names
    the parent's base, and is checked so; the job then trains from START_MODEL in its own
    folder, which the runner makes first by merging the parent's adapter into that base."""
    owner = access.owner_of(actor, owner)
    job_id = store.new_id()
    cfg, problems = prepare(config, job_id, actor)
    if parent is not None:
        cfg.model.name = str(store.job_dir(job_id) / START_MODEL)
    if problems:
        raise ConfigError(problems)
    with store.connect() as db:
        access.check_queue_limit(db, actor)
        store.insert_job(db, config=cfg.to_dict(), name=name, owner=owner,
                         priority=int(priority), job_id=job_id, parent=parent)
        _enqueue_or_fail(db, job_id, priority)
        return _public(store.get_job(db, job_id))


def prepare(config: TrainConfig | dict, job_id: str, actor: dict | None = None
            ) -> tuple[TrainConfig, list[Problem]]:
    """The config a new training job `job_id` would run (its output_dir set, local paths made
    absolute) and every problem with it, as submit() checks them (jobs.access's first)."""
    cfg = from_dict(config) if isinstance(config, dict) else config.copy()
    cfg.output_dir = str(store.job_dir(job_id))
    _absolute_paths(cfg)
    teacher_problem = _teacher_of_job(cfg)
    problems = access.screened(cfg, actor, validate(cfg))  # the access rules first
    if teacher_problem:
        problems = [x for x in problems if x.key != "train.teacher"] + [teacher_problem]
    if cfg.train.resume_from == "latest":
        problems.append(Problem("train.resume_from", "latest: a new job has no checkpoints; "
                                "to continue a job use `ftstudio jobs resume ID`, or name a "
                                "checkpoint folder (output_dir/checkpoints/step-N)"))
    if not problems:
        problems.extend(check_fits(cfg))
    return cfg, problems


def worker_devices() -> tuple[int, Any] | None:
    """(how many GPUs a job can get, the estimate's Device for one of them) of the studio's
    workers: FTSTUDIO_WORKER_GPUS (COUNTxGiB) when set, else this machine's CUDA GPUs; None
    where the workers have no GPU (or the setting says "off")."""
    from engine.models.estimate import Device, GiB, gpu_count

    declared = settings.worker_gpus()
    if declared == "off":
        return None
    if declared:
        count, gib = declared
        return count, Device("cuda", f"{gib:g} GB GPU", int(gib * GiB), int(gib * GiB), True)
    here = _local_device()
    return (gpu_count(), here) if here.kind == "cuda" else None


def check_fits(cfg: TrainConfig) -> list[Problem]:
    """A job that cannot fit the workers' devices could only fail in a worker: refuse it,
    naming what to change. The devices: FTSTUDIO_WORKER_GPUS (COUNTxGiB) when set, else this
    machine's GPUs or RAM when the queue is local (SQLite: the workers run here); with a Redis
    queue and no setting (or "off") there is no check (the workers may be anywhere). The need
    is per GPU under the job's own parallel settings (engine.models.estimate.per_gpu_bytes):
    a model that fits only sharded over parallel.gpus GPUs passes."""
    from engine.models.estimate import estimate_for, human_bytes, per_gpu_bytes

    declared = settings.worker_gpus()
    if declared == "off" or (declared is None and settings.redis_url()):
        return []   # workers elsewhere, their devices not given: they say it when loading
    gpus = worker_devices()
    count, device = gpus if gpus else (1, _local_device())
    where = (f"FTSTUDIO_WORKER_GPUS={settings.text('FTSTUDIO_WORKER_GPUS')}" if declared else
             f"{device.name} on this machine; set FTSTUDIO_WORKER_GPUS when the workers run "
             "elsewhere")
    p = cfg.parallel
    if gpus and p.gpus > count:
        return [Problem("parallel.gpus", f"the job asks for {p.gpus} GPUs but a worker has "
                                         f"{count} ({where}); ask for {count} or fewer")]
    try:
        est = estimate_for(cfg, device=device)
    except Exception:  # noqa: BLE001 - an odd config.json: the worker's load says what is wrong
        return []
    capacity = device.total_bytes
    if est is None or capacity <= 0:
        return []
    need = est.peak_bytes
    if gpus and p.strategy != "ddp":
        sharded = per_gpu_bytes(est, "fsdp_offload" if p.cpu_offload else "fsdp", p.gpus,
                                p.reshard_after_forward)
        need = min(need, sharded) if p.strategy == "auto" else sharded
    if need <= capacity:
        return []
    part, size = max(est.parts.items(), key=lambda kv: kv[1])
    key = {"weights": "model.name", "activations": "train.batch_size",
           "logits": "data.max_seq_len"}.get(part, "method.r" if cfg.method.kind in
                                             ("lora", "dora", "qlora") else "method.kind")
    shard = " (per GPU, as parallel.* asks)" if need != est.peak_bytes else ""
    more = ", or ask for more GPUs with parallel.strategy fsdp" if gpus and count > 1 else ""
    return [Problem(key, f"the job needs about {human_bytes(need)}{shard} at its peak "
                         f"({part} {human_bytes(size)}) but the largest device a worker has "
                         f"holds {human_bytes(capacity)} ({where}); lower method.r, "
                         "train.batch_size or data.max_seq_len, or choose qlora or a smaller "
                         f"model{more}")]


_device_seen: tuple[float, Any] | None = None


def _local_device() -> Any:
    """This machine's device (engine.models.estimate.detect_device), looked up once a minute."""
    global _device_seen
    import time

    from engine.models.estimate import detect_device

    if _device_seen is None or time.monotonic() - _device_seen[0] > 60:
        _device_seen = (time.monotonic(), detect_device())
    return _device_seen[1]


def export(job_id: str, fmt: str, owner: str | None = None, actor: dict | None = None,
           verify: bool = True) -> dict[str, Any]:
    """Queue an export of a training job as fmt (one of engine.export.FORMATS); returns the
    export job (kind "export", parent job_id, config {"format", "parent", "verify"}, the
    parent's owner). verify=False skips the check of the written files against the tuned model
    (engine/export/verify.py), and the job's result says so.

    A worker runs engine.export.export(parent folder, fmt) in a child process, logging each
    stage; the files land in the parent's exports/<fmt>/ and are recorded as the PARENT's
    artifacts with their sizes (an earlier export in that format is rewritten, and unlisted when
    this one starts). Refused up front (JobError, nothing queued): an unknown job or format, a
    job that is not a finished training job (completed, or stopped with an adapter/ saved), a
    format the method cannot be exported as (the engine's message), or `owner` given (the
    person asking) and not the job's owner."""
    from engine.export import FORMATS, ExportError, check_mergeable, read_run

    if fmt not in FORMATS:
        raise JobError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    with store.connect() as db:
        parent = _job(db, job_id, actor)
    if owner is not None and owner != parent["owner"]:
        raise JobError(f"job {job_id} belongs to {parent['owner']}, not {owner}")
    _check_finished(parent, "export", "it has completed (follow it with `ftstudio jobs logs "
                                      f"{job_id} --follow`)")
    try:
        run = read_run(store.folder_of(parent))
        if fmt != "adapter":
            check_mergeable(run, fmt)  # the engine's rule: virtual tokens cannot be merged
    except ExportError as exc:
        raise JobError(str(exc)) from exc
    export_id = store.new_id()
    with store.connect() as db:
        access.check_queue_limit(db, actor)
        store.insert_job(db, config={"format": fmt, "parent": job_id, "verify": bool(verify)},
                         kind="export",
                         name=f"{parent['name']}-{fmt}", owner=parent["owner"],
                         priority=parent["priority"], job_id=export_id, parent=job_id,
                         output_dir=str(store.job_dir(export_id)))
        _enqueue_or_fail(db, export_id, parent["priority"])
        return _public(store.get_job(db, export_id))


def evaluate(job_id: str, data: str | None = None, max_new_tokens: int | None = None,
             max_records: int | None = None, actor: dict | None = None) -> dict[str, Any]:
    """Queue a generation evaluation of a training job: the base and the tuned model answer the
    job's held-out prompts (or those of `data`, any file in a supported format) greedily, and
    each answer is scored against its reference (engine/evaluation/evaluate.py). Returns the eval job
    (kind "eval", parent job_id); its record is stored under the PARENT (job_eval shows it).
    Refused up front (JobError / ConfigError, nothing queued): a job that is not a finished
    training job, a missing or unreadable data file, a data file the actor may not use, or
    limits below 1."""
    from engine.data import DataError, check_file

    with store.connect() as db:
        parent = _job(db, job_id, actor)
    _check_finished(parent, "evaluate", "it has finished (training ends with an evaluation of "
                                        "its own when it has a validation split)")
    problems = []
    for key, value in (("max_new_tokens", max_new_tokens), ("max_records", max_records)):
        if value is not None and int(value) < 1:
            problems.append(Problem(key, f"{value} must be at least 1, or empty"))
    if data:
        path = Path(data).expanduser()
        data = str(path.resolve()) if path.exists() else str(path)
        cfg = from_dict(parent["config"])
        cfg.data.train, cfg.data.validation = data, None
        refused = [Problem("data", pr.message) for pr in access.config_problems(cfg, actor)
                   if pr.key == "data.train"]
        problems += refused
        if not refused:
            try:
                check_file(data)
            except (DataError, OSError) as exc:
                problems.append(Problem("data", str(exc)))
    if problems:
        raise ConfigError(problems)
    eval_id = store.new_id()
    with store.connect() as db:
        access.check_queue_limit(db, actor)
        store.insert_job(db, config={"parent": job_id, "data": data or None,
                                     "max_new_tokens": max_new_tokens,
                                     "max_records": max_records},
                         kind="eval", name=f"{parent['name']}-eval", owner=parent["owner"],
                         priority=parent["priority"], job_id=eval_id, parent=job_id,
                         output_dir=str(store.job_dir(eval_id)))
        _enqueue_or_fail(db, eval_id, parent["priority"])
        return _public(store.get_job(db, eval_id))


def finished_with_adapter(job: dict[str, Any] | None) -> bool:
    """What can be exported and evaluated: a training job that completed, or that stopped
    (failed, cancelled, interrupted) after saving its adapter/. The rule of export() and
    evaluate(), and of the studio's Export and Evaluation sections."""
    if not job or job["kind"] != "train" or job["status"] not in store.FINISHED:
        return False
    return job["status"] == "completed" or (store.folder_of(job) / "adapter").is_dir()


def _check_finished(job: dict[str, Any], verb: str, once: str) -> None:
    """Refuse (JobError) to `verb` a job finished_with_adapter() rejects, saying why."""
    if finished_with_adapter(job):
        return
    job_id, status = job["id"], job["status"]
    if job["kind"] != "train":
        raise JobError(f"job {job_id} is an {job['kind']} job, not a training job; {verb} "
                       f"the job it came from ({job['parent']})")
    if status not in store.FINISHED:
        raise JobError(f"job {job_id} is {status}; {verb} it once {once}")
    raise JobError(f"job {job_id} is {status} and saved no adapter, so there is nothing to "
                   f"{verb}; `ftstudio jobs resume {job_id}` continues it")


def job_eval(job_id: str, eval_id: int | None = None, which: str = "all",
             limit: int | None = None, actor: dict | None = None) -> dict[str, Any]:
    """A training job's generation evaluation (the newest, or eval_id) and its rows, filtered
    by `which` (all, changed, still wrong, got worse): {"eval": {id, kind, step, n, source,
    metrics, seconds, card, ...} or None, "rows": [...], "evals": [every evaluation, newest
    first, without rows], "filters": [...]}."""
    from engine.evaluation.evaluate import card_line

    with store.connect() as db:
        _job(db, job_id, actor)
        every = store.evals(db, job_id)
        for e in every:
            e["card"] = card_line(e) if e.get("metrics") else ""
        chosen = next((e for e in every if eval_id is None or e["id"] == int(eval_id)), None)
        if eval_id is not None and chosen is None:
            raise JobNotFound(f"job {job_id} has no evaluation {eval_id}; job_eval(job_id) "
                              "lists its evaluations under 'evals'")
        rows = store.eval_rows(db, chosen["id"], eval_filter(which), limit) if chosen else []
        return {"eval": chosen, "rows": rows, "evals": every, "filters": list(EVAL_FILTERS)}


#: the evaluation table's filters, as the job page words them -> the store's row conditions
EVAL_FILTERS = {
    "all": (),
    "changed": ("changed",),
    "still wrong": ("both_wrong",),
    "got worse": ("worse",),
}


def eval_filter(which: str) -> tuple[str, ...]:
    """The store's row conditions (store.ROW_CONDITIONS) of the filter named `which`."""
    if which not in EVAL_FILTERS:
        raise ValueError(f"unknown filter {which!r}; use one of: {', '.join(EVAL_FILTERS)}")
    return EVAL_FILTERS[which]


def list_jobs(owner: str | None = None, status: str | list[str] | None = None,
              limit: int | None = None, kind: str | None = None,
              parent: str | None = None, actor: dict | None = None) -> list[dict[str, Any]]:
    """Newest first; filter by owner, status (one or several), kind ("train" or "export")
    and parent (the export jobs of one training job). A non-admin actor sees only their own."""
    owner = access.list_owner(actor, owner)
    with store.connect() as db:
        return [_public(j) for j in store.list_jobs(db, owner=owner, status=status, kind=kind,
                                                    parent=parent, limit=limit)]


def get(job_id: str, actor: dict | None = None) -> dict[str, Any]:
    """One job: status, progress (0-1), step/total_steps, error and hint, config, result
    metrics, times, output_dir, adapter_dir, artifacts."""
    with store.connect() as db:
        job = _public(_job(db, job_id, actor))
        job["artifacts"] = store.artifacts(db, job_id)
        return job


def metrics(job_id: str, since_step: int = -1, actor: dict | None = None
            ) -> list[dict[str, Any]]:
    """Metrics records after `since_step`, one dict per step ({step, epoch, loss, lr, grad_norm,
    tokens_per_s, and at eval steps eval_loss, eval_perplexity, eval_token_accuracy}). While a
    job runs only whole steps are returned, so the next poll passes the last step it got."""
    with store.connect() as db:
        _job(db, job_id, actor)
        return store.metrics(db, job_id, since_step)


def step_times(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """When each of these jobs (records the caller may see, e.g. from list_jobs) logged its
    first and latest training step (jobs.store.step_times): what the ETA is measured from."""
    with store.connect() as db:
        return store.step_times(db, [j["id"] for j in jobs])


def metric_buckets(job_id: str, points: int, names: list[str] | tuple[str, ...] | None = None,
                   actor: dict | None = None) -> dict[str, Any]:
    """Each metric's curve (or only `names`) in at most `points` buckets, aggregated in the
    database, so a chart of a 100k-step job moves a few thousand numbers, not every row:
    {"width": w, "metrics": {name: {"buckets": [{count, sum, first_step, last_step, min,
    min_step, max, max_step}, ...], "first": {step, value}, "last": {step, value}}}}.
    Bucket b holds steps b*w+1 .. (b+1)*w, w the smallest power of two that fits; min_step and
    max_step are where the extremes occur, so a one-step spike can still be drawn. As for
    metrics(), only whole steps while the job runs (poll metrics() after the last step seen
    for what comes next); metrics() gives every row."""
    with store.connect() as db:
        _job(db, job_id, actor)
        return store.metric_buckets(db, job_id, points, names)


def samples(job_id: str, actor: dict | None = None) -> dict[str, Any]:
    """A GRPO job's newest sampled completions (its samples.json, rewritten every generation
    batch): {"step", "functions": [reward names], "rows": [{step, prompt, where, completion,
    rewards: {function: value}, reward, advantage}]}; empty rows before the first batch."""
    import json

    with store.connect() as db:
        job = _job(db, job_id, actor)
    path = path_in_job(job, "samples.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"step": None, "functions": [], "rows": []}


def logs(job_id: str, since: int = 0, actor: dict | None = None) -> list[dict[str, Any]]:
    """Log lines and status changes after event id `since`: [{id, time, level, line}]."""
    with store.connect() as db:
        _job(db, job_id, actor)
        return store.events(db, job_id, since)


def cancel(job_id: str, actor: dict | None = None) -> dict[str, Any]:
    """A queued (or interrupted) job never starts; a running one is asked to stop: it saves a
    checkpoint and ends as cancelled within seconds, or its worker kills it after
    FTSTUDIO_CANCEL_GRACE seconds (SIGTERM, then SIGKILL)."""
    with store.connect() as db:
        _job(db, job_id, actor)
        if store.transition(db, job_id, "cancelled", frm=("queued", "interrupted"),
                            finished_at=store.now(), resume_on_start=0,
                            hint=f"cancelled before it ran; `ftstudio jobs resume {job_id}` "
                                 "queues it again"):
            halving.job_left(db, job_id)  # a sweep waiting on it may decide its next cut
            return _public(store.get_job(db, job_id))
        if store.update(db, job_id, cancel_requested=1, cancel_requested_at=store.now(),
                        expect={"status": "running", "cancel_requested": 0}):
            store.add_event(db, job_id, "cancel requested: stopping at the next step", "status")
        job = store.get_job(db, job_id)
        if job["status"] != "running":
            raise JobError(f"job {job_id} is already {job['status']}; nothing to cancel")
        return _public(job)


def resume(job_id: str, actor: dict | None = None) -> dict[str, Any]:
    """Queue an interrupted, failed or cancelled job again as the SAME job: it continues from
    its newest checkpoint (train.resume_from=latest) or starts over when it has none (an
    export job always starts over)."""
    with store.connect() as db:
        job = _job(db, job_id, actor)
        if job["status"] in ("interrupted", "failed", "cancelled"):
            access.check_queue_limit(db, actor)
        step = None
        config = dict(job["config"])
        if job["kind"] == "train":
            from engine.training.checkpoint import latest_step  # torch: only when resuming

            step = latest_step(Path(job["output_dir"]))
            own = config["train"].get("resume_from")  # a checkpoint folder it started from
            config["train"] = {**config["train"], "resume_from": "latest" if step is not None
                               else (own if own != "latest" else None)}
        if not store.transition(db, job_id, "queued", config=config, error=None, hint=None,
                                finished_at=None, cancel_requested=0, resume_on_start=0,
                                note=f"resume from step {step}" if step else "start over"):
            raise JobError(f"job {job_id} is {job['status']}; only interrupted, failed or "
                           "cancelled jobs can be resumed")
        store.truncate_metrics(db, job_id, step or 0)  # steps continue with no duplicate
        _enqueue_or_fail(db, job_id, halving.queue_priority(db, job), job.get("created_at"))
        return _public(store.get_job(db, job_id))


def clone(job_id: str, *, name: str | None = None, owner: str | None = None,
          priority: int | None = None, actor: dict | None = None, **changes: Any
          ) -> dict[str, Any]:
    """Submit a new job with this job's config and `changes`: dotted keys
    (clone(id, **{"train.lr": 1e-4})) or sections (clone(id, train={"lr": 1e-4})). With an
    actor the copy is the actor's (see submit)."""
    job = get(job_id, actor=actor)
    if job["kind"] != "train":
        raise JobError(f"job {job_id} is an {job['kind']} job; only training jobs can be "
                       "cloned (export again with api.export or `ftstudio export`)")
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
    parent = job.get("parent")
    if parent:            # continued (jobs.continuation): merged again from the same parent
        try:
            data["model"] = {**data["model"],
                             "name": get(parent, actor=actor)["config"]["model"]["name"]}
        except JobNotFound:
            raise JobError(f"job {job_id} continued job {parent}, which is deleted, so its "
                           "starting point cannot be made again; continue another finished "
                           "job instead") from None
    cfg = apply_overrides(from_dict(data), overrides)
    return submit(cfg, owner=owner or (job["owner"] if actor is None else None),
                  priority=job["priority"] if priority is None else priority,
                  name=name or f"{job['name']}-copy", actor=actor, parent=parent)


def delete(job_id: str, actor: dict | None = None) -> dict[str, Any]:
    """Remove a job's rows and its folder, and its finished export and eval jobs (a training job
    continued from it keeps its own merged start); refused while it or an export or eval of it
    is queued or running (cancel it first)."""
    with store.connect() as db:
        job = _job(db, job_id, actor)
        exports = [e for e in store.list_jobs(db, parent=job_id) if e["kind"] != "train"]
        busy = [e["id"] for e in exports if e["status"] in store.ACTIVE]
        if busy:
            raise JobError(f"job {job_id} has an export or eval queued or running "
                           f"({', '.join(busy)});"
                           f" cancel it first (`ftstudio jobs cancel {busy[0]}`)")
        if not store.delete_job(db, job_id):  # running: nothing is deleted
            raise JobError(f"job {job_id} is running; cancel it first "
                           f"(`ftstudio jobs cancel {job_id}`)")
        gone = [e for e in exports if store.delete_job(db, e["id"])]
    for row in [job, *gone]:
        folder = store.folder_of(row)
        if folder.resolve().is_relative_to(store.home()):  # never outside FTSTUDIO_HOME
            shutil.rmtree(folder, ignore_errors=True)
    return {"id": job_id, "deleted": True}


def artifacts(job_id: str, actor: dict | None = None) -> list[dict[str, Any]]:
    """A job's files, oldest first: [{kind ("adapter" | "export"), format (exports), path
    (relative to the job's folder), size (bytes), created_at, meta}]. An export's files are
    listed under the training job it exported (meta["export_job"] names the export job)."""
    with store.connect() as db:
        _job(db, job_id, actor)
        return store.artifacts(db, job_id)


def artifact_path(job_id: str, relative_path: str, actor: dict | None = None) -> Path:
    """The file at relative_path inside the job's folder, for a download. Refused (JobError):
    what path_in_job refuses, a folder, or a file that does not exist."""
    with store.connect() as db:
        job = _job(db, job_id, actor)
    path = path_in_job(job, relative_path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise JobError(f"{relative_path!r} {what} in job {job_id}'s folder; "
                       "api.artifacts(job_id) lists its files")
    return path


def path_in_job(job: dict[str, Any], relative_path: str) -> Path:
    """The resolved path relative_path names inside the folder of `job` (a record from get()
    or list_jobs(); the path need not exist): the one rule for every file served or written
    for a job. Refused (JobError): an empty or absolute path, any `..`, or a path that
    resolves outside the folder (through a symlink)."""
    folder, rel = store.folder_of(job).resolve(), Path(relative_path)
    if not relative_path or rel.is_absolute() or ".." in rel.parts:
        raise JobError(f"{relative_path!r} is not a path inside job {job['id']}'s folder; use "
                       "a path from api.artifacts(job_id)")
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder):
        raise JobError(f"{relative_path!r} leads outside job {job['id']}'s folder; only files "
                       "inside it can be downloaded")
    return path


# --------------------------------------------------------------------------- helpers


def _job(db, job_id: str, actor: dict | None) -> dict[str, Any]:
    """The job row if the actor may see it; JobNotFound otherwise (as for a missing id)."""
    return access.check_visible(store.get_job(db, job_id), actor)


def _enqueue_or_fail(db, job_id: str, priority: float, since: float | None = None) -> None:
    """Enqueue (in line as of `since`, the job's created_at when queued again), or mark the
    job failed saying the queue cannot be reached."""
    try:
        tasks.enqueue(job_id, priority, since)
    except Exception as exc:  # the queue (Redis) is unreachable: say so, keep nothing queued
        store.transition(db, job_id, "failed", frm=("queued",), finished_at=store.now(),
                         error=f"could not reach the queue: {exc}",
                         hint="check FTSTUDIO_REDIS_URL and that Redis is running, then "
                              f"`ftstudio jobs resume {job_id}`")
        raise JobError(f"could not enqueue job {job_id}: {exc}") from exc


def _teacher_of_job(cfg: TrainConfig) -> Problem | None:
    """train.teacher naming a finished job: its merged model (exports/merged/), put in its
    place; a Problem when that job has none yet (what to run to make it)."""
    name = cfg.train.teacher
    if not name or "/" in name or is_local_model(name):
        return None
    with store.connect() as db:
        try:
            job = store.get_job(db, name)
        except store.JobNotFound as exc:
            return Problem("train.teacher", f"{exc}; name a finished job, a model folder or a "
                                            "hub id") if len(name) == 10 else None
    merged = store.folder_of(job) / "exports" / "merged"
    if not (merged / "config.json").is_file():
        return Problem("train.teacher", f"job {name} has no merged model to teach with yet; "
                                        f"export it first (`ftstudio export {name} --format "
                                        "merged`) and submit again")
    cfg.train.teacher = str(merged)
    return None


def _absolute_paths(cfg: TrainConfig) -> None:
    if is_local_model(cfg.model.name):
        cfg.model.name = str(Path(cfg.model.name).expanduser().resolve())
    if cfg.train.teacher and is_local_model(cfg.train.teacher):
        cfg.train.teacher = str(Path(cfg.train.teacher).expanduser().resolve())
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


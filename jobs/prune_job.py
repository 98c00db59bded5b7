"""Prune jobs (kind "prune"), and "Make it smaller": prune a model or a finished job's model to a
target, then heal it by distillation from the original in a training job of its own.

Use from Python:
    from jobs.prune_job import submit_prune
    job = submit_prune("a1b2c3d4e5", drop_layers=8, data="my.jsonl", heal={"steps": 200},
                       actor=user)
Run as: ftstudio prune SOURCE --drop-layers N | --param-budget X [--data FILE] [--heal-steps N]
        (the worker runs the job: python -m jobs.runner JOB_ID dispatches kind "prune" here)

The job (config {"source", "source_job", "drop_layers", "param_budget", "by", "data", "name",
"heal"}) runs in one child process, each stage a logged step (a cancel stops it between them):

  1. the original: a model folder or hub id as given; for a finished training job, its adapter
     merged into its base (engine.export's merged format), written into this job's folder as
     teacher/ (kept: the heal job distills from it)
  2. engine.models.prune.prune into FTSTUDIO_HOME/models/NAME: a base model everywhere
  3. with heal: a training job is queued (train.objective distill, model.name the pruned
     folder, train.teacher the original, the data: `data`, else the source job's training
     data), which ends with the usual evaluation, here teacher vs student with bootstrap
     intervals, and distill.md (size, parameters, generation tokens/s, each metric teacher vs
     student); its exports are the usual verified ones. Its id is the prune job's heal_job.

The result: {"folder", "removed_layers", "mlp_width", "params_before", "params_after",
"bytes_after", "heal_job"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import ConfigError, Problem
from jobs import access, store
from jobs.store import JobError

TEACHER_DIR = "teacher"
#: healing defaults: full fine-tuning of the (small) pruned model, learning from the teacher
HEAL_DEFAULTS = {"steps": 100, "method": "full", "lr": 1e-4, "distill_loss": "forward_kl",
                 "distill_alpha": 0.5, "distill_temperature": 1.0, "teacher_topk_cache": None,
                 "batch_size": 4, "max_seq_len": 512}


def submit_prune(source: str, *, drop_layers: int | None = None,
                 param_budget: str | float | None = None, by: str = "layers",
                 data: str | None = None, name: str | None = None,
                 heal: dict[str, Any] | None = None, actor: dict | None = None,
                 owner: str | None = None, priority: int = 0) -> dict[str, Any]:
    """Queue a prune job of `source` (a finished training job's id, a local model folder or a
    hub id). Refused up front (ConfigError, every problem; JobError for the source job): no
    target or two, a bad budget or layer count, an unknown by, data that cannot be read or
    that the actor may not use, a name whose folder exists, heal settings that are unknown."""
    from jobs import api

    owner = access.owner_of(actor, owner)
    problems: list[Problem] = []
    source = str(source).strip()
    source_job = None
    with store.connect() as db:
        try:
            source_job = access.check_visible(store.get_job(db, source), actor)
        except store.JobNotFound:
            source_job = None
    if source_job is not None and actor is None:
        owner = source_job["owner"]     # as an export of the job would be
    if source_job is not None:
        api._check_finished(source_job, "make smaller", "it has completed")
        from engine.config import VIRTUAL_TOKEN_METHODS

        method = (source_job["config"].get("method") or {}).get("kind")
        if method in VIRTUAL_TOKEN_METHODS:
            raise JobError(f"job {source} trained {method} (virtual tokens): there are no "
                           "weights to merge and prune; make a LoRA, DoRA, QLoRA, IA3 or full "
                           "fine-tuning job smaller")
    else:
        problems += _source_problems(source, actor)
    if (drop_layers is None) == (param_budget in (None, "")):
        problems.append(Problem("target", "give exactly one: drop_layers (layers to remove) or "
                                          "param_budget (100M, 0.75, 75%)"))
    if drop_layers is not None and int(drop_layers) < 1:
        problems.append(Problem("drop_layers", f"{drop_layers} must be at least 1"))
    if by not in ("layers", "mlp"):
        problems.append(Problem("by", f"{by!r}: prune by layers or mlp"))
    if param_budget not in (None, ""):
        from engine.models.prune import PruneError, parse_budget

        try:
            parse_budget(param_budget, 10 ** 9)
        except PruneError as exc:
            problems.append(Problem("param_budget", str(exc)))
    if data:
        data = _absolute(data)
        problems += _data_problems(data, actor)
    if heal is not None:
        unknown = sorted(set(heal) - set(HEAL_DEFAULTS))
        if unknown:
            problems.append(Problem("heal", f"unknown setting(s) {', '.join(unknown)}; heal "
                                            f"takes {', '.join(HEAL_DEFAULTS)}"))
        if not data and source_job is None:
            problems.append(Problem("data", "healing a pruned model needs data to distill on; "
                                            "give a data file"))
    name = name or _default_name(source, source_job)
    from engine.models.catalog import models_dir

    if (models_dir() / name).exists():
        problems.append(Problem("name", f"a model named {name!r} already exists in "
                                        f"{models_dir()}; choose another name"))
    if problems:
        raise ConfigError(problems)
    job_id = store.new_id()
    config = {"source": source if source_job is None else None,
              "source_job": source_job["id"] if source_job else None,
              "drop_layers": None if drop_layers is None else int(drop_layers),
              "param_budget": None if param_budget in (None, "") else str(param_budget),
              "by": by, "data": data or None, "name": name,
              "heal": {**HEAL_DEFAULTS, **heal} if heal is not None else None}
    with store.connect() as db:
        access.check_queue_limit(db, actor)
        store.insert_job(db, config=config, kind="prune", name=f"{name}", owner=owner,
                         priority=int(priority), job_id=job_id,
                         output_dir=str(store.job_dir(job_id)))
        api._enqueue_or_fail(db, job_id, priority)
        return api._public(store.get_job(db, job_id))


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(p)


def _default_name(source: str, job: dict | None) -> str:
    import re

    base = job["name"] if job else Path(source.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:50] + "-pruned"


def _source_problems(source: str, actor: dict | None) -> list[Problem]:
    from engine.config import TrainConfig, validate

    cfg = TrainConfig()
    cfg.model.name = source
    refused = [Problem("source", p.message) for p in access.config_problems(cfg, actor)
               if p.key == "model.name"]
    if refused:
        return refused
    return [Problem("source", p.message + " (or name a finished job by its id)")
            for p in validate(cfg) if p.key == "model.name"]


def _data_problems(data: str, actor: dict | None) -> list[Problem]:
    from engine.config import TrainConfig
    from engine.data import DataError, check_file

    cfg = TrainConfig()
    cfg.data.train = data
    refused = [Problem("data", p.message) for p in access.config_problems(cfg, actor)
               if p.key == "data.train"]
    if refused:
        return refused
    try:
        check_file(data)
    except (DataError, OSError) as exc:
        return [Problem("data", str(exc))]
    return []


# --------------------------------------------------------------------------- in the runner


def run_prune(job: dict, reporter, run_stages) -> int:
    """The prune job's stages in the runner's child process: jobs.runner dispatches here and
    passes its run_stages (each logged line a step, a cancel between them, failures recorded)."""
    from engine.models.prune import PruneError, prune

    cfg, folder = job["config"], store.folder_of(job)
    folder.mkdir(parents=True, exist_ok=True)

    def work(log):
        teacher = cfg["source"] or str(_merged_source(job, folder, log))
        result = prune(teacher, drop_layers=cfg["drop_layers"],
                       param_budget=cfg["param_budget"], by=cfg["by"], data=cfg["data"],
                       name=cfg["name"], overwrite=_ours(folder, cfg["name"]), log=log)
        (folder / "pruned.txt").write_text(str(result.folder), encoding="utf-8")
        heal_job = _queue_heal(job, teacher, result, log) if cfg.get("heal") else None
        return result, heal_job

    done, code = run_stages(job, reporter, work, "pruning", PruneError,
                             f"cannot prune {cfg['source'] or 'job ' + cfg['source_job']}",
                             data_file=cfg.get("data"))
    if done is None:
        return code
    result, heal_job = done
    reporter.finish("completed", progress=1.0, result={
        "folder": str(result.folder), "removed_layers": result.removed_layers,
        "mlp_width": list(result.mlp_width) if result.mlp_width else None,
        "layers": [result.layers_before, result.layers_after],
        "params_before": result.params_before, "params_after": result.params_after,
        "bytes_after": result.bytes_after, "heal_job": heal_job})
    return 0


def _ours(folder: Path, name: str) -> bool:
    """A resumed prune job may replace the model folder its own earlier attempt made."""
    from engine.models.catalog import models_dir

    made = folder / "pruned.txt"
    return made.is_file() and made.read_text(encoding="utf-8") == str(models_dir() / name)


def _merged_source(job: dict, folder: Path, log) -> Path:
    """The source job's adapter merged into its base, once, as this job's teacher/."""
    import shutil

    from engine.export import export

    target = folder / TEACHER_DIR
    if (target / "config.json").is_file():
        return target
    with store.connect() as db:
        try:
            parent = store.get_job(db, job["config"]["source_job"])
        except store.JobNotFound:
            raise JobError(f"job {job['config']['source_job']} was deleted before its model "
                           "was merged; make another job smaller") from None
    partial = folder / (TEACHER_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"prune: merging job {parent['id']}'s adapter into its base -> {target}")
    export(store.folder_of(parent), "merged", out=partial, log=log, verify=False)
    partial.rename(target)
    return target


def _queue_heal(job: dict, teacher: str, result, log) -> str:
    """Queue the healing training job: distill the pruned model from the original."""
    from engine.config import TrainConfig
    from jobs import api

    cfg, heal = job["config"], job["config"]["heal"]
    train = TrainConfig()
    source_cfg = None
    if cfg.get("source_job"):
        with store.connect() as db:
            source_cfg = store.get_job(db, cfg["source_job"])["config"]
    if cfg.get("data"):
        train.data.train = cfg["data"]
    elif source_cfg:
        data = source_cfg.get("data") or {}
        train.data.train, train.data.validation = data.get("train"), data.get("validation")
        train.data.format = data.get("format", "auto")
    train.model.name = str(result.folder)
    train.method.kind = heal["method"]
    train.data.max_seq_len = heal["max_seq_len"]
    t = train.train
    t.objective, t.teacher = "distill", str(teacher)
    t.max_steps, t.lr, t.batch_size = heal["steps"], heal["lr"], heal["batch_size"]
    t.distill_loss, t.distill_alpha = heal["distill_loss"], heal["distill_alpha"]
    t.distill_temperature, t.teacher_topk_cache = heal["distill_temperature"], \
        heal["teacher_topk_cache"]
    t.eval_generate = "end"
    t.eval_every = max(1, heal["steps"] // 4)
    t.save_every = max(1, heal["steps"] // 2)
    heal_job = api.submit(train, owner=job["owner"], priority=job["priority"],
                          name=f"{cfg['name']}-healed")
    log(f"prune: healing queued as job {heal_job['id']}: {heal['steps']} steps distilling "
        f"{result.folder.name} from the original")
    return heal_job["id"]

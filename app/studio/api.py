"""Named API endpoints for scripts (gradio_client): submit jobs, read status and metrics.

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    job = c.predict(open("run.yaml").read(), "my-run", api_name="/submit_job")
    c.predict(job["job_id"], api_name="/job_status")
    c.predict(job["job_id"], -1, api_name="/job_metrics")   # rows after since_step
    exp = c.predict(job["job_id"], "gguf-q8_0", api_name="/export_job")  # an export job
    c.predict(job["job_id"], api_name="/job_artifacts")     # its files, with their sizes
    ev = c.predict(job["job_id"], "", 0, api_name="/eval_job")  # base vs tuned answers, queued
    c.predict(job["job_id"], "got worse", api_name="/job_eval")  # the newest evaluation
    sw = c.predict(yaml_text, "train.lr=1e-4,2e-4\nmethod.r=8,16", "lr-r", 0, "",
                   api_name="/submit_sweep")                   # a sweep group of 4 jobs
    c.predict(sw["sweep_id"], "eval_loss", api_name="/sweep_leaderboard")
    pr = c.predict(job["job_id"], 8, "", "layers", "", "", 200, api_name="/prune_model")
                                              # make it smaller: prune, then heal (a prune job)

Each endpoint is a thin wrapper over jobs.api or the engine; answers are plain JSON. With logins
on (`ftstudio serve --auth`; gradio_client's auth=(user, password)) each acts as the logged-in
user: a non-admin lists and reads only their own jobs, another owner's job is "not found".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import gradio as gr

from app.studio.session import actor as actor_of
from engine.config import ConfigError, Problem, TrainConfig, from_dict, parse_config_text, \
    validate

ENDPOINTS = ("submit_job", "job_status", "job_metrics", "job_logs", "list_jobs", "cancel_job",
             "export_job", "job_artifacts", "eval_job", "job_eval", "validate_config",
             "estimate_memory", "submit_sweep", "sweep_leaderboard", "prune_model")
#: and /data_report (a file upload: a Gradio event of its own, see register)


def _jsonable(value: Any) -> Any:
    """Plain JSON. A dict's "path" key (job artifacts) comes back as "location": gradio and
    gradio_client take any dict with a "path" for a file to transfer."""
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        import dataclasses

        value = dataclasses.asdict(value)
    return _no_paths(json.loads(json.dumps(value, default=str)))


def _no_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {("location" if k == "path" else k): _no_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_paths(v) for v in value]
    return value


def _parse(config_yaml: str) -> tuple[TrainConfig | None, list[Problem]]:
    """The config a YAML text holds, or its problems: engine.config.parse_config_text refuses
    config bombs (aliases, nesting, size) and keys set twice before anything is built."""
    source = "the submitted config"
    try:
        data = parse_config_text(config_yaml if isinstance(config_yaml, str) else "", source)
        return from_dict(data, source=source), []
    except ConfigError as exc:
        return None, exc.problems


def _problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"key": p.key, "message": p.message} for p in problems]


def _jid(job_id: Any) -> Any:
    from app.studio.jobview import parse_id

    return parse_id(str(job_id))


def errors_as_gr_error(fn: Callable) -> Callable:
    """An endpoint whose expected failures reach the caller as gr.Error with their own clean
    message: ConfigError (every problem, joined by "; "), and JobNotFound, JobError, KeyError
    and ValueError (an unknown job, a request its status does not allow, a bad value)."""
    @functools.wraps(fn)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise gr.Error("; ".join(str(p) for p in exc.problems)) from None
        except (KeyError, ValueError) as exc:     # JobNotFound (a KeyError) would be quoted
            raise gr.Error(str(exc).strip("'\"")) from None
    return endpoint


@errors_as_gr_error
def submit_job(config_yaml: str, name: str = "", priority: int = 0,
               request: gr.Request = None) -> dict:
    """Queue a job from a YAML config: {"job_id": ..., "status": "queued"}, or
    {"job_id": null, "problems": [{"key", "message"}, ...]} listing every problem."""
    from jobs import api

    cfg, problems = _parse(config_yaml)
    if cfg is None:
        return {"job_id": None, "problems": _problems(problems)}
    try:
        job = api.submit(cfg, priority=int(priority or 0), name=(name or "").strip() or None,
                         actor=actor_of(request))
    except ConfigError as exc:
        return {"job_id": None, "problems": _problems(exc.problems)}
    return {"job_id": job["id"], "status": "queued", "problems": []}


@errors_as_gr_error
def job_status(job_id: str, request: gr.Request = None) -> dict:
    """The job's record: status, progress, times, owner, config, error."""
    from jobs import api

    return _jsonable(api.get(_jid(job_id), actor=actor_of(request)))


@errors_as_gr_error
def job_metrics(job_id: str, since_step: int = -1, request: gr.Request = None) -> list:
    """Metrics after since_step, one record per step: [{"step", "loss", "lr", ...}, ...]."""
    from jobs import api

    return _jsonable(list(api.metrics(_jid(job_id), since_step=int(since_step),
                                      actor=actor_of(request))))


@errors_as_gr_error
def job_logs(job_id: str, since: int = 0, request: gr.Request = None) -> list:
    """Log lines of the job from position `since`."""
    from jobs import api

    return _jsonable(api.logs(_jid(job_id), since=int(since), actor=actor_of(request)))


@errors_as_gr_error
def list_jobs(status: str = "", kind: str = "", request: gr.Request = None) -> list:
    """Every job you may see (with logins on: your own; an admin: all), optionally only those
    with one status, or of one kind ("train" or "export"), newest first."""
    from jobs import api

    return _jsonable(list(api.list_jobs(status=status or None, kind=kind or None,
                                        actor=actor_of(request))))


@errors_as_gr_error
def cancel_job(job_id: str, request: gr.Request = None) -> dict:
    """Ask a queued or running job to stop; returns its record."""
    from jobs import api

    return _jsonable(api.cancel(_jid(job_id), actor=actor_of(request)))


@errors_as_gr_error
def export_job(job_id: str, format: str, request: gr.Request = None) -> dict:  # noqa: A002
    """Queue an export of a finished training job as one format (adapter, merged, bnb4, bnb8,
    gguf-f16, gguf-q8_0, gguf-q4_0): {"export_job_id", "status"}; follow it with /job_status,
    then list its files with /job_artifacts. A format the job cannot be exported as is refused
    with the reason."""
    from jobs import api

    job = api.export(_jid(job_id), str(format).strip(), actor=actor_of(request))
    return {"export_job_id": job["id"], "status": job["status"]}


@errors_as_gr_error
def job_artifacts(job_id: str, request: gr.Request = None) -> list:
    """A training job's files, oldest first: [{"kind" ("adapter" | "export"), "format",
    "location" (relative to the job's folder), "size" (bytes), "created_at", "meta"}]."""
    from jobs import api

    return _jsonable(api.artifacts(_jid(job_id), actor=actor_of(request)))


@errors_as_gr_error
def prune_model(source: str, drop_layers: int = 0, param_budget: str = "", by: str = "layers",
                data: str = "", name: str = "", heal_steps: int = 0,
                request: gr.Request = None) -> dict:
    """Make a model smaller: queue a prune job of `source` (a finished job's id, or a model
    folder or hub id) to drop_layers fewer layers, or under param_budget parameters (100M,
    0.75, 75%) by layers or mlp, calibrated on `data` (a data file path on the server); with
    heal_steps > 0 a healing distillation job from the original follows. 0 / "": not given.
    Returns {"prune_job_id", "status"}; the finished job's result names the model folder and
    its heal_job."""
    from jobs.prune_job import submit_prune

    heal = {"steps": int(heal_steps)} if heal_steps else None
    job = submit_prune(str(source).strip(), drop_layers=int(drop_layers) or None,
                       param_budget=str(param_budget or "").strip() or None,
                       by=str(by or "layers"), data=(data or "").strip() or None,
                       name=(name or "").strip() or None, heal=heal, actor=actor_of(request))
    return {"prune_job_id": job["id"], "status": job["status"]}


@errors_as_gr_error
def eval_job(job_id: str, data: str = "", max_new_tokens: int = 0,
             request: gr.Request = None) -> dict:
    """Queue a generation evaluation of a finished training job: the base and the tuned model
    answer its held-out prompts (or those of `data`, a data file path on the server) and both
    are scored (exact match, token F1, ROUGE-L, chrF, BLEU). max_new_tokens 0: the default.
    Returns {"eval_job_id", "status"}; follow it with /job_status, read it with /job_eval."""
    from jobs import api

    job = api.evaluate(_jid(job_id), data=(data or "").strip() or None,
                       max_new_tokens=int(max_new_tokens or 0) or None, actor=actor_of(request))
    return {"eval_job_id": job["id"], "status": job["status"]}


@errors_as_gr_error
def job_eval(job_id: str, which: str = "all", request: gr.Request = None) -> dict:
    """A training job's newest generation evaluation: {"eval": {kind, step, n, source, card,
    metrics: {exact_match: {base, tuned, delta, base_ci, tuned_ci, delta_ci}, ...}} or null,
    "rows": [{where, prompt, reference, base, tuned, change, ...}] filtered by `which` (all,
    changed, still wrong, got worse), "evals": every evaluation of the job, newest first}."""
    from jobs import api

    return _jsonable(api.job_eval(_jid(job_id), which=(which or "all"), actor=actor_of(request)))


@errors_as_gr_error
def submit_sweep(config_yaml: str, grid: str, name: str = "", priority: int = 0,
                 halving_steps: str = "", request: gr.Request = None) -> dict:
    """Queue a sweep group: one job per point of `grid` (one `key=values` per line, as
    `ftstudio sweep --grid` takes them: train.lr=1e-4,2e-4 or method.r=8..32 step 8) over a
    YAML config; halving_steps "20,40" turns successive halving on. {"sweep_id", "job_ids",
    "problems": []}, or {"sweep_id": null, "problems": [...]} listing every problem of every
    point (nothing queued)."""
    from jobs import sweeps

    cfg, problems = _parse(config_yaml)
    if cfg is None:
        return {"sweep_id": None, "problems": _problems(problems)}
    items = [line.strip() for line in (grid or "").splitlines() if line.strip()]
    try:
        steps = [int(s) for s in (halving_steps or "").split(",") if s.strip()]
    except ValueError:
        return {"sweep_id": None, "problems": [{"key": "halving_steps", "message":
                                                "give whole steps such as 20,40"}]}
    try:
        sw = sweeps.submit(cfg, items, priority=int(priority or 0), name=name or None,
                           halving_steps=steps, actor=actor_of(request))
    except ConfigError as exc:
        return {"sweep_id": None, "problems": _problems(exc.problems)}
    return {"sweep_id": sw["id"], "job_ids": [j["id"] for j in sw["jobs"]], "problems": []}


@errors_as_gr_error
def sweep_leaderboard(sweep_id: str, metric: str = "eval_loss",
                      request: gr.Request = None) -> dict:
    """A sweep's jobs ranked by `metric` (eval_loss, or another eval_* / gen_* metric its jobs
    logged), best first: {"sweep", "metric", "metrics", "keys", "rows": [{rank, job_id,
    name, status, step, total_steps, value, value_step, <varied key>: value, cut_at}]}."""
    from jobs import sweeps

    return _jsonable(sweeps.leaderboard(str(sweep_id).strip(), metric or "eval_loss",
                                        actor=actor_of(request)))


def validate_config(config_yaml: str) -> list:
    """Every problem with a YAML config ([] when it is good to go)."""
    cfg, problems = _parse(config_yaml)
    if cfg is not None:
        problems = validate(cfg)
    return _problems(problems)


@errors_as_gr_error
def estimate_memory(config_yaml: str) -> dict:
    """Trainable parameters, peak memory (bytes, by part) and fits/tight/exceeds."""
    from app.studio.handlers import device
    from engine.models.estimate import estimate_for

    cfg, problems = _parse(config_yaml)
    if cfg is None:
        raise ConfigError(problems)
    est = estimate_for(cfg, device=device())
    return {} if est is None else _jsonable(est.to_dict())


def data_report(file: str, model: str = "", request: gr.Request = None) -> dict:
    """Upload a data file and read its report: {"location" (where it is kept on the server:
    the data.train of a config), "report" (format, records used, truncated, left out, token
    lengths, and why_none_used: why, when no record is usable)}, counted with `model`'s
    tokenizer (empty: the default model's). The file is checked and tokenized in a child process
    (jobs.apart): a big upload never holds up the server's other answers."""
    from app.studio.handlers import store_upload
    from engine.data import DataError
    from jobs import api

    try:
        path = store_upload(file, actor=actor_of(request))
        cfg = TrainConfig()
        cfg.data.train = path
        if (model or "").strip():
            cfg.model.name = model.strip()
        report = api.report_for(cfg, apart=True)
    except (DataError, OSError) as exc:
        raise gr.Error(str(exc)) from None
    from engine.data import why_none_used

    report["why_none_used"] = why_none_used(report)
    return _jsonable({"path": path, "report": report})


#: how many calls of each kind run at once. Gradio runs each event one call at a time unless
#: told otherwise, so 20 open job pages polling /job_status would wait in one line. Reads take
#: milliseconds and touch only SQLite (WAL: readers never wait for the writer): no limit, each
#: answered at once. Checks (validate, estimate) and writes (submit, cancel, export, eval) each
#: share a small pool, so a burst of submits cannot starve the readers of threads; a data
#: report waits on its child process (jobs.apart) in a pool of its own.
READS = ("job_status", "job_metrics", "job_logs", "list_jobs", "job_artifacts", "job_eval",
         "sweep_leaderboard")
POOLS = {"validate_config": ("checks", 4), "estimate_memory": ("checks", 4),
         "submit_job": ("writes", 4), "submit_sweep": ("writes", 4),
         "cancel_job": ("writes", 4), "export_job": ("writes", 4), "eval_job": ("writes", 4),
         "prune_model": ("writes", 4)}


def register() -> None:
    """Add the endpoints to the Blocks being built (call inside `with gr.Blocks()`)."""
    for name in ENDPOINTS:
        fn = globals()[name]
        pool = {"concurrency_limit": None} if name in READS else \
            dict(zip(("concurrency_id", "concurrency_limit"), POOLS[name]))
        gr.api(fn, api_name=name, api_description=(fn.__doc__ or "").strip(), **pool)
    upload = gr.File(visible=False, file_types=[".json", ".jsonl", ".csv", ".parquet"])
    model, report = gr.Textbox(visible=False), gr.JSON(visible=False)
    gr.Button(visible=False).click(data_report, [upload, model], report,
                                   api_name="data_report", concurrency_id="data",
                                   concurrency_limit=2,
                                   api_description=(data_report.__doc__ or "").strip())

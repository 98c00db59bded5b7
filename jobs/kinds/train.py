"""A training job (kind "train"): engine.training.loop.run(config, reporter) in the job's
folder, then the end recorded (jobs.endings.job_end).

A job with checkpoints resumes from the newest (train.resume_from=latest), and metric rows past
that checkpoint's step are dropped first, so steps continue with no gap and no duplicate. A job
continued from another (jobs.continuation) first merges its parent's adapter into the starting
point. A job of a halving sweep pauses at its sweep's next halving step (jobs/halving.py). A
training that ends with a generation evaluation (train.eval_generate) has it stored under the
job as kind "end".

FTSTUDIO_TRAIN_ENTRY=module:function names another function of run's shape (config, reporter)
-> result to call instead of engine.training.loop.run: a site's wrapper (profiling, a patched
loop), or the test suite's stand-in (tests/jobs/fake_engine.py) that pushes many jobs through
the real worker and runner without a model.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from jobs import settings, store
from jobs.endings import job_end
from jobs.redact import scrub_run_folder


def run(job: dict, reporter) -> int:
    out = store.job_dir(job["id"])
    try:
        cfg = _prepare(job, out, reporter)
        reporter.next_rung()
        result = entry()(cfg, reporter)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with a hint
        traceback.print_exc()
        sys.stdout.flush()
        if reporter.main:
            scrub_run_folder(out)
        reporter.end(job_end(job, "raised", exc=exc, log_path=out / "log.txt",
                             data_file=(job.get("config") or {}).get("data", {}).get("train")))
        reporter.left_race()
        return 1
    if reporter.main:
        scrub_run_folder(out)  # before the job is seen as finished (and exported)
    steps = getattr(result, "steps", reporter.last_step)
    if getattr(result, "cancelled", False):
        paused = reporter.stop_reason == "rung"
        reporter.end(job_end(job, "paused" if paused else "stopped", step=steps,
                             stop_reason=reporter.stop_reason,
                             cancel=not paused and reporter.cancel_requested()))
        reporter.left_race(reporter.last_step if paused else None)
        return 0
    adapter = getattr(result, "adapter_dir", None)
    if adapter:
        reporter.add_artifact("adapter", adapter)
    _store_end_eval(job, reporter, out, steps)
    reporter.end(job_end(job, "finished"), progress=1.0,
                 result=_jsonable(getattr(result, "metrics", None) or {}),
                 adapter_dir=str(adapter) if adapter else None)
    reporter.left_race()
    return 0


def entry() -> Callable[[Any, Any], Any]:
    """engine.training.loop.run, or the function FTSTUDIO_TRAIN_ENTRY names."""
    name = settings.train_entry()
    if not name:
        from engine.training.loop import run as train

        return train
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "run")
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"FTSTUDIO_TRAIN_ENTRY={name!r} names no function ({exc}); give "
                           "module:function, importable by the worker, or unset it to train "
                           "with engine.training.loop.run") from None


def _prepare(job: dict, out: Path, reporter):
    from engine.config import from_dict, save_config
    from engine.training.checkpoint import latest_step

    cfg = from_dict(job["config"])
    cfg.output_dir = str(out)
    step = latest_step(out)
    if step is not None:
        cfg.train.resume_from = "latest"
        if reporter.main:
            dropped = reporter.resumed_at(step)
            reporter.on_log(f"resuming from checkpoint step-{step}"
                            + (f" ({dropped} metric rows past it dropped)" if dropped else ""))
    if reporter.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        scrub_run_folder(out)
    if job.get("parent"):
        _start_model(job, Path(cfg.model.name), reporter)
    return cfg


def _start_model(job: dict, start: Path, reporter) -> None:
    """A continued job (jobs.continuation) trains from its parent's adapter merged into the
    parent's base: written once into `start` (jobs.api.START_MODEL) by the main process, through
    a temporary folder so a crash leaves no half model; a resumed attempt finds it made. Other
    processes (accelerate launch) wait for it."""
    import shutil

    if (start / "config.json").is_file():
        return
    if not reporter.main:
        while not (start / "config.json").is_file():
            time.sleep(1.0)
        return
    from engine.export import ExportError, export

    parent_id = job["parent"]
    try:
        parent = reporter.job_row(parent_id)
    except store.JobNotFound:
        raise RuntimeError(f"job {parent_id}, which this job continues, is deleted before its "
                           "adapter was merged into the starting point; continue another "
                           "finished job") from None
    reporter.on_log(f"start: merging the adapter of job {parent_id} into its base, the "
                    f"starting point and reference of this job -> {start.name}/")
    partial = start.with_name(start.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        export(store.folder_of(parent), "merged", out=partial, log=reporter.on_log)
    except ExportError as exc:
        raise ExportError(f"cannot make the starting point from job {parent_id}: {exc}") \
            from None
    partial.rename(start)


def _store_end_eval(job: dict, reporter, out: Path, steps: int) -> None:
    """The generation evaluation training ended with (out/eval.json at the last step), as the
    job's evaluation rows in studio.db."""
    from engine.evaluation.evaluate import read_record

    record = read_record(out / "eval.json") if reporter.main else None
    if record is not None and record.get("step") == steps:
        reporter.add_eval(job["id"], record, kind="end", path=out / "eval.json")


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))
            or v is None}

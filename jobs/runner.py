"""Run one job that a worker has claimed: load it from studio.db, train, export or evaluate (by
the job's kind), record the end.

Run as: python -m jobs.runner JOB_ID     (started by the worker, in its own session, with stdout
        and stderr going to FTSTUDIO_HOME/jobs/JOB_ID/log.txt; or under `accelerate launch`)

An export job (kind "export", config {"format", "parent"}) calls engine.export.export on its
parent's folder, logging each stage (job.step counts them; a cancel stops it between stages),
records each file with its size as an artifact of the PARENT (the rows of an earlier export in
that format go when it starts), and fails with the engine's message as its hint on ExportError.
The export verifies its files (config "verify", default true) and the job's result keeps the
verification's status, line and failed checks ("unverified" exports complete: the files stand).

An eval job (kind "eval", config {"parent", "data", "max_new_tokens", "max_records"}) calls
engine.evaluation.evaluate.evaluate_run on its parent's folder (base vs tuned answers to the held-out
prompts, or to those of `data`), writes eval.json into its own folder and stores the record under
the PARENT (jobs.store.add_eval), whose page shows it. A training job that ends with a generation
evaluation (train.eval_generate) has it stored the same way, as kind "end".

The reporter writes every metrics record and log line into studio.db, keeps the heartbeat
(jobs.updated_at) fresh, and answers "should I stop?" from the job row: a cancel request, SIGTERM
(cancel escalation or worker shutdown), a worker that died, or a newer attempt that owns the job.
A job with checkpoints resumes from the newest (train.resume_from=latest), and metric rows past
that checkpoint's step are deleted first, so steps continue with no gap and no duplicate.

Test hook: FTSTUDIO_TEST_FAIL="oom" (or "oom:NAME,kill:NAME2") makes jobs (named NAME) raise a
real torch.OutOfMemoryError at their first step ("oom") or SIGKILL themselves ("kill").
FTSTUDIO_TEST_FAKE_TRAIN=N[:SECONDS] replaces engine.training.loop with N fake steps (SECONDS apart; no
torch, no checkpoints but a stand-in where successive halving pauses it; an eval_loss of
1/step + 1/lr every train.eval_every steps), so queue tests push many jobs through the real
worker and runner.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from jobs import settings
from jobs import halving, store
from jobs.errors import explain_exception
from jobs.redact import RedactingStream, redact, scrub_run_folder

HEARTBEAT_S = 5.0
CHECK_EVERY_S = 0.5
#: stop reasons that leave a job interrupted (it resumes), and how its hint says so
WORKER_GONE = {"terminated": "its worker stopped", "orphaned": "its worker died"}


class StoreReporter:
    """engine.training.reporter.Reporter that writes into studio.db (rank 0 only writes)."""

    def __init__(self, job: dict, attempt: int, *, main: bool = True,
                 worker_pid: int | None = None):
        self.job_id, self.name, self.attempt, self.main = job["id"], job["name"], attempt, main
        self.worker_pid = worker_pid
        self.db = store.connect()
        self.last_step = 0
        self.total_steps: int | None = None
        self.stop_reason: str | None = None
        #: successive halving (jobs/halving.py): pause after the evaluation at this step
        self.rung: int | None = None
        self._checked = 0.0
        self._hooks = _test_hooks(self.name)

    def on_metrics(self, record: dict[str, Any]) -> None:
        if "oom" in self._hooks:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(raised by the test hook FTSTUDIO_TEST_FAIL)")
        if "kill" in self._hooks:
            os.kill(os.getpid(), signal.SIGKILL)
        self.total_steps = record.get("total_steps") or self.total_steps
        step = int(record["step"])
        if self.main and not store.add_metrics(self.db, self.job_id, record,
                                               attempt=self.attempt,
                                               total_steps=self.total_steps):
            self.stop_reason = "superseded"
        if step > self.last_step:
            if self.main and self.last_step:
                store.publish_metrics(self.db, self.job_id, self.last_step, attempt=self.attempt)
            self.last_step = step

    def on_log(self, line: str) -> None:
        line = redact(line)  # no HF_TOKEN or other *_TOKEN/_KEY value in logs (jobs/redact.py)
        print(line, flush=True)
        if self.main:
            store.add_event(self.db, self.job_id, line)

    def should_stop(self) -> bool:
        if self.rung is not None and self.stop_reason is None and self.last_step >= self.rung:
            self.stop_reason = "rung"  # asked after the step's evaluation: its eval_loss is in
        now = time.monotonic()
        if self.stop_reason is None and now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            row = store.get_job(self.db, self.job_id)
            if row["status"] != "running" or row["attempt"] != self.attempt:
                self.stop_reason = "superseded"
            elif row["cancel_requested"]:
                self.stop_reason = "cancel"
            elif self.worker_pid and not pid_alive(self.worker_pid):
                self.stop_reason = "orphaned"
            elif self.main and self.last_step:
                store.publish_metrics(self.db, self.job_id, self.last_step, attempt=self.attempt)
        return self.stop_reason is not None

    def finish(self, status: str, **fields: Any) -> bool:
        if not self.main or self.stop_reason == "superseded":
            return False
        fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return store.transition(self.db, self.job_id, status, frm=("running",),
                                expect={"attempt": self.attempt}, finished_at=store.now(),
                                **fields)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jobs.runner JOB_ID", file=sys.stderr)
        return 2
    job_id = argv[0]
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with store.connect() as db:
        job = store.get_job(db, job_id)
    attempt = settings.job_attempt() or job["attempt"]
    if job["status"] != "running" or job["attempt"] != attempt:
        print(f"job {job_id} is {job['status']} (attempt {job['attempt']}, this runner "
              f"{attempt}); the worker starts runners, not people", file=sys.stderr)
        return 2
    worker_pid = settings.worker_pid()
    reporter = StoreReporter(job, attempt, main=main_rank, worker_pid=worker_pid)
    signal.signal(signal.SIGTERM, lambda *_: setattr(reporter, "stop_reason",
                                                     reporter.stop_reason or "terminated"))
    if main_rank:
        _start_heartbeat(job_id, attempt)
    if job["kind"] == "export":
        return _run_export(job, reporter)
    if job["kind"] == "eval":
        return _run_eval(job, reporter)
    if job["kind"] == "prune":   # jobs/prune_job.py: prune, then queue the healing job
        from jobs.prune_job import run_prune

        return run_prune(job, reporter, _run_stages)
    out = store.job_dir(job_id)
    log_path = out / "log.txt"
    try:
        cfg = _prepare(job, out, reporter, main_rank)
        if main_rank:
            reporter.rung = halving.next_rung(reporter.db, job_id, reporter.last_step)
        result = _train(cfg, reporter)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with a hint
        traceback.print_exc()
        sys.stdout.flush()
        data_file = (job.get("config") or {}).get("data", {}).get("train")
        error, hint = explain_exception(exc, data_file, log_path)
        if main_rank:
            scrub_run_folder(out)
        reporter.finish("failed", error=error, hint=hint)
        if main_rank:
            halving.job_left(reporter.db, job_id)
        return 1
    if main_rank:
        scrub_run_folder(out)  # before the job is seen as finished (and exported)
    code = _record(job_id, reporter, result, out)
    if main_rank and reporter.stop_reason == "rung" and getattr(result, "cancelled", False):
        halving.paused(reporter.db, job_id, reporter.last_step)
    elif main_rank:
        halving.job_left(reporter.db, job_id)
    return code


def _prepare(job: dict, out: Path, reporter: StoreReporter, main_rank: bool):
    from engine.config import from_dict, save_config

    cfg = from_dict(job["config"])
    cfg.output_dir = str(out)
    from engine.training.checkpoint import latest_step

    step = latest_step(out)
    if step is not None:
        cfg.train.resume_from = "latest"
        if main_rank:
            dropped = store.truncate_metrics(reporter.db, job["id"], step)
            reporter.last_step = step
            reporter.on_log(f"resuming from checkpoint step-{step}"
                            + (f" ({dropped} metric rows past it dropped)" if dropped else ""))
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        scrub_run_folder(out)
    if job.get("parent"):
        _start_model(job, Path(cfg.model.name), reporter, main_rank)
    return cfg


def _start_model(job: dict, start: Path, reporter: StoreReporter, main_rank: bool) -> None:
    """A continued job (jobs.continuation) trains from its parent's adapter merged into the
    parent's base: written once into `start` (jobs.api.START_MODEL) by the main process, through
    a temporary folder so a crash leaves no half model; a resumed attempt finds it made. Other
    processes (accelerate launch) wait for it."""
    import shutil

    if (start / "config.json").is_file():
        return
    if not main_rank:
        while not (start / "config.json").is_file():
            time.sleep(1.0)
        return
    from engine.export import ExportError, export

    parent_id = job["parent"]
    try:
        parent = store.get_job(reporter.db, parent_id)
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


def _train(cfg, reporter: StoreReporter):
    fake = settings.test_fake_train()
    if fake:
        steps, _, delay = fake.partition(":")
        return _fake_train(cfg, reporter, int(steps), float(delay or 0))
    from engine.training.loop import run

    return run(cfg, reporter)


def _record(job_id: str, reporter: StoreReporter, result: Any, out: Path) -> int:
    steps = getattr(result, "steps", reporter.last_step)
    resume = f"`ftstudio jobs resume {job_id}` continues from the checkpoint"
    if getattr(result, "cancelled", False):
        if reporter.stop_reason == "rung":
            reporter.finish("interrupted", resume_on_start=0,
                            hint=f"paused at step {steps} for the sweep's successive halving: "
                                 "it continues, or is cut, once every job of the sweep has "
                                 "reached this step")
        elif reporter.stop_reason == "cancel":
            reporter.finish("cancelled", hint=f"stopped at step {steps}; {resume}")
        elif reporter.stop_reason in WORKER_GONE:
            reporter.finish("interrupted", resume_on_start=1,
                            hint=f"{WORKER_GONE[reporter.stop_reason]} at step {steps}; it "
                                 f"resumes when a worker starts, or {resume}")
        else:
            reporter.finish("cancelled", hint=f"stopped at step {steps}")
        return 0
    adapter = getattr(result, "adapter_dir", None)
    metrics = getattr(result, "metrics", None) or {}
    if reporter.main and adapter:
        store.add_artifact(reporter.db, job_id, "adapter", adapter)
    _store_end_eval(job_id, reporter, out, steps)
    reporter.finish("completed", progress=1.0, result=_jsonable(metrics),
                    adapter_dir=str(adapter) if adapter else None)
    return 0


# --------------------------------------------------------------------------- export jobs


class _Stopped(Exception):
    """Raised between export stages when the export job is asked to stop."""


def _run_export(job: dict, reporter: StoreReporter) -> int:
    from engine.export import ExportError, export

    fmt, parent_id = job["config"]["format"], job["config"]["parent"]
    parent_dir = store.folder_of(store.get_job(reporter.db, parent_id))

    def work(log):
        if reporter.main:  # exports/<fmt>/ is about to be rewritten: unlist its old files
            store.replace_exports(reporter.db, parent_id, fmt, [])
        return export(parent_dir, fmt, log=log, verify=job["config"].get("verify", True))

    result, code = _run_stages(job, reporter, work, f"export {fmt}", ExportError,
                               f"cannot export job {parent_id} as {fmt}")
    if result is None:
        return code
    if reporter.main and reporter.stop_reason != "superseded":
        store.replace_exports(reporter.db, parent_id, fmt,
                              [(a.path, a.bytes) for a in result.artifacts],
                              meta={"export_job": job["id"]})
    reporter.finish("completed", progress=1.0, result={
        "format": fmt, "parent": parent_id, "files": len(result.artifacts),
        "out_dir": result.out_dir.relative_to(parent_dir).as_posix(),
        "total_bytes": result.total_bytes, "verification": _verification(result.verification)})
    return 0


def _verification(record: dict | None) -> dict | None:
    """What the export job keeps of its verification (the whole record is verify.json in the
    export folder): status, the line people read, and each check that failed."""
    if not record:
        return None
    return {"status": record.get("status"), "line": record.get("line"),
            "runtimes": record.get("runtimes"), "n": record.get("n"),
            "seconds": (record.get("seconds") or {}).get("total"),
            "failed": [c for c in record.get("checks") or [] if not c.get("ok")]}


# --------------------------------------------------------------------------- evaluations


def _store_end_eval(job_id: str, reporter: StoreReporter, out: Path, steps: int) -> None:
    """The generation evaluation training ended with (out/eval.json at the last step), as the
    job's evaluation rows in studio.db."""
    from engine.evaluation.evaluate import read_record

    record = read_record(out / "eval.json") if reporter.main else None
    if record is not None and record.get("step") == steps:
        store.add_eval(reporter.db, job_id, record, kind="end", path=out / "eval.json")


def _run_eval(job: dict, reporter: StoreReporter) -> int:
    """An eval job (config {"parent", "data", "max_new_tokens", "max_records"}): the engine's
    evaluate_run over the parent's run folder; the record goes into the eval job's folder and,
    as rows, under the PARENT job (its page shows it)."""
    from engine.evaluation.evaluate import EvalError, card_line, evaluate_run

    cfg, parent_id = job["config"], job["config"]["parent"]
    folder = store.folder_of(job)
    folder.mkdir(parents=True, exist_ok=True)
    parent_dir = store.folder_of(store.get_job(reporter.db, parent_id))

    def work(log):
        return evaluate_run(parent_dir, cfg.get("data"), max_new_tokens=cfg.get(
            "max_new_tokens"), max_records=cfg.get("max_records"), out=folder / "eval.json",
            log=log)

    record, code = _run_stages(job, reporter, work, "evaluation", EvalError,
                               f"cannot evaluate job {parent_id}", data_file=cfg.get("data"))
    if record is None:
        return code
    eval_id = None
    if reporter.main and reporter.stop_reason != "superseded":
        eval_id = store.add_eval(reporter.db, parent_id, record, kind="job",
                                 path=folder / "eval.json", eval_job=job["id"])
    reporter.finish("completed", progress=1.0, result={
        "parent": parent_id, "eval_id": eval_id, "n": record["n"], "card": card_line(record),
        **{f"tuned_{k}": v["tuned"] for k, v in record["metrics"].items()}})
    return 0


def _run_stages(job: dict, reporter: StoreReporter, work, what: str,
                known: type[Exception], error: str, data_file: str | None = None
                ) -> tuple[Any, int]:
    """Run `work(log)` of a job whose progress is its logged stages (an export, an eval):
    each line is a step, and a cancel stops it between stages. Returns (result, 0), or (None,
    exit code) after recording how it ended: cancelled or interrupted, failed with the
    engine's message (`known`) as its hint, or failed with the explained exception."""
    def log(line: str) -> None:
        reporter.on_log(line)
        if reporter.main:
            store.update(reporter.db, job["id"], step=store.Expr("step + 1"),
                         expect={"attempt": reporter.attempt, "status": "running"})
        if reporter.should_stop():
            raise _Stopped(reporter.stop_reason)

    again = f"`ftstudio jobs resume {job['id']}` runs it again"
    try:
        return work(log), 0
    except _Stopped:
        if reporter.stop_reason in WORKER_GONE:
            reporter.finish("interrupted", resume_on_start=1,
                            hint=f"{WORKER_GONE[reporter.stop_reason]} during {what}; it "
                                 f"runs again when a worker starts, or {again}")
        else:
            reporter.finish("cancelled", hint=f"{what} stopped before it finished; {again}")
        return None, 0
    except known as exc:
        reporter.on_log(f"{what} failed: {exc}")
        reporter.finish("failed", error=error, hint=str(exc))
        return None, 1
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with a hint
        traceback.print_exc()
        sys.stdout.flush()
        error, hint = explain_exception(exc, data_file, store.folder_of(job) / "log.txt")
        reporter.finish("failed", error=error, hint=hint)
        return None, 1


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_heartbeat(job_id: str, attempt: int) -> None:
    def beat() -> None:
        while True:
            try:
                with store.connect() as db:
                    store.update(db, job_id, updated_at=store.now(),
                                 expect={"attempt": attempt, "status": "running"})
            except Exception as exc:  # a busy database must not end the heartbeat
                print(f"heartbeat: {exc}", file=sys.stderr, flush=True)
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def _test_hooks(name: str) -> set[str]:
    kinds = set()
    for item in filter(None, settings.test_fail().split(",")):
        kind, _, only = item.strip().partition(":")
        if not only or only == name:
            kinds.add(kind)
    return kinds


def _fake_train(cfg, reporter: StoreReporter, steps: int, delay: float):
    """FTSTUDIO_TEST_FAKE_TRAIN: the engine's callbacks without a model (queue tests only)."""
    from types import SimpleNamespace

    reporter.on_log(f"fake training: {steps} steps")
    for step in range(reporter.last_step + 1, steps + 1):
        time.sleep(delay)
        reporter.on_metrics({"step": step, "epoch": step / steps, "loss": 1.0 / step,
                             "lr": cfg.train.lr, "total_steps": steps})
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:  # lower for a higher lr
            reporter.on_metrics({"step": step, "eval_loss": 1.0 / step + 1.0 / cfg.train.lr})
        if reporter.should_stop() and step < steps:
            if reporter.stop_reason == "rung":  # a stand-in checkpoint, so it continues here
                marker = Path(cfg.output_dir) / "checkpoints" / f"step-{step}" / "state.json"
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("{}")
            return SimpleNamespace(cancelled=True, steps=step, adapter_dir=None, metrics={})
    return SimpleNamespace(cancelled=False, steps=steps, adapter_dir=None,
                           metrics={"loss": 1.0 / steps})


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))
            or v is None}


if __name__ == "__main__":
    sys.exit(main())

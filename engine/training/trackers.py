"""train.report_to: the run's metrics and its config sent to TensorBoard, MLflow and W&B.

Use from Python (engine.training.loop.run does this around setup, fit and finish):
    from engine.training.trackers import tracked
    with tracked(cfg, reporter) as reporter:  # the same reporter when train.report_to is empty
        ...                                   # each on_metrics record also reaches the trackers

Every record that metrics.jsonl gets (the same records the job page shows: loss, lr, grad_norm,
throughput, eval_*, gen_*, ...) is logged to each tracker at its `step`, with the config as the
run's hyperparameters (flat dotted keys: train.lr, method.r, ...; secrets of the environment
masked, engine/training/redact.py). Only the main process receives
records (engine.training.checkpoint.RunFiles reports there), so a DDP run logs once; the trackers start
with the first record.

The trackers are accelerate's (accelerate.tracking); their own clients fill in where accelerate
falls short: MLflow's tracking URI, asynchronous writes and a run's end status, W&B's offline
mode and folder.

  tensorboard  output_dir/tb/ (`tensorboard --logdir output_dir/tb`); a resumed run purges the
               steps it repeats (SummaryWriter's purge_step).
  mlflow       MLFLOW_TRACKING_URI, else sqlite:///FTSTUDIO_HOME/mlflow/mlflow.db with artifacts
               in FTSTUDIO_HOME/mlflow/artifacts (engine.settings); experiment
               train.tracker_experiment (default ftstudio), one run per start named after the
               output folder (job-<id> for a queued job).
  wandb        output_dir/wandb/; offline unless WANDB_API_KEY is set (WANDB_MODE wins); project
               WANDB_PROJECT or ftstudio, group train.tracker_experiment (default ftstudio).
               Console capture is off: the job's log stays in log.txt, redacted.

A tracker that fails (it cannot start, write or finish) is dropped with one log line and training
goes on; the others keep logging.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from engine import settings
from engine.config import TrainConfig
from engine.training.redact import redact, redact_data
from engine.training.reporter import Reporter

DEFAULT_EXPERIMENT = "ftstudio"


@contextmanager
def tracked(cfg: TrainConfig, reporter: Reporter) -> Iterator[Reporter]:
    """`reporter`, or one that also logs to cfg.train.report_to's trackers; they finish when
    the block ends (as failed when it raises)."""
    if not cfg.train.report_to:
        yield reporter
        return
    tracking = TrackingReporter(cfg, reporter)
    try:
        yield tracking
    except BaseException:
        tracking.close(failed=True)
        raise
    tracking.close(failed=False)


class TrackingReporter:
    """A Reporter that passes everything on to `inner` and logs each metrics record to the
    trackers, started on the first record."""

    def __init__(self, cfg: TrainConfig, inner: Reporter):
        self.cfg, self.inner = cfg, inner
        self.live: dict[str, Any] = {}      # name -> accelerate tracker, while it works
        self.pending: dict[str, Any] = {}   # name -> its asynchronous write in flight
        self.mlflow: Any = None             # MLflow's client, for its asynchronous writes
        self.started = False

    def on_metrics(self, record: dict[str, Any]) -> None:
        self.inner.on_metrics(record)
        if not self.started:
            self.started = True
            self._start(int(record.get("step", 0)))
        values, step = metric_values(record), int(record["step"])
        for name in list(self.live):
            self._guard(name, "logging", lambda t, n=name: self._log(n, t, values, step))

    def on_log(self, line: str) -> None:
        self.inner.on_log(line)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def close(self, failed: bool) -> None:
        for name in list(self.live):
            self._guard(name, "logging", lambda t, n=name: self._written(n))
            self._guard(name, "finishing", lambda t, n=name: finish(n, t, failed))
            self.live.pop(name, None)

    # -------------------------------------------------------------------- internals

    def _start(self, first_step: int) -> None:
        params = hyperparameters(self.cfg)
        for name in dict.fromkeys(self.cfg.train.report_to):
            try:
                tracker, where = START[name](self.cfg, first_step)
                self.live[name] = tracker
                tracker.store_init_configuration(params)
            except Exception as exc:
                self._drop(name, "starting", exc)
                continue
            self.inner.on_log(f"trackers: {name} logging to {where}")

    def _log(self, name: str, tracker: Any, values: dict[str, float], step: int) -> None:
        """accelerate's log; for MLflow its client's asynchronous log_batch (a synchronous write
        to the SQLite store takes tens of milliseconds, accelerate's goes through mlflow's
        fluent API, which reads the run back on every call), once the record before has been
        written: a write that failed raises here, one record late."""
        if name != "mlflow":
            tracker.log(values, step=step)
            return
        import time

        import mlflow
        from mlflow.entities import Metric

        self._written(name)
        self.mlflow = self.mlflow or mlflow.MlflowClient()  # the URI start_mlflow set
        now = int(time.time() * 1000)
        self.pending[name] = self.mlflow.log_batch(
            tracker.active_run.info.run_id, metrics=[Metric(k, v, now, step)
                                                     for k, v in values.items()],
            synchronous=False)

    def _written(self, name: str) -> None:
        """Wait for the tracker's asynchronous write, raising what it failed with."""
        pending = self.pending.pop(name, None)
        if pending is not None:
            pending.wait()

    def _guard(self, name: str, what: str, call: Callable[[Any], None]) -> None:
        tracker = self.live.get(name)
        if tracker is None:
            return
        try:
            call(tracker)
        except Exception as exc:
            self._drop(name, what, exc)

    def _drop(self, name: str, what: str, exc: Exception) -> None:
        """One log line, and the tracker is closed quietly and not used again."""
        tracker = self.live.pop(name, None)
        self.pending.pop(name, None)
        self.inner.on_log(f"trackers: {name} failed while {what} ({type(exc).__name__}: "
                          f"{exc}); training continues without it")
        if tracker is not None:
            try:
                finish(name, tracker, failed=True)
            except Exception:
                pass


# --------------------------------------------------------------------------- what is logged


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record, without its step."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hyperparameters(cfg: TrainConfig) -> dict[str, Any]:
    """The config as flat dotted keys, lists joined with commas (what every tracker accepts),
    with the environment's secrets masked (engine/training/redact.py: a token in a path stays out)."""
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = ",".join(map(str, value)) \
                if isinstance(value, list) else value
    return redact_data(flat)


def run_name(cfg: TrainConfig) -> str:
    """The output folder's name; job-<id> for a queued job's folder jobs/<id>."""
    name = redact(Path(cfg.output_dir or "run").name)
    return f"job-{name}" if name.isdigit() else name


def experiment(cfg: TrainConfig) -> str:
    return cfg.train.tracker_experiment or DEFAULT_EXPERIMENT


def without_password(uri: str) -> str:
    """A URI as it may be logged: user:password@ becomes user:***@."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# --------------------------------------------------------------------------- each tracker


def start_tensorboard(cfg: TrainConfig, first_step: int) -> tuple[Any, str]:
    from accelerate.tracking import TensorBoardTracker

    folder = Path(cfg.output_dir) / "tb"
    tracker = TensorBoardTracker("", folder, purge_step=first_step)
    tracker.start()
    return tracker, str(folder)


def start_mlflow(cfg: TrainConfig, first_step: int) -> tuple[Any, str]:
    import mlflow
    from accelerate.tracking import MLflowTracker
    from mlflow.exceptions import MlflowException

    uri, artifacts = settings.mlflow_tracking_uri(), settings.mlflow_artifacts()
    name = experiment(cfg)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # it also exports the URI to os.environ, for subprocesses:
    if before is None:            # keep the environment as it was (a later run in this process,
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # and its workers, read their own)
    with store_lock(artifacts):
        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name(name) is None:
            try:  # before accelerate looks: two jobs of a sweep may both find none
                client.create_experiment(name, artifact_location=artifacts and artifacts.as_uri())
            except MlflowException:
                if client.get_experiment_by_name(name) is None:
                    raise
        tracker = MLflowTracker(experiment_name=name, run_name=run_name(cfg),
                                tags={"ftstudio.output_dir": redact(str(cfg.output_dir)),
                                      "ftstudio.first_step": str(first_step)})
        tracker.start()
    return tracker, (f"{without_password(uri)} (experiment {tracker.experiment_name}, run "
                     f"{run_name(cfg)})")


def store_lock(artifacts: Path | None):
    """For the default SQLite store: one job at a time creates it (MLflow migrates a new
    database in place, and jobs starting together would each migrate it) and its experiment;
    a tracking server needs no lock."""
    if artifacts is None:
        return nullcontext()
    from filelock import FileLock

    artifacts.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(artifacts.parent / "mlflow.db.lock"), timeout=300)


def start_wandb(cfg: TrainConfig, first_step: int) -> tuple[Any, str]:
    import wandb
    from accelerate.tracking import WandBTracker

    mode, folder = settings.wandb_mode(), Path(cfg.output_dir)
    tracker = WandBTracker(settings.wandb_project(), name=run_name(cfg), group=experiment(cfg),
                           dir=str(folder), mode=mode, settings=wandb.Settings(console="off"))
    tracker.start()
    return tracker, f"{folder / 'wandb'} ({mode}, project {settings.wandb_project()}, group " \
                    f"{experiment(cfg)})"


START: dict[str, Callable[[TrainConfig, int], tuple[Any, str]]] = {
    "tensorboard": start_tensorboard, "mlflow": start_mlflow, "wandb": start_wandb}


def finish(name: str, tracker: Any, failed: bool) -> None:
    """accelerate's finish, with the run marked failed in MLflow and W&B when it failed."""
    if not failed or name == "tensorboard":
        tracker.finish()
    elif name == "mlflow":
        import mlflow

        mlflow.end_run(status="FAILED")
    elif name == "wandb":
        tracker.run.finish(exit_code=1)

"""The files a person downloads, written in one place below the front ends: a job's adapter zip,
its run bundle (config, run.json, metrics, log), its metrics as CSV, an evaluation's answers as
CSV (here), and a sweep's TensorBoard zip (jobs.sweeps.tensorboard_zip, with write_zip).

Use from Python:
    from jobs import api, bundles
    job = api.get(job_id, actor=user)            # the actor's check happens here, first
    bundles.adapter_zip(job)                     # -> JOB/exports/adapter.zip
    bundles.run_zip(job)                         # -> JOB/exports/job-ID-run.zip
    bundles.metrics_csv(job, api.metrics(job_id, actor=user))
    bundles.eval_csv(job_id, which="got worse", actor=user)
    bundles.make(job_id, "run", actor=user)      # any of KINDS by name (`ftstudio jobs bundle`)

Every file is written next to where it ends up under a unique temporary name and moved into
place with os.replace, so a download never reads half a file and two people fetching the same
bundle at once do not write into each other's. Every path inside a job's folder goes through
jobs.api.path_in_job (inside the folder, through no symlink out of it).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

from jobs.api import get, job_eval, metrics, path_in_job
from jobs.store import JobError

#: the run bundle's files, when the job has them
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "log.txt")
#: the bundles make() writes, by the name `ftstudio jobs bundle` takes
KINDS = {"adapter": "the adapter folder as a zip", "run": "config, run.json, metrics, log as a zip",
         "metrics": "every metric, one line per step, as CSV",
         "answers": "the newest evaluation's answers as CSV"}


def make(job_id: str, kind: str, actor: dict | None = None, which: str = "all") -> Path:
    """Write the job's bundle `kind` (one of KINDS) and return its path; the actor must be
    allowed to see the job (JobNotFound otherwise, as for a missing id). `which` filters the
    answers (all, changed, still wrong, got worse)."""
    if kind not in KINDS:
        raise JobError(f"no bundle {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "answers":
        return eval_csv(job_id, which=which, actor=actor)
    job = get(job_id, actor=actor)
    if kind == "metrics":
        return metrics_csv(job, metrics(job_id, since_step=-1, actor=actor))
    return adapter_zip(job) if kind == "adapter" else run_zip(job)


def write_atomic(out: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) for a temporary file beside `out`, then move it onto `out` in one step
    (os.replace); the temporary file is removed when write fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def write_zip(out: Path, entries: Iterable[tuple[Path, str]]) -> Path:
    """A deflated zip of (file, name in the zip) pairs, written atomically."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, arcname in entries:
                zf.write(path, arcname)

    return write_atomic(out, write)


def write_text(out: Path, text: str) -> Path:
    return write_atomic(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def adapter_zip(job: dict[str, Any]) -> Path:
    """JOB/exports/adapter.zip: the job's adapter/ folder. FileNotFoundError before there is
    one; JobError for a file that leads out of the folder."""
    src = path_in_job(job, "adapter")
    if not src.is_dir() or not any(src.iterdir()):
        raise FileNotFoundError(f"job {job['id']} has no adapter yet (it appears when training "
                                "ends or saves a checkpoint)")
    return _job_zip(job, "adapter.zip", [f"adapter/{p.relative_to(src).as_posix()}"
                                         for p in sorted(src.rglob("*")) if p.is_file()])


def run_zip(job: dict[str, Any]) -> Path:
    """JOB/exports/job-ID-run.zip: config.yaml, run.json, metrics.jsonl, log.txt (those there
    are). FileNotFoundError when there are none yet."""
    files = [n for n in RUN_FILES if path_in_job(job, n).is_file()]
    if not files:
        raise FileNotFoundError(f"job {job['id']} has no run files yet")
    return _job_zip(job, f"job-{job['id']}-run.zip", files)


def metrics_csv(job: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """JOB/exports/job-ID-metrics.csv: the metrics records (jobs.api.metrics), one line per
    step, one column per metric in the order they first appear. FileNotFoundError when there
    are none yet."""
    rows = metric_rows(records)
    if not rows:
        raise FileNotFoundError(f"job {job['id']} has no metrics yet")
    by_step: dict[int, dict[str, Any]] = {}
    names: list[str] = []
    for step, name, value in rows:
        by_step.setdefault(step, {"step": step})[name] = value
        if name not in names:
            names.append(name)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["step", *names])
    writer.writeheader()
    writer.writerows(by_step[s] for s in sorted(by_step))
    return write_text(path_in_job(job, f"exports/job-{job['id']}-metrics.csv"), text.getvalue())


def eval_csv(job_id: str, eval_id: int | None = None, which: str = "all",
             actor: dict | None = None) -> Path:
    """The evaluation's rows (filtered by `which`, as jobs.api.job_eval) as a CSV file in the
    job's folder: JOB/exports/job-ID-eval-N-WHICH.csv."""
    from engine.evaluation.evaluate import to_csv

    found = job_eval(job_id, eval_id, which, actor=actor)
    if found["eval"] is None:
        raise JobError(f"job {job_id} has no evaluation yet; `ftstudio eval {job_id}` makes one")
    job = get(job_id, actor=actor)
    slug = which.replace(" ", "-")
    out = path_in_job(job, f"exports/job-{job_id}-eval-{found['eval']['id']}-{slug}.csv")
    return write_text(out, to_csv(found["eval"], found["rows"]))


def metric_rows(records: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """(step, name, value) from jobs.api.metrics records, whether one record per step
    ({step, loss, lr, ...}) or one per value ({step, name, value, time})."""
    out = []
    for r in records or []:
        step = int(r["step"])
        if "name" in r and "value" in r:
            out.append((step, str(r["name"]), float(r["value"])))
            continue
        for name, value in r.items():
            if name not in ("step", "time", "job_id", "id") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                out.append((step, name, float(value)))
    return out


def _job_zip(job: dict[str, Any], name: str, files: list[str]) -> Path:
    """JOB/exports/<name>: the files (paths in the job's folder, kept as their names in the
    zip), each checked by path_in_job before anything is written."""
    entries = [(path_in_job(job, rel), rel) for rel in files]
    return write_zip(path_in_job(job, f"exports/{name}"), entries)

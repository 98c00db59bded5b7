"""The studio database: studio.db under FTSTUDIO_HOME, shared by the web process, workers and
runner children (sqlite-utils, WAL, busy timeout, short transactions, schema by migrations).

Use from Python:
    from jobs import store
    with store.connect() as db:               # migrated on first use in this process
        job = store.get_job(db, job_id)
        store.transition(db, job_id, "running", frm=("queued",), started_at=store.now())

Every status change goes through transition(): one conditional UPDATE that only succeeds from an
allowed status, so a cancel racing a start (or two workers racing one job) cannot both win.
Other modules that write (users, datasets) do it inside `with store.transaction(db):`.

Longer than the project's ~450 lines on purpose: the migrations and every query that depends
on their columns stay in one file, so a schema change is made and reviewed in one place.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from jobs import settings

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
#: to-status -> statuses it may be entered from
ALLOWED: dict[str, tuple[str, ...]] = {
    "queued": ("interrupted", "failed", "cancelled"),           # resume
    "running": ("queued",),                                     # a worker claims it
    "completed": ("running",),
    "failed": ("queued", "running", "interrupted"),
    "cancelled": ("queued", "running", "interrupted"),
    "interrupted": ("running",),
}
FINISHED = ("completed", "failed", "cancelled", "interrupted")
#: the statuses of a job that has not ended (a worker may still run it)
ACTIVE = ("queued", "running")
BUSY_TIMEOUT_S = 30.0
JSON_COLUMNS = ("config", "result")

_READY: set[str] = set()


class JobError(ValueError):
    """A job request that cannot be done; the message says why and what to do instead."""


class JobNotFound(JobError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else "job not found"


class Expr(str):
    """A SQL expression as a transition/update value, e.g. Expr('attempt + 1')."""


def now() -> float:
    return time.time()


def home() -> Path:
    """FTSTUDIO_HOME (default ./studio-data, engine.settings), as an absolute path."""
    return settings.home().resolve()


def db_path() -> Path:
    return home() / "studio.db"


def job_dir(job_id: str) -> Path:
    return home() / "jobs" / job_id


def new_id() -> str:
    return secrets.token_hex(5)


# --------------------------------------------------------------------------- connections


def connect(path: str | os.PathLike | None = None) -> Database:
    """A new connection (one per call; cheap). Use as a context manager to close it. A data
    folder this process may not write is a JobError naming the folder and the chown to run."""
    path = Path(path) if path is not None else db_path()
    fresh = not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        db = Database(conn)
        db.execute("PRAGMA synchronous=NORMAL")
        key = str(path)
        if fresh or key not in _READY:
            migrate(db)
            _READY.add(key)
    except (sqlite3.OperationalError, PermissionError) as exc:
        problem = not_writable(path)
        if problem:
            raise JobError(problem) from exc
        raise
    return db


def not_writable(path: Path) -> str | None:
    """Why this process cannot write the database at `path` or its folder (which folder, its
    owner, ours, and the chown that fixes it), or None when it can."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    for p in ([path] if path.exists() else []) + [folder]:
        if not os.access(p, os.W_OK):
            st = p.stat()
            me = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else "this user"
            return (f"cannot write {p} (FTSTUDIO_HOME is {home()}): it belongs to uid "
                    f"{st.st_uid} (gid {st.st_gid}) and this process runs as uid {me}. Give the "
                    f"folder to this user: `sudo chown -R {me} {folder}` (the Docker image runs "
                    f"as uid 10001: on the host, `sudo chown -R 10001:10001` the folder you "
                    f"mount at /data)")
    return None


def migrate(db: Database) -> list[str]:
    """Switch to WAL and apply pending migrations under one write lock; returns their names.
    Safe to call again and from several processes at once."""
    _retry_locked(db.enable_wal)
    if not MIGRATIONS.pending(db):
        return []
    with transaction(db):  # re-read inside the lock: another process may have just applied them
        names = [m.name for m in MIGRATIONS.pending(db)]
        MIGRATIONS.apply(db)
    return names


def _retry_locked(fn, deadline_s: float = BUSY_TIMEOUT_S) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(0.02)


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """A short write transaction that takes the write lock up front (no upgrade deadlocks)."""
    _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    db.execute("COMMIT")


# --------------------------------------------------------------------------- schema

MIGRATIONS = Migrations("ftstudio")


@MIGRATIONS()
def m001_jobs_metrics_events_artifacts(db: Database) -> None:
    db["jobs"].create({
        "id": str, "name": str, "owner": str, "kind": str, "status": str, "priority": int,
        "config": str,                      # JSON TrainConfig (output_dir set by the queue)
        "created_at": float, "started_at": float, "finished_at": float,
        "updated_at": float,                # heartbeat of the running child
        "step": int, "total_steps": int, "progress": float,
        "metrics_step": int,                # metrics rows up to this step are complete
        "error": str, "hint": str, "result": str,
        "worker": str, "hostname": str, "worker_pid": int, "pid": int,
        "attempt": int,                     # +1 per claim; the child writes only its own
        "cancel_requested": int, "cancel_requested_at": float,
        "resume_on_start": int,             # interrupted by a crash/shutdown: auto-resume
        "output_dir": str, "adapter_dir": str,
    }, pk="id", not_null={"status", "kind", "owner"},
        defaults={"status": "queued", "kind": "train", "owner": "local", "priority": 0,
                  "step": 0, "progress": 0.0, "metrics_step": 0, "attempt": 0,
                  "cancel_requested": 0, "resume_on_start": 0})
    db["jobs"].create_index(["status", "priority"])
    db["jobs"].create_index(["owner", "created_at"])
    db["metrics"].create({"id": int, "job_id": str, "step": int, "name": str, "value": float,
                          "time": float}, pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["metrics"].create_index(["job_id", "step"])
    db["events"].create({"id": int, "job_id": str, "time": float, "level": str, "line": str},
                        pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["events"].create_index(["job_id", "id"])
    db["artifacts"].create({"id": int, "job_id": str, "kind": str, "path": str, "size": int,
                            "created_at": float, "meta": str},
                           pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["artifacts"].create_index(["job_id"])


@MIGRATIONS()
def m002_export_jobs(db: Database) -> None:
    """Export jobs point at the training job they export (jobs.parent); artifacts carry the
    export format and a path relative to their job's folder (downloads resolve it there)."""
    db["jobs"].add_column("parent", str)
    db["jobs"].create_index(["parent"])
    db["artifacts"].add_column("format", str)
    for row in list(db.query("SELECT a.id, a.path, j.output_dir FROM artifacts a "
                             "JOIN jobs j ON j.id = a.job_id")):
        if row["output_dir"] and Path(row["path"]).is_absolute() and \
                Path(row["path"]).is_relative_to(row["output_dir"]):
            db.execute("UPDATE artifacts SET path = ? WHERE id = ?",
                       [Path(row["path"]).relative_to(row["output_dir"]).as_posix(), row["id"]])


@MIGRATIONS()
def m003_users_datasets(db: Database) -> None:
    """Accounts of a team server (jobs/users.py) and who uploaded which dataset
    (jobs/datasets.py): one row per (owner, stored file), so each person sees their own."""
    db["users"].create({"username": str, "password_hash": str, "is_admin": int,
                        "created_at": float, "disabled": int},
                       pk="username", not_null={"password_hash"},
                       defaults={"is_admin": 0, "disabled": 0})
    db["datasets"].create({"id": int, "owner": str, "name": str, "path": str, "sha256": str,
                           "size": int, "records": int, "created_at": float},
                          pk="id", not_null={"owner", "path"})
    db["datasets"].create_index(["owner", "path"], unique=True)


@MIGRATIONS()
def m004_evals(db: Database) -> None:
    """Generation evaluations of training jobs (engine/evaluation/evaluate.py): one evals row per
    evaluation (its summary JSON, where eval.json is), one eval_rows row per example, with the
    columns the job page filters on."""
    db["evals"].create({"id": int, "job_id": str, "eval_job": str, "kind": str, "step": int,
                        "n": int, "source": str, "summary": str, "seconds": str, "path": str,
                        "created_at": float}, pk="id", foreign_keys=[("job_id", "jobs", "id")])
    db["evals"].create_index(["job_id", "created_at"])
    db["eval_rows"].create({"id": int, "eval_id": int, "idx": int, "location": str,
                            "prompt": str, "reference": str, "base": str, "tuned": str,
                            "change": str, "changed": int, "base_exact_match": float,
                            "tuned_exact_match": float, "base_token_f1": float,
                            "tuned_token_f1": float, "detail": str},
                           pk="id", foreign_keys=[("eval_id", "evals", "id")])
    db["eval_rows"].create_index(["eval_id", "idx"])


@MIGRATIONS()
def m005_sweeps(db: Database) -> None:
    """Sweep groups (jobs/sweeps.py): one sweeps row per group (its base config, the space it
    was expanded from, the varied keys, the successive-halving steps and the last step decided),
    one sweep_jobs row per job of the group (its index and point; the step it is paused at or
    was cut at by successive halving)."""
    db["sweeps"].create({"id": str, "name": str, "owner": str, "created_at": float,
                         "config": str, "space": str, "keys": str, "halving": str,
                         "priority": int, "rung_done": int},
                        pk="id", not_null={"owner"}, defaults={"rung_done": 0, "priority": 0})
    db["sweeps"].create_index(["owner", "created_at"])
    db["sweep_jobs"].create({"job_id": str, "sweep_id": str, "idx": int, "point": str,
                             "paused_at": int, "cut_at": int},
                            pk="job_id", foreign_keys=[("job_id", "jobs", "id"),
                                                       ("sweep_id", "sweeps", "id")])
    db["sweep_jobs"].create_index(["sweep_id", "idx"])


@MIGRATIONS()
def m006_job_gpus(db: Database) -> None:
    """The GPUs a running job holds (jobs/tasks.py's GpuPool), shown on the queue page."""
    db["jobs"].add_column("gpus", str)


# --------------------------------------------------------------------------- jobs


def insert_job(db: Database, *, config: dict, name: str | None, owner: str, priority: int,
               kind: str = "train", job_id: str | None = None, parent: str | None = None,
               output_dir: str | None = None) -> str:
    """Record a queued job. output_dir: its folder (default config["output_dir"], which the
    queue sets for training jobs); parent: the job an export job exports."""
    job_id = job_id or new_id()
    t = now()
    with transaction(db):
        db["jobs"].insert({
            "id": job_id, "name": name or job_id, "owner": owner, "kind": kind,
            "status": "queued", "priority": int(priority), "config": json.dumps(config),
            "created_at": t, "updated_at": t, "parent": parent,
            "output_dir": output_dir or config.get("output_dir"),
        })
        _event(db, job_id, "status", "queued")
    return job_id


def get_job(db: Database, job_id: str) -> dict[str, Any]:
    rows = list(db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
    if not rows:
        raise JobNotFound(f"no job {job_id!r}; `ftstudio jobs ls` lists the jobs there are")
    return _decode(rows[0])


def list_jobs(db: Database, *, owner: str | None = None,
              status: str | tuple[str, ...] | list[str] | None = None,
              ids: list[str] | None = None, kind: str | None = None, parent: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    where, params = ["1=1"], []
    for column, value in (("kind", kind), ("parent", parent)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if ids is not None:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if status is not None:
        statuses = (status,) if isinstance(status, str) else tuple(status)
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, rowid DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return [_decode(r) for r in db.query(sql, params)]


def transition(db: Database, job_id: str, to: str, *, frm: tuple[str, ...] | None = None,
               expect: dict[str, Any] | None = None, note: str | None = None,
               **fields: Any) -> bool:
    """Move a job to status `to` from an allowed status (narrowed by `frm`, guarded by
    `expect` column values), setting `fields`, in one atomic UPDATE. False: refused."""
    if to not in ALLOWED:
        raise ValueError(f"unknown status {to!r}; statuses are {', '.join(STATUSES)}")
    sources = [s for s in ALLOWED[to] if frm is None or s in frm]
    if not sources:
        return False
    fields = {"status": to, "updated_at": now(), **fields}
    sets, params = _assignments(fields)
    where = [f"status IN ({', '.join('?' * len(sources))})", *(f"[{k}] = ?" for k in expect or {})]
    with transaction(db):
        cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND {' AND '.join(where)}",
                         [*params, job_id, *sources, *(expect or {}).values()])
        if cur.rowcount != 1:
            return False
        line = to + (f": {fields['error']}" if fields.get("error") else "") + \
            (f" ({note})" if note else "")
        _event(db, job_id, "status", line)
    return True


def update(db: Database, job_id: str, *, expect: dict[str, Any] | None = None,
           **fields: Any) -> bool:
    """Set non-status fields (progress, pid, cancel flag...); status changes use transition()."""
    if "status" in fields:
        raise ValueError("status changes go through transition()")
    sets, params = _assignments(fields)
    where = "".join(f" AND [{k}] = ?" for k in expect or {})
    with transaction(db):
        cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ?{where}",
                         [*params, job_id, *(expect or {}).values()])
    return cur.rowcount == 1


def delete_job(db: Database, job_id: str) -> bool:
    """Delete a job's row with its metrics, events, artifacts and evaluations, in one
    transaction; False, deleting nothing, when the job is running or not there. The status is
    read under the write lock, so a worker cannot claim the job in between."""
    with transaction(db):
        row = db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None or row[0] == "running":
            return False
        db.execute("DELETE FROM eval_rows WHERE eval_id IN (SELECT id FROM evals WHERE "
                   "job_id = ?)", [job_id])
        for table in ("metrics", "events", "artifacts", "evals", "sweep_jobs"):
            db.execute(f"DELETE FROM {table} WHERE job_id = ?", [job_id])
        db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
    return True


def _assignments(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    sets, params = [], []
    for key, value in fields.items():
        if isinstance(value, Expr):
            sets.append(f"[{key}] = {value}")
            continue
        sets.append(f"[{key}] = ?")
        params.append(json.dumps(value) if key in JSON_COLUMNS and value is not None else value)
    return ", ".join(sets), params


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_COLUMNS:
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


# --------------------------------------------------------------------------- metrics, events


def add_metrics(db: Database, job_id: str, record: dict[str, Any], *, attempt: int,
                total_steps: int | None = None, replace: bool = False) -> bool:
    """Write one engine metrics record (one row per numeric value) and the job's progress,
    only while `attempt` still owns the job. False: this run has been superseded. replace:
    first delete the job's rows of this step and these names (a record delivered twice, as
    jobs/owner.py may after a crash, is written once)."""
    step = int(record["step"])
    total_steps = total_steps or record.get("total_steps")
    t = now()
    rows = [(job_id, step, k, float(v), t) for k, v in record.items()
            if k not in ("step", "total_steps") and isinstance(v, (int, float))
            and not isinstance(v, bool)]
    with transaction(db):
        owned = db.execute("SELECT 1 FROM jobs WHERE id = ? AND attempt = ? AND status = "
                           "'running'", [job_id, attempt]).fetchone()
        if not owned:
            return False
        if replace and rows:
            names = [r[2] for r in rows]
            db.execute(f"DELETE FROM metrics WHERE job_id = ? AND step = ? AND name IN "
                       f"({', '.join('?' * len(names))})", [job_id, step, *names])
        db.conn.executemany("INSERT INTO metrics (job_id, step, name, value, time) "
                            "VALUES (?, ?, ?, ?, ?)", rows)
        progress = {"step": step, "updated_at": t}
        if total_steps:
            progress.update(total_steps=int(total_steps), progress=min(1.0, step / total_steps))
        sets, params = _assignments(progress)
        db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND step <= ?", [*params, job_id, step])
    return True


def publish_metrics(db: Database, job_id: str, step: int, *, attempt: int) -> None:
    """Mark metrics up to `step` complete: metrics() polls only ever see whole steps."""
    update(db, job_id, metrics_step=int(step), expect={"attempt": attempt})


def truncate_metrics(db: Database, job_id: str, after_step: int) -> int:
    """Delete metric rows past a checkpoint's step before resuming from it."""
    with transaction(db):
        n = db.execute("DELETE FROM metrics WHERE job_id = ? AND step > ?",
                       [job_id, after_step]).rowcount
        db.execute("UPDATE jobs SET metrics_step = MIN(metrics_step, ?), step = MIN(step, ?), "
                   "progress = CASE WHEN total_steps > 0 THEN MIN(step, ?) * 1.0 / total_steps "
                   "ELSE 0 END WHERE id = ?", [after_step, after_step, after_step, job_id])
    return n


def metrics(db: Database, job_id: str, since_step: int = -1) -> list[dict[str, Any]]:
    """Complete metrics records after `since_step`, one dict per step: {step, loss, lr, ...,
    eval_loss...}. Uses the (job_id, step) index, so each poll costs only its new rows."""
    upto = _complete_upto(db, job_id)
    records: dict[int, dict[str, Any]] = {}
    for step, name, value in db.execute(
            "SELECT step, name, value FROM metrics WHERE job_id = ? AND step > ? AND step <= ? "
            "ORDER BY step, id", [job_id, since_step, upto]):
        records.setdefault(step, {"step": step})[name] = value
    return list(records.values())


THROUGHPUT_SQL = """
SELECT j.id AS job_id, json_extract(j.config, '$.method.kind') AS method, j.finished_at,
       (SELECT AVG(m.value) FROM metrics m WHERE m.job_id = j.id AND m.name = 'tokens_per_s'
          AND m.step > (SELECT MIN(step) FROM metrics WHERE job_id = j.id
                        AND name = 'tokens_per_s')) AS steady,
       (SELECT AVG(m.value) FROM metrics m WHERE m.job_id = j.id
          AND m.name = 'tokens_per_s') AS overall
FROM jobs j
WHERE j.kind = 'train' AND j.status = 'completed'
  AND json_extract(j.config, '$.model.name') = :model {owner}
ORDER BY json_extract(j.config, '$.method.kind') = :method DESC, j.finished_at DESC
LIMIT 1
"""


def measured_throughput(db: Database, model: str, method: str | None = None,
                        owner: str | None = None) -> dict[str, Any] | None:
    """The trained tokens per second of the newest completed training job on `model` (one with
    the same method first; only `owner`'s when given): {job_id, method, tokens_per_s}, or None
    when no such job logged any. The mean of its logged rates without the first (warm-up,
    compilation), which include the evaluations and checkpoints in between, as a real run does.
    """
    params = {"model": model, "method": method or "", "owner": owner}
    row = next(db.query(THROUGHPUT_SQL.format(owner="AND j.owner = :owner" if owner else ""),
                        params), None)
    rate = row and (row["steady"] or row["overall"])
    if not rate:
        return None
    return {"job_id": row["job_id"], "method": row["method"], "tokens_per_s": float(rate)}


def step_times(db: Database, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """When each job logged its first and its latest training step: {job_id: {first_step,
    first_time, last_step, last_time}} (jobs without a step left out), for an ETA measured
    from the job's own steps (start-up excluded). Two index lookups per job."""
    out: dict[str, dict[str, Any]] = {}
    for jid in job_ids:
        ends = list(db.execute(
            "SELECT step, time FROM (SELECT step, time FROM metrics WHERE job_id = ? AND "
            "name = 'loss' ORDER BY step LIMIT 1) UNION ALL SELECT step, time FROM (SELECT "
            "step, time FROM metrics WHERE job_id = ? AND name = 'loss' ORDER BY step DESC "
            "LIMIT 1)", [jid, jid]))
        if len(ends) == 2 and ends[0][1] is not None and ends[1][1] is not None:
            out[jid] = {"first_step": ends[0][0], "first_time": ends[0][1],
                        "last_step": ends[1][0], "last_time": ends[1][1]}
    return out


def job_overhead(db: Database, job_id: str) -> float | None:
    """Seconds a finished job spent outside its training steps: from its start to its first
    step (loading the model, tokenizing, the first step's warm-up) and from its last step to its
    end (the final evaluation, saving). None when it logged no step or has no times."""
    job = next(db.query("SELECT started_at, finished_at FROM jobs WHERE id = ?", [job_id]), None)
    ends = step_times(db, [job_id]).get(job_id)
    if not job or not ends or not job["started_at"] or not job["finished_at"]:
        return None
    return max(0.0, ends["first_time"] - job["started_at"]) + \
        max(0.0, job["finished_at"] - ends["last_time"])


def _complete_upto(db: Database, job_id: str) -> int:
    """The last step whose metrics are complete: metrics_step while the job runs, any step
    once it has stopped (everything written is final)."""
    job = list(db.query("SELECT metrics_step, status FROM jobs WHERE id = ?", [job_id]))
    if not job:
        raise JobNotFound(f"no job {job_id!r}")
    if job[0]["status"] != "running":
        return 1 << 62
    return job[0]["metrics_step"] or 0


# SQLite fills a bare column (the step beside MIN(value)) from the min row only when a query
# has exactly ONE min() or max() aggregate; this one needs several, so a window ranks each
# bucket's rows by (value, step) instead: rank 1 is its min (the earliest step of a tie), the
# last rank its max (the latest step of a tie). One sort, one pass over the job's rows.
BUCKETS_SQL = """
SELECT name, COUNT(*) AS count, SUM(value) AS sum, MIN(step) AS first_step,
       MAX(step) AS last_step,
       MIN(CASE WHEN rank = 1 THEN value END) AS min,
       MIN(CASE WHEN rank = 1 THEN step END) AS min_step,
       MIN(CASE WHEN rank = size THEN value END) AS max,
       MIN(CASE WHEN rank = size THEN step END) AS max_step
FROM (SELECT name, step, value, (step - 1) >> :shift AS bucket,
             ROW_NUMBER() OVER ranked AS rank, COUNT(*) OVER ranked AS size
      FROM metrics WHERE job_id = :job AND step <= :upto AND value IS NOT NULL {names}
      WINDOW ranked AS (PARTITION BY name, (step - 1) >> :shift ORDER BY value, step
                        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING))
GROUP BY name, bucket ORDER BY name, bucket
"""


def metric_buckets(db: Database, job_id: str, points: int,
                   names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Each metric's curve in at most `points` buckets, aggregated in SQL (a long job's rows
    never leave the database), over complete steps only, as metrics().

    Bucket b holds steps b*width+1 .. (b+1)*width; width is the smallest power of two that
    fits the job's steps in `points` buckets, the same for every metric, so a chart can merge
    neighbours pairwise later and keep the grid. Returns {"width": w, "metrics": {name:
    {"buckets": [{count, sum, first_step, last_step, min, min_step, max, max_step}, ...],
    "first": {step, value}, "last": {step, value}}}} (buckets in step order, empty ones left
    out; first/last: the metric's first and last row)."""
    upto = _complete_upto(db, job_id)
    lo, hi = db.execute("SELECT (SELECT MIN(step) FROM metrics WHERE job_id = :job AND "
                        "step <= :upto), (SELECT MAX(step) FROM metrics WHERE job_id = :job "
                        "AND step <= :upto)", {"job": job_id, "upto": upto}).fetchone()
    shift = _bucket_shift(lo or 1, hi or 1, points)
    params: dict[str, Any] = {"job": job_id, "upto": upto, "shift": shift}
    where = ""
    if names is not None:
        params.update({f"n{i}": n for i, n in enumerate(names)})
        where = f"AND name IN ({', '.join(f':n{i}' for i in range(len(names)))})"
    out: dict[str, dict[str, Any]] = {}
    for row in db.query(BUCKETS_SQL.format(names=where), params):
        name = row.pop("name")
        out.setdefault(name, {"buckets": []})["buckets"].append(row)
    _add_ends(db, job_id, out)
    return {"width": 1 << shift, "metrics": out}


def _bucket_shift(first: int, last: int, points: int) -> int:
    """log2 of the smallest width whose aligned buckets cover steps first..last in at most
    `points` buckets."""
    shift = 0
    while ((last - 1) >> shift) - ((first - 1) >> shift) + 1 > max(1, points):
        shift += 1
    return shift


def _add_ends(db: Database, job_id: str, series: dict[str, dict[str, Any]]) -> None:
    """Each metric's first and last row ({step, value}), so a chart can draw both ends."""
    steps = sorted({s["buckets"][0]["first_step"] for s in series.values()} |
                   {s["buckets"][-1]["last_step"] for s in series.values()})
    if not steps:
        return
    values = {(step, name): value for step, name, value in db.execute(
        f"SELECT step, name, value FROM metrics WHERE job_id = ? AND step IN "
        f"({', '.join('?' * len(steps))}) AND value IS NOT NULL ORDER BY id",
        [job_id, *steps])}
    for name, s in series.items():
        for end, step in (("first", s["buckets"][0]["first_step"]),
                          ("last", s["buckets"][-1]["last_step"])):
            s[end] = {"step": step, "value": values[(step, name)]}


def add_event(db: Database, job_id: str, line: str, level: str = "info") -> None:
    with transaction(db):
        _event(db, job_id, level, line)


def _event(db: Database, job_id: str, level: str, line: str) -> None:
    db.execute("INSERT INTO events (job_id, time, level, line) VALUES (?, ?, ?, ?)",
               [job_id, now(), level, line])


def events(db: Database, job_id: str, since: int = 0, limit: int = 1000
           ) -> list[dict[str, Any]]:
    return list(db.query("SELECT id, time, level, line FROM events WHERE job_id = ? AND id > ? "
                         "ORDER BY id LIMIT ?", [job_id, since, limit]))


def add_artifact(db: Database, job_id: str, kind: str, path: str | os.PathLike,
                 meta: dict | None = None) -> None:
    """Record one file or folder of a job (a folder's size is the sum of its files); its path
    is stored relative to the job's folder (jobs.api.artifact_path resolves it)."""
    p = Path(path)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else \
        (p.stat().st_size if p.exists() else 0)
    rel = _relative(db, job_id, p)
    with transaction(db):
        db.execute("DELETE FROM artifacts WHERE job_id = ? AND kind = ? AND path = ?",
                   [job_id, kind, rel])
        db.execute("INSERT INTO artifacts (job_id, kind, path, size, created_at, meta) "
                   "VALUES (?, ?, ?, ?, ?, ?)", [job_id, kind, rel, size, now(),
                                                  json.dumps(meta or {})])


def replace_exports(db: Database, job_id: str, fmt: str, files: list[tuple[Path, int]],
                    meta: dict | None = None) -> None:
    """Record the files of one export of a job (path, size in bytes), replacing the rows of
    its previous export in that format, in one transaction."""
    t = now()
    rows = [(job_id, "export", fmt, _relative(db, job_id, Path(p)), int(size), t,
             json.dumps(meta or {})) for p, size in files]
    with transaction(db):
        db.execute("DELETE FROM artifacts WHERE job_id = ? AND kind = 'export' AND format = ?",
                   [job_id, fmt])
        db.conn.executemany("INSERT INTO artifacts (job_id, kind, format, path, size, "
                            "created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def artifacts(db: Database, job_id: str) -> list[dict[str, Any]]:
    """[{kind, format, path, size, created_at, meta}], oldest first; path is relative to the
    job's folder (jobs.api.artifact_path resolves it safely)."""
    rows = list(db.query("SELECT kind, format, path, size, created_at, meta FROM artifacts "
                         "WHERE job_id = ? ORDER BY id", [job_id]))
    for r in rows:
        r["meta"] = json.loads(r["meta"] or "{}")
    return rows


# --------------------------------------------------------------------------- evaluations

#: conditions eval_rows can filter on, over the columns add_eval fills (the job page's
#: filters, by their names, are jobs.api.EVAL_FILTERS)
ROW_CONDITIONS = {
    "changed": "changed = 1",
    "both_wrong": "tuned_exact_match = 0 AND COALESCE(base_exact_match, 0) = 0",
    "worse": "change = 'worse'",
}


def add_eval(db: Database, job_id: str, record: dict[str, Any], *, kind: str,
             path: str | os.PathLike, eval_job: str | None = None) -> int:
    """Store one engine.evaluation.evaluate record of training job `job_id` (kind "end": at the end of
    training, "job": an eval job `eval_job`); returns its id. A job's newest evaluation of a
    kind replaces nothing: every one is kept, newest first in evals(). Each row's "changed"
    is the engine's (engine.evaluation.evaluate.changed, written into every record)."""
    with transaction(db):
        cur = db.execute(
            "INSERT INTO evals (job_id, eval_job, kind, step, n, source, summary, seconds, path, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [job_id, eval_job, kind, record.get("step"), record["n"], record.get("source"),
             json.dumps(record["metrics"]), json.dumps(record.get("seconds") or {}),
             _relative(db, job_id, Path(path)), now()])
        eval_id = cur.lastrowid
        rows = []
        for r in record["rows"]:
            base, bs, ts = r.get("base"), r.get("base_scores") or {}, r["tuned_scores"]
            rows.append((eval_id, r["index"], r["where"], r["prompt"], r["reference"], base,
                         r["tuned"], r["change"],
                         int(bool(r.get("changed"))),
                         bs.get("exact_match"), ts.get("exact_match"), bs.get("token_f1"),
                         ts.get("token_f1"), json.dumps({k: r.get(k) for k in (
                             "base_scores", "tuned_scores", "base_stopped", "tuned_stopped",
                             "conversation")}, ensure_ascii=False)))
        db.conn.executemany(
            "INSERT INTO eval_rows (eval_id, idx, location, prompt, reference, base, tuned, "
            "change, changed, base_exact_match, tuned_exact_match, base_token_f1, "
            "tuned_token_f1, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return eval_id


def evals(db: Database, job_id: str) -> list[dict[str, Any]]:
    """The job's evaluations, newest first: [{id, job_id, eval_job, kind, step, n, source,
    metrics, seconds, path, created_at}] (metrics: engine.evaluation.metrics.summarize's dict)."""
    out = []
    for row in db.query("SELECT * FROM evals WHERE job_id = ? ORDER BY created_at DESC, id DESC",
                        [job_id]):
        row["metrics"] = json.loads(row.pop("summary") or "{}")
        row["seconds"] = json.loads(row["seconds"] or "{}")
        out.append(row)
    return out


def eval_rows(db: Database, eval_id: int, where: tuple[str, ...] = (),
              limit: int | None = None) -> list[dict[str, Any]]:
    """One evaluation's examples in order, those meeting every condition in `where` (names
    of ROW_CONDITIONS): [{index, where, prompt, reference, base, tuned, change, base_scores,
    tuned_scores, base_stopped, tuned_stopped, conversation}]."""
    unknown = [w for w in where if w not in ROW_CONDITIONS]
    if unknown:
        raise ValueError(f"unknown row condition {unknown[0]!r}; use any of: "
                         f"{', '.join(ROW_CONDITIONS)}")
    conditions = " AND ".join(ROW_CONDITIONS[w] for w in where) or "1=1"
    sql = (f"SELECT idx, location, prompt, reference, base, tuned, change, detail FROM eval_rows "
           f"WHERE eval_id = ? AND {conditions} ORDER BY idx")
    if limit:
        sql += f" LIMIT {int(limit)}"
    out = []
    for row in db.query(sql, [eval_id]):
        detail = json.loads(row.pop("detail") or "{}")
        out.append({"index": row["idx"], "where": row["location"], "prompt": row["prompt"],
                    "reference": row["reference"], "base": row["base"], "tuned": row["tuned"],
                    "change": row["change"], **detail})
    return out


def folder_of(job: dict[str, Any]) -> Path:
    """A job's folder: its output_dir, or FTSTUDIO_HOME/jobs/ID."""
    return Path(job.get("output_dir") or job_dir(job["id"]))


def _relative(db: Database, job_id: str, path: Path) -> str:
    """path relative to the job's folder when inside it (as stored in artifacts), else as is."""
    folder = folder_of(get_job(db, job_id)).resolve()
    resolved = path.resolve() if path.is_absolute() else (folder / path).resolve()
    if resolved.is_relative_to(folder):
        return resolved.relative_to(folder).as_posix()
    return str(path)


# --------------------------------------------------------------------------- sweeps


def insert_sweep(db: Database, *, sweep_id: str, name: str, owner: str, config: dict,
                 space: dict, keys: list[str], halving: list[int], priority: int,
                 jobs: list[dict[str, Any]]) -> None:
    """Record a sweep group and its queued jobs (each {id, name, config, point}) in one
    transaction: either the whole group is there or none of it."""
    t = now()
    with transaction(db):
        db["sweeps"].insert({"id": sweep_id, "name": name, "owner": owner, "created_at": t,
                             "config": json.dumps(config), "space": json.dumps(space),
                             "keys": json.dumps(keys), "halving": json.dumps(halving),
                             "priority": int(priority), "rung_done": 0})
        for idx, job in enumerate(jobs):
            db["jobs"].insert({
                "id": job["id"], "name": job["name"], "owner": owner, "kind": "train",
                "status": "queued", "priority": int(priority),
                "config": json.dumps(job["config"]), "created_at": t, "updated_at": t,
                "output_dir": job["config"].get("output_dir")})
            db["sweep_jobs"].insert({"job_id": job["id"], "sweep_id": sweep_id, "idx": idx,
                                     "point": json.dumps(job["point"])})
            _event(db, job["id"], "status", f"queued (sweep {sweep_id}, point {idx + 1} of "
                                            f"{len(jobs)})")


def _decode_sweep(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("config", "space", "keys", "halving"):
        row[key] = json.loads(row[key] or "null")
    return row


def get_sweep(db: Database, sweep_id: str) -> dict[str, Any]:
    rows = list(db.query("SELECT * FROM sweeps WHERE id = ?", [sweep_id]))
    if not rows:
        raise JobNotFound(f"no sweep {sweep_id!r}; `ftstudio sweep ls` lists the sweeps there "
                          "are")
    return _decode_sweep(rows[0])


def list_sweeps(db: Database, owner: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
    return [_decode_sweep(r) for r in db.query(
        f"SELECT s.*, (SELECT COUNT(*) FROM sweep_jobs WHERE sweep_id = s.id) AS jobs "
        f"FROM sweeps s {where} ORDER BY created_at DESC, rowid DESC", params)]


def sweep_members(db: Database, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's jobs in point order: job rows with idx, point, paused_at and cut_at."""
    out = []
    for row in db.query("SELECT j.*, s.idx AS sweep_index, s.point AS sweep_point, "
                        "s.paused_at, s.cut_at FROM sweep_jobs s JOIN jobs j ON j.id = s.job_id "
                        "WHERE s.sweep_id = ? ORDER BY s.idx", [sweep_id]):
        row["sweep_point"] = json.loads(row["sweep_point"] or "{}")
        out.append(_decode(row))
    return out


def sweep_of(db: Database, job_id: str) -> dict[str, Any] | None:
    """{sweep_id, idx, paused_at, cut_at} of a job in a sweep, or None."""
    rows = list(db.query("SELECT sweep_id, idx, paused_at, cut_at FROM sweep_jobs WHERE "
                         "job_id = ?", [job_id]))
    return rows[0] if rows else None


def set_sweep_job(db: Database, job_id: str, **fields: Any) -> None:
    """Set paused_at / cut_at of one sweep job."""
    sets = ", ".join(f"[{k}] = ?" for k in fields)
    with transaction(db):
        db.execute(f"UPDATE sweep_jobs SET {sets} WHERE job_id = ?", [*fields.values(), job_id])


def claim_rung(db: Database, sweep_id: str, step: int, ready) -> list[dict[str, Any]] | None:
    """Decide successive halving's rung `step` once: under the write lock, read the sweep's
    jobs, and when `ready(members)` says every job still in the race has reached the step,
    mark the rung decided and return the members; None when it is not time yet or another
    process decided it first."""
    with transaction(db):
        done = db.execute("SELECT rung_done FROM sweeps WHERE id = ?", [sweep_id]).fetchone()
        if done is None or (done[0] or 0) >= step:
            return None
        members = sweep_members(db, sweep_id)
        if not ready(members):
            return None
        db.execute("UPDATE sweeps SET rung_done = ? WHERE id = ?", [step, sweep_id])
    return members


def metric_at(db: Database, job_ids: list[str], name: str, step: int | None = None
              ) -> dict[str, tuple[int, float]]:
    """{job_id: (step, value)} of metric `name`: each job's last row of it (up to `step` when
    given). One backward walk of the (job_id, step) index per job, stopping at its first hit."""
    out = {}
    for job_id in job_ids:
        row = db.execute("SELECT step, value FROM metrics WHERE job_id = ? AND step <= ? AND "
                         "name = ? AND value IS NOT NULL ORDER BY step DESC, id DESC LIMIT 1",
                         [job_id, (1 << 62) if step is None else step, name]).fetchone()
        if row:
            out[job_id] = (row[0], row[1])
    return out


def metric_names(db: Database, job_ids: list[str], recent: int = 400) -> list[str]:
    """The metric names among each job's newest `recent` rows (bounded work per job: the
    evaluation metrics of its last steps, which is what a leaderboard ranks by)."""
    names: set[str] = set()
    for job_id in job_ids:
        names.update(r[0] for r in db.execute(
            "SELECT name FROM (SELECT name FROM metrics WHERE job_id = ? ORDER BY step DESC "
            "LIMIT ?)", [job_id, recent]))
    return sorted(names)

"""The FTSTUDIO_* settings of the queue, the workers, the team server and the logins, read when
called (a test or a command-line flag that sets a variable takes effect at once). The engine's
own (FTSTUDIO_HOME, the trackers') are in engine/settings.py; `home` is re-exported here so the
jobs layer asks one module.

Use from Python:
    from jobs import settings
    settings.home()              # FTSTUDIO_HOME as given (default ./studio-data)
    settings.cancel_grace_s()    # 30.0 unless FTSTUDIO_CANCEL_GRACE says otherwise

A value that does not parse falls back to its default, except the login limits, which are a
security setting: a bad one is a ValueError naming the variable (the server refuses to start).
"""

from __future__ import annotations

from engine.settings import TRUE, home, number, text  # noqa: F401  (home: for jobs/)


# --------------------------------------------------------------------------- which queue


def redis_url() -> str:
    """FTSTUDIO_REDIS_URL: a Redis queue shared by several machines; empty: SQLite."""
    return text("FTSTUDIO_REDIS_URL")


# --------------------------------------------------------------------------- workers


def auto_resume() -> bool:
    """FTSTUDIO_AUTO_RESUME (default 1): 0 leaves a crashed worker's jobs for a person."""
    return text("FTSTUDIO_AUTO_RESUME") != "0"


def stale_after_s() -> float:
    """FTSTUDIO_STALE_AFTER: seconds without a heartbeat before a job counts as interrupted."""
    return number("FTSTUDIO_STALE_AFTER", 120.0)


def worker_gpus() -> tuple[int, float] | str | None:
    """FTSTUDIO_WORKER_GPUS: the GPUs of the studio's workers as COUNTxGiB (e.g. 4x24), for a
    web server that sees none itself (a team server with GPU workers elsewhere): the Train form
    then shows its Parallelism section and plans per-GPU memory for them, and a job that cannot
    fit them is refused at submit. "off": no such check. Empty: what this machine has (its CUDA
    GPUs, else its RAM) with the local queue, and no check with a Redis queue."""
    raw = text("FTSTUDIO_WORKER_GPUS").lower()
    if raw == "off":
        return "off"
    count, _, gib = raw.partition("x")
    try:
        return (int(count), float(gib)) if int(count) > 0 and float(gib) > 0 else None
    except ValueError:
        return None


def cancel_grace_s() -> float:
    """FTSTUDIO_CANCEL_GRACE: seconds a cancelled job has to stop before it is terminated."""
    return number("FTSTUDIO_CANCEL_GRACE", 30.0)


def kill_after_s() -> float:
    """FTSTUDIO_KILL_AFTER: seconds between terminating a job's process and killing it."""
    return number("FTSTUDIO_KILL_AFTER", 30.0)


def job_attempt() -> int | None:
    """FTSTUDIO_JOB_ATTEMPT, set by the worker for a job's child process."""
    return int(number("FTSTUDIO_JOB_ATTEMPT", 0, int)) or None


def remote_job() -> str:
    """FTSTUDIO_REMOTE_JOB, set by a remote worker for a job's child: the job as claimed (JSON),
    so the child needs no database (jobs/remote.py)."""
    return text("FTSTUDIO_REMOTE_JOB")


def worker_pid() -> int | None:
    """FTSTUDIO_WORKER_PID, set by the worker for a job's child process."""
    return int(number("FTSTUDIO_WORKER_PID", 0, int)) or None


# --------------------------------------------------------------------------- a team server


def auth() -> bool:
    """FTSTUDIO_AUTH=on: `ftstudio serve` requires a login."""
    return text("FTSTUDIO_AUTH").lower() in TRUE


def allow_remote_code() -> bool:
    """FTSTUDIO_ALLOW_REMOTE_CODE=1: admins may submit model.trust_remote_code: true."""
    return text("FTSTUDIO_ALLOW_REMOTE_CODE").lower() in TRUE


def max_queued_per_user(default: int = 20) -> int:
    """FTSTUDIO_MAX_QUEUED_PER_USER: queued jobs one non-admin account may have at once."""
    return int(number("FTSTUDIO_MAX_QUEUED_PER_USER", default, int))


def max_upload_mb(default: float = 200.0) -> float:
    """FTSTUDIO_MAX_UPLOAD_MB: the largest dataset or model upload the studio accepts."""
    return number("FTSTUDIO_MAX_UPLOAD_MB", default)


def apart_workers() -> int:
    """FTSTUDIO_APART_WORKERS (default 1): child processes that read uploads and tokenize data
    reports for the web process (jobs/apart.py)."""
    return max(1, int(number("FTSTUDIO_APART_WORKERS", 1, int)))


def login_max_failures(default: int) -> int:
    """FTSTUDIO_LOGIN_MAX_FAILURES: wrong logins of one username before it is locked."""
    return int(number("FTSTUDIO_LOGIN_MAX_FAILURES", default, int, strict=True))


def login_lockout_s(default: float) -> float:
    """FTSTUDIO_LOGIN_LOCKOUT_S: how long a locked username stays locked."""
    return number("FTSTUDIO_LOGIN_LOCKOUT_S", default, float, strict=True)


def login_max_failures_per_minute(default: int) -> int:
    """FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE: wrong logins of every username in a minute
    before every login is refused for a while."""
    return int(number("FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE", default, int, strict=True))


# --------------------------------------------------------------------------- the runner


def train_entry() -> str:
    """FTSTUDIO_TRAIN_ENTRY=module:function: what a training job calls instead of
    engine.training.loop.run (same shape: (config, reporter) -> result; jobs/kinds/train.py)."""
    return text("FTSTUDIO_TRAIN_ENTRY")

"""Every FTSTUDIO_* environment setting, read in one place (engine, jobs and app all ask here).

Use from Python:
    from engine import settings
    settings.home()              # FTSTUDIO_HOME as given (default ./studio-data)
    settings.cancel_grace_s()    # 30.0 unless FTSTUDIO_CANCEL_GRACE says otherwise

Each function reads the environment when called, so a test or a command-line flag that sets a
variable takes effect at once. The README's Settings table documents each one; the flags of
`ftstudio serve` (--host, --port, --home) read FTSTUDIO_HOST, FTSTUDIO_PORT and FTSTUDIO_HOME
through click's envvar and set FTSTUDIO_HOME for the rest of the process.

A value that does not parse falls back to its default, except the login limits, which are a
security setting: a bad one is a ValueError naming the variable (the server refuses to start).
"""

from __future__ import annotations

import os
from pathlib import Path

TRUE = ("1", "true", "yes", "on")


def _text(name: str) -> str:
    return os.environ.get(name, "").strip()


def _number(name: str, default: float, kind: type = float, strict: bool = False) -> float:
    raw = _text(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or (strict and value < 0):
        if not strict:
            return default
        whole = "a whole number" if kind is int else "a number of seconds"
        raise ValueError(f"{name}={raw!r} is not valid: use {whole}, 0 or more (0 turns the "
                         f"limit off), or unset it for the default {default:g}")
    return value


# --------------------------------------------------------------------------- where and which queue


def home() -> Path:
    """FTSTUDIO_HOME: where everything lives (default ./studio-data), as given."""
    return Path(os.environ.get("FTSTUDIO_HOME") or "studio-data").expanduser()


def redis_url() -> str:
    """FTSTUDIO_REDIS_URL: a Redis queue shared by several machines; empty: SQLite."""
    return _text("FTSTUDIO_REDIS_URL")


# --------------------------------------------------------------------------- workers


def auto_resume() -> bool:
    """FTSTUDIO_AUTO_RESUME (default 1): 0 leaves a crashed worker's jobs for a person."""
    return _text("FTSTUDIO_AUTO_RESUME") != "0"


def stale_after_s() -> float:
    """FTSTUDIO_STALE_AFTER: seconds without a heartbeat before a job counts as interrupted."""
    return _number("FTSTUDIO_STALE_AFTER", 120.0)


def cancel_grace_s() -> float:
    """FTSTUDIO_CANCEL_GRACE: seconds a cancelled job has to stop before it is terminated."""
    return _number("FTSTUDIO_CANCEL_GRACE", 30.0)


def kill_after_s() -> float:
    """FTSTUDIO_KILL_AFTER: seconds between terminating a job's process and killing it."""
    return _number("FTSTUDIO_KILL_AFTER", 30.0)


def job_attempt() -> int | None:
    """FTSTUDIO_JOB_ATTEMPT, set by the worker for a job's child process."""
    return int(_number("FTSTUDIO_JOB_ATTEMPT", 0, int)) or None


def worker_pid() -> int | None:
    """FTSTUDIO_WORKER_PID, set by the worker for a job's child process."""
    return int(_number("FTSTUDIO_WORKER_PID", 0, int)) or None


# --------------------------------------------------------------------------- a team server


def auth() -> bool:
    """FTSTUDIO_AUTH=on: `ftstudio serve` requires a login."""
    return _text("FTSTUDIO_AUTH").lower() in TRUE


def allow_remote_code() -> bool:
    """FTSTUDIO_ALLOW_REMOTE_CODE=1: admins may submit model.trust_remote_code: true."""
    return _text("FTSTUDIO_ALLOW_REMOTE_CODE").lower() in TRUE


def max_queued_per_user(default: int = 20) -> int:
    """FTSTUDIO_MAX_QUEUED_PER_USER: queued jobs one non-admin account may have at once."""
    return int(_number("FTSTUDIO_MAX_QUEUED_PER_USER", default, int))


def max_upload_mb(default: float = 200.0) -> float:
    """FTSTUDIO_MAX_UPLOAD_MB: the largest dataset or model upload the studio accepts."""
    return _number("FTSTUDIO_MAX_UPLOAD_MB", default)


def login_max_failures(default: int) -> int:
    """FTSTUDIO_LOGIN_MAX_FAILURES: wrong logins of one username before it is locked."""
    return int(_number("FTSTUDIO_LOGIN_MAX_FAILURES", default, int, strict=True))


def login_lockout_s(default: float) -> float:
    """FTSTUDIO_LOGIN_LOCKOUT_S: how long a locked username stays locked."""
    return _number("FTSTUDIO_LOGIN_LOCKOUT_S", default, float, strict=True)


def login_max_failures_per_minute(default: int) -> int:
    """FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE: wrong logins of every username in a minute
    before every login is refused for a while."""
    return int(_number("FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE", default, int, strict=True))


# --------------------------------------------------------------------------- trackers (train.report_to)
# The trackers' own variables, read here so that where a run's metrics go is decided in one place.


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in FTSTUDIO_HOME/mlflow (MLflow 3 refuses its
    file store unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is what it recommends)."""
    return _text("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(home() / 'mlflow' / 'mlflow.db').resolve()}"


def mlflow_artifacts() -> Path | None:
    """Where the default MLflow store keeps run artifacts (FTSTUDIO_HOME/mlflow/artifacts);
    None with MLFLOW_TRACKING_URI, whose server decides."""
    return None if _text("MLFLOW_TRACKING_URI") else (home() / "mlflow" / "artifacts").resolve()


def wandb_mode() -> str:
    """WANDB_MODE when set (online, offline, disabled), else online with WANDB_API_KEY and
    offline without it."""
    return _text("WANDB_MODE") or ("online" if _text("WANDB_API_KEY") else "offline")


def wandb_project() -> str:
    """WANDB_PROJECT, else ftstudio."""
    return _text("WANDB_PROJECT") or "ftstudio"


# --------------------------------------------------------------------------- test hooks


def test_fail() -> str:
    """FTSTUDIO_TEST_FAIL (jobs/runner.py documents it): jobs that fail on purpose."""
    return _text("FTSTUDIO_TEST_FAIL")


def test_fake_train() -> str:
    """FTSTUDIO_TEST_FAKE_TRAIN (jobs/runner.py documents it): fake steps instead of training."""
    return _text("FTSTUDIO_TEST_FAKE_TRAIN")

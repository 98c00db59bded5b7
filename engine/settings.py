"""The environment settings the engine itself reads: FTSTUDIO_HOME and the trackers' own
variables. The worker's, the team server's and the logins' settings live in jobs/settings.py.

Use from Python:
    from engine import settings
    settings.home()              # FTSTUDIO_HOME as given (default ./studio-data)
    settings.wandb_mode()        # offline unless WANDB_API_KEY or WANDB_MODE say otherwise

Each function reads the environment when called, so a test or a command-line flag that sets a
variable takes effect at once. docs/settings.md documents each one; the flags of
`ftstudio serve` (--host, --port, --home) read FTSTUDIO_HOST, FTSTUDIO_PORT and FTSTUDIO_HOME
through click's envvar and set FTSTUDIO_HOME for the rest of the process.

A value that does not parse falls back to its default, except the login limits, which are a
security setting: a bad one is a ValueError naming the variable (the server refuses to start).
"""

from __future__ import annotations

import os
from pathlib import Path

TRUE = ("1", "true", "yes", "on")


def text(name: str) -> str:
    """The variable's value, stripped ("" when unset)."""
    return os.environ.get(name, "").strip()


def number(name: str, default: float, kind: type = float, strict: bool = False) -> float:
    """The variable as a number; unset or unparsable: the default (strict: a ValueError naming
    the variable, also for a negative value)."""
    raw = text(name)
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


# --------------------------------------------------------------------------- where


def home() -> Path:
    """FTSTUDIO_HOME: where everything lives (default ./studio-data), as given."""
    return Path(os.environ.get("FTSTUDIO_HOME") or "studio-data").expanduser()


# --------------------------------------------------------------------------- trackers (train.report_to)
# The trackers' own variables, read here so that where a run's metrics go is decided in one place.


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in FTSTUDIO_HOME/mlflow (MLflow 3 refuses its
    file store unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is what it recommends)."""
    return text("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(home() / 'mlflow' / 'mlflow.db').resolve()}"


def mlflow_artifacts() -> Path | None:
    """Where the default MLflow store keeps run artifacts (FTSTUDIO_HOME/mlflow/artifacts);
    None with MLFLOW_TRACKING_URI, whose server decides."""
    return None if text("MLFLOW_TRACKING_URI") else (home() / "mlflow" / "artifacts").resolve()


def wandb_mode() -> str:
    """WANDB_MODE when set (online, offline, disabled), else online with WANDB_API_KEY and
    offline without it."""
    return text("WANDB_MODE") or ("online" if text("WANDB_API_KEY") else "offline")


def wandb_project() -> str:
    """WANDB_PROJECT, else ftstudio."""
    return text("WANDB_PROJECT") or "ftstudio"

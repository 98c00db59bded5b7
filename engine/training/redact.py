"""Which environment values are secrets, and text and data with them masked.

A secret is the value of HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_PASSWORD or of any variable whose name ends in _TOKEN, _KEY, _SECRET or
_PASSWORD, and the password inside any *_URI or *_URL variable (https://user:PASSWORD@host,
redis://:PASSWORD@host). Values shorter than MIN_LENGTH are left alone: they would blank out
ordinary words. The engine masks what it sends to trackers (engine/training/trackers.py); jobs/redact.py
masks everything a job writes for people.

Use from Python:
    from engine.training.redact import redact
    redact("token hf_abc123 here")       # -> "token *** here" when HF_TOKEN=hf_abc123
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
NAMES = ("HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
URL_SUFFIXES = ("_URI", "_URL")
MIN_LENGTH = 6
MASK = "***"


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper in NAMES or upper.endswith(SUFFIXES)


def url_password(value: str) -> str | None:
    try:
        return urlsplit(value).password
    except ValueError:
        return None


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """The secret values of `env` (default os.environ), longest first."""
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if is_secret_name(k)}
    values |= {url_password(v) or "" for k, v in env.items() if k.upper().endswith(URL_SUFFIXES)}
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    if not text:
        return text
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_data(value: Any, secrets: list[str] | None = None) -> Any:
    """A JSON-like value with every string (keys too) redacted."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(str(k), secrets) if isinstance(k, str) else k: redact_data(v, secrets)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v, secrets) for v in value]
    return value

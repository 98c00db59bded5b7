"""Keep secrets from the environment out of everything a job writes that people see.

A secret is the value of HF_TOKEN or of any environment variable whose name ends in _TOKEN,
_KEY, _SECRET or _PASSWORD (values shorter than MIN_LENGTH are left alone: they would blank out
ordinary words). The runner wraps its stdout/stderr (log.txt) and redacts every event line, error
and hint it writes to studio.db; config.yaml and run.json are rewritten redacted when a job ends
(by the runner, and by the worker for a child that was killed), so exports made from them, and
their model cards, carry no secret either.

Use from Python:
    from jobs.redact import redact, redact_file
    redact("token hf_abc123 here")       # -> "token *** here" when HF_TOKEN=hf_abc123
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
NAMES = ("HF_TOKEN",)
MIN_LENGTH = 6
MASK = "***"


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper in NAMES or upper.endswith(SUFFIXES)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """The secret values of `env` (default os.environ), longest first."""
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


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


def redact_file(path: str | os.PathLike) -> bool:
    """Rewrite a text file (JSON files structurally) without secrets; True when it changed."""
    p = Path(path)
    secrets = secret_values()
    if not secrets or not p.is_file():
        return False
    text = p.read_text(encoding="utf-8", errors="replace")
    if not any(s in text for s in secrets):
        return False
    if p.suffix == ".json":
        try:
            new = json.dumps(redact_data(json.loads(text), secrets), indent=2) + "\n"
        except ValueError:
            new = redact(text, secrets)
    else:
        new = redact(text, secrets)
    tmp = p.with_name(p.name + ".redact")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(p)
    return True


def scrub_run_folder(folder: str | os.PathLike) -> None:
    """config.yaml and run.json of a job's folder, redacted in place."""
    for name in ("config.yaml", "run.json"):
        redact_file(Path(folder) / name)


class RedactingStream:
    """A text stream that redacts what is written to it (the runner's stdout and stderr)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._secrets = secret_values()

    def write(self, text: str) -> int:
        self._stream.write(redact(text, self._secrets))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding ...
        return getattr(self._stream, name)

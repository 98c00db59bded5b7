"""Keep secrets from the environment out of everything a job writes that people see.

Which values are secrets is engine/training/redact.py's rule: HF_TOKEN, WANDB_API_KEY,
MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD, any variable ending in _TOKEN, _KEY, _SECRET or
_PASSWORD, and the password inside a *_URI or *_URL variable. The runner wraps its stdout and
stderr (log.txt) and redacts every event line, error and hint it writes to studio.db; config.yaml and run.json are rewritten redacted when a job ends
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

# which values are secrets, and masking them, live in the engine (it masks what it sends to
# trackers); they are re-exported here for the runner and the worker
from engine.training.redact import (MASK, MIN_LENGTH, NAMES, SUFFIXES, is_secret_name,  # noqa: F401
                           redact, redact_data, secret_values)


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

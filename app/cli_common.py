"""What the `ftstudio` command modules share.

Use from a command:
    with clean_errors():            # a bad config, an unknown job, a bad value ...
        job = api.get(job_id)       # ... ends the command with its message, exit 1
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click

from engine.config import ConfigError


@contextmanager
def clean_errors(*more: type[Exception]) -> Iterator[None]:
    """Expected failures (ConfigError, jobs' JobError, ValueError, and `more`) end the command
    with their own message and exit status 1, without a traceback; anything else is a bug and
    keeps its traceback."""
    from jobs.store import JobError

    try:
        yield
    except (ConfigError, JobError, ValueError, *more) as exc:
        raise click.ClickException(str(exc)) from None

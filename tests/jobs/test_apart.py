"""jobs.apart: the web process's heavy reads in a child process, errors and a dying child
included (slow: it spawns the child)."""

from __future__ import annotations

import os

import pytest

from engine.data import DataError
from jobs.apart import run_apart, shutdown

pytestmark = pytest.mark.slow


def _refuse(message: str) -> None:
    raise DataError(message)


def test_work_runs_in_another_process_and_errors_come_back():
    assert run_apart(os.getpid) != os.getpid()
    with pytest.raises(DataError, match="line 3: field 'output' is missing"):
        run_apart(_refuse, "line 3: field 'output' is missing")


def test_a_dying_child_is_reported_and_replaced():
    with pytest.raises(OSError, match="died"):
        run_apart(os._exit, 3)
    assert run_apart(os.getpid) != os.getpid()     # a new child
    shutdown()

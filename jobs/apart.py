"""Heavy work of the web process (tokenizing a data report, reading an uploaded file) run in a
child process, so the server's requests never wait behind it: the web process only waits on a
future, holding no lock Python's threads share (the GIL), and a child that dies (out of memory)
takes nothing else down.

Use from Python:
    from jobs.apart import run_apart
    report = run_apart(make_report, path, model_name, data_settings)   # fn must be importable

One spawned child serves every such call, one at a time (FTSTUDIO_APART_WORKERS children: 1
by default, so a burst of uploads cannot take every core from the training jobs); it starts
on first use and is started again after a crash. The child imports what fn needs once.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from jobs import settings

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=settings.apart_workers(),
                                        mp_context=multiprocessing.get_context("spawn"))
        return _pool


def run_apart(fn: Callable[..., Any], *args: Any, timeout: float = 1800) -> Any:
    """fn(*args) in the child process; its result, or the exception it raised (which must be
    picklable: DataError, OSError and ValueError are). A child that died raises OSError saying
    so, and the next call starts a new one."""
    global _pool
    pool = _executor()
    try:
        return pool.submit(fn, *args).result(timeout=timeout)
    except BrokenProcessPool:
        with _lock:
            if _pool is pool:
                _pool = None
        raise OSError("the process reading the data died (out of memory?); try a smaller "
                      "file") from None


def shutdown() -> None:
    """Stop the child (tests; the server's exit does it too)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)

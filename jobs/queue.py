"""The Huey instance: SqliteHuey at FTSTUDIO_HOME/queue.db, or a priority-capable Redis queue
shared by workers on several machines when FTSTUDIO_REDIS_URL is set (redis://host:6379/0).

Use from Python:
    from jobs.queue import get_huey
    huey = get_huey()          # one instance per (FTSTUDIO_HOME, FTSTUDIO_REDIS_URL) in a process

The instance is looked up from the environment at call time (not at import), so a process can
point at another home (tests do). Its one task lives in jobs/tasks.py.
"""

from __future__ import annotations

import threading

from huey import Huey, PriorityRedisHuey, SqliteHuey

from jobs import settings
from jobs.store import home

QUEUE_NAME = "ftstudio"
_instances: dict[tuple[str, str], Huey] = {}
_lock = threading.Lock()


def redis_url() -> str:
    return settings.redis_url()


def get_huey() -> Huey:
    url = redis_url()
    key = (str(home()), url)
    with _lock:
        huey = _instances.get(key)
        if huey is None:
            huey = _instances[key] = _create(url)
    return huey


def _create(url: str) -> Huey:
    if url:
        # A sorted set in Redis: higher priority first, FIFO within a priority.
        return PriorityRedisHuey(QUEUE_NAME, url=url, results=False, blocking=True,
                                 read_timeout=1)
    path = home() / "queue.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(path), results=False, timeout=30)


def describe(huey: Huey | None = None) -> str:
    """Where the queue lives, for logs and the UI (no password)."""
    huey = huey or get_huey()
    if isinstance(huey, PriorityRedisHuey):
        url = redis_url()
        return "redis " + (url.split("@")[-1] if "@" in url else url.removeprefix("redis://"))
    return f"sqlite {huey.storage.filename}"

"""The Huey instance: SqliteHuey at FTSTUDIO_HOME/queue.db, or a priority-capable Redis queue
shared by workers on several machines when FTSTUDIO_REDIS_URL is set (redis://host:6379/0).

Use from Python:
    from jobs.queue import get_huey
    huey = get_huey()          # one instance per (FTSTUDIO_HOME, FTSTUDIO_REDIS_URL) in a process

The instance is looked up from the environment at call time (not at import), so a process can
point at another home (tests do). Its one task lives in jobs/tasks.py.

Both queues run the highest priority first and, within one priority, the OLDEST job first: a
task is ordered by the time its job was first submitted (`queued_since`), not by when it was
put on the queue, so a job resumed after a restart (or re-queued by recovery) keeps its place
ahead of jobs submitted after it. Huey's own storages order by enqueue time; the two below
order by the job's age instead (jobs.tasks.enqueue passes it).
"""

from __future__ import annotations

import contextlib
import contextvars
import struct
import threading
import time
from collections.abc import Iterator

from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.storage import PriorityRedisStorage, SqliteStorage

from jobs import settings
from jobs.store import home

QUEUE_NAME = "ftstudio"
_instances: dict[tuple[str, str], Huey] = {}
_lock = threading.Lock()


def redis_url() -> str:
    return settings.redis_url()


_since: contextvars.ContextVar[float | None] = contextvars.ContextVar("queued_since",
                                                                    default=None)


@contextlib.contextmanager
def queued_since(when: float | None) -> Iterator[None]:
    """Tasks enqueued inside take their place in line as of `when` (a job's created_at, epoch
    seconds); None: now."""
    token = _since.set(when)
    try:
        yield
    finally:
        _since.reset(token)


def _age() -> float:
    since = _since.get()
    return time.time() if since is None else float(since)


class AgedSqliteStorage(SqliteStorage):
    """SqliteStorage ordered by (priority desc, the job's age, id). A queue.db made before has
    the column added (its tasks count as oldest: they were queued first)."""

    index_task = ("create index if not exists task_queue_priority_since on task "
                  "(queue, priority desc, since, id)")
    ddl = [SqliteStorage.table_kv, SqliteStorage.table_sched, SqliteStorage.index_sched,
           SqliteStorage.table_task, index_task, SqliteStorage.table_counter,
           SqliteStorage.drop_index_task]

    def initialize_schema(self) -> None:
        with self.db(commit=True) as curs:
            curs.execute(SqliteStorage.table_task)
            columns = [row[1] for row in curs.execute("pragma table_info(task)")]
            if "since" not in columns:
                curs.execute("alter table task add column since real not null default 0")
        super().initialize_schema()

    def enqueue(self, data, priority=None):
        self.sql("insert into task (queue, data, priority, since) values (?, ?, ?, ?)",
                 (self.name, self.to_blob(data), priority or 0, _age()), commit=True)

    def dequeue(self):
        if not self.sql("select 1 from task where queue = ? limit 1", (self.name,),
                        results=True):
            return None
        with self.db(commit=True) as curs:
            curs.execute("select id, data from task where queue = ? "
                         "order by priority desc, since, id limit 1", (self.name,))
            row = curs.fetchone()
            if row is not None:
                curs.execute("delete from task where id = ?", (row[0],))
                if curs.rowcount == 1:
                    return row[1]
        return None

    def enqueued_items(self, limit=None):
        sql = "select data from task where queue=? order by priority desc, since, id"
        params: tuple = (self.name,)
        if limit is not None:
            sql, params = sql + " limit ?", (self.name, limit)
        return [i for i, in self.sql(sql, params, results=True)]


class AgedPriorityRedisStorage(PriorityRedisStorage):
    """PriorityRedisStorage whose members sort, within a score (priority), by the job's age:
    Huey prefixes each member with its enqueue time in microseconds; here it is the job's."""

    def enqueue(self, data, priority=None):
        score = 0 if priority is None else -priority
        prefix = struct.pack(">Q", int(_age() * 1e6))
        self.conn.zadd(self.queue_key, {prefix + data: score})


class AgedSqliteHuey(SqliteHuey):
    storage_class = AgedSqliteStorage


class AgedPriorityRedisHuey(PriorityRedisHuey):
    storage_class = AgedPriorityRedisStorage


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
        return AgedPriorityRedisHuey(QUEUE_NAME, url=url, results=False, blocking=True,
                                     read_timeout=1)
    path = home() / "queue.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return AgedSqliteHuey(QUEUE_NAME, filename=str(path), results=False, timeout=30)


def describe(huey: Huey | None = None) -> str:
    """Where the queue lives, for logs and the UI (no password)."""
    huey = huey or get_huey()
    if isinstance(huey, PriorityRedisHuey):
        url = redis_url()
        return "redis " + (url.split("@")[-1] if "@" in url else url.removeprefix("redis://"))
    return f"sqlite {huey.storage.filename}"

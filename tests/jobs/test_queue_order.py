"""A job queued again (resumed, recovered) keeps its place in line: its priority and its age,
ahead of jobs submitted after it, on SQLite and on Redis (jobs.queue's aged storages)."""

from __future__ import annotations

import sqlite3

import pytest

from jobs import api, store, tasks
from jobs.queue import get_huey
from queue_helpers import fake_config
from test_redis import redis_url  # noqa: F401 - the real redis-server fixture


def line() -> list[str]:
    """The job ids of the queue's tasks in the order workers take them, a job once."""
    return list(dict.fromkeys(t.args[0] for t in get_huey().pending()))


def drain() -> list[str]:
    """Take every task off the queue as a worker would, in order."""
    huey, taken = get_huey(), []
    while (data := huey.storage.dequeue()) is not None:
        taken.append(huey.deserialize_task(data).args[0])
    return list(dict.fromkeys(taken))


def _interrupt(job_id: str) -> None:
    """The job was running when its worker died: claimed, then interrupted."""
    with store.connect() as db:
        assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"),
                                hostname=tasks.HOST, started_at=store.now())
        assert store.transition(db, job_id, "interrupted", finished_at=store.now())


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, home):
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return request.param


def test_a_resumed_job_keeps_its_priority_and_age(backend):
    first = api.submit(fake_config(), name="first", priority=1)["id"]
    assert drain() == [first]                      # a worker took it ...
    _interrupt(first)                              # ... and died with it
    later = [api.submit(fake_config(), name=f"later-{i}", priority=1)["id"] for i in range(2)]
    low = api.submit(fake_config(), name="low", priority=0)["id"]
    urgent = api.submit(fake_config(), name="urgent", priority=5)["id"]
    api.resume(first)
    assert api.get(first)["priority"] == 1
    assert line() == [urgent, first, *later, low]
    assert drain() == [urgent, first, *later, low]


def test_an_older_queue_db_gains_the_age_column(home):
    home.mkdir(parents=True)
    with sqlite3.connect(home / "queue.db") as db:  # as Huey's own SqliteStorage made it
        db.execute("create table task (id integer not null primary key, queue text not null, "
                   "data blob not null, priority real not null default 0.0)")
        db.execute("insert into task (queue, data, priority) values ('ftstudio', x'00', 0)")
    job = api.submit(fake_config(), name="new")["id"]
    with sqlite3.connect(home / "queue.db") as db:
        columns = [row[1] for row in db.execute("pragma table_info(task)")]
        assert "since" in columns
        assert db.execute("select count(*) from task").fetchone()[0] == 2

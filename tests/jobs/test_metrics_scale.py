"""Polling metrics costs the same for a 100k-step job as for a 100-step one (DESIGN.md, "How data
flows" 5): `jobs.api.metrics(job_id, since_step)` reads only the rows after the cursor through
the (job_id, step) index. Compared as a ratio of interleaved medians, never as absolute times."""

from __future__ import annotations

import statistics
import time

from jobs import api, store

#: one record per step, as the engine writes it (step and total_steps are not rows)
RECORD = {"epoch": 0.5, "loss": 1.25, "lr": 1e-4, "grad_norm": 0.8, "tokens_per_s": 900.0}


def job_with_steps(db, steps: int) -> str:
    """A running job whose metrics are complete up to `steps`: all but the last ten steps
    written in one transaction (as add_metrics writes them, row for row), the last ten through
    store.add_metrics, then published."""
    job_id = store.insert_job(db, config={}, name=f"{steps} steps", owner="local", priority=0)
    assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
    t = store.now()
    with store.transaction(db):
        db.conn.executemany(
            "INSERT INTO metrics (job_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)",
            ((job_id, step, k, v, t) for step in range(1, steps - 9) for k, v in RECORD.items()))
    for step in range(steps - 9, steps + 1):
        assert store.add_metrics(db, job_id, {"step": step, **RECORD, "total_steps": steps},
                                 attempt=1)
    store.publish_metrics(db, job_id, steps, attempt=1)
    return job_id


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_polling_new_rows_costs_the_same_at_100k_steps_as_at_100(home, tmp_path, monkeypatch):
    """Each job in a database of its own: without the index, every poll of the large one would
    scan all its rows, and even a small job's poll would scan the large one's."""
    homes = {"small": home, "large": tmp_path / "large-home"}
    jobs = {}
    for size, steps in (("small", 100), ("large", 100_000)):
        monkeypatch.setenv("FTSTUDIO_HOME", str(homes[size]))
        with store.connect() as db:
            jobs[size] = job_with_steps(db, steps)
    with store.connect() as db:
        plan = " ".join(row[-1] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT step, name, value FROM metrics WHERE job_id = ? AND "
            "step > ? ORDER BY step, id", [jobs["large"], 99_990]))
    assert "USING INDEX" in plan.upper() or "USING COVERING INDEX" in plan.upper(), plan

    def poll(size: str, since: int, last: int):
        def once():
            monkeypatch.setenv("FTSTUDIO_HOME", str(homes[size]))
            assert [r["step"] for r in api.metrics(jobs[size], since)] == \
                list(range(since + 1, last + 1))
        return once

    poll_small, poll_large = poll("small", 90, 100), poll("large", 99_990, 100_000)
    poll_small(), poll_large()  # warm both (page cache, each database's first open)
    small_times, large_times = [], []
    for _ in range(15):  # interleaved, so machine noise falls on both alike
        small_times.append(median_seconds(poll_small, 5))
        large_times.append(median_seconds(poll_large, 5))
    ratio = statistics.median(large_times) / statistics.median(small_times)
    # without the index each poll of the large job scans its 500k rows: ~100x slower
    assert ratio < 3, f"polling a 100k-step job costs {ratio:.1f}x a 100-step one"

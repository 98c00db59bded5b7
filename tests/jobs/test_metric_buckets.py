"""store.metric_buckets / api.metric_buckets: a long curve aggregated in SQL into at most
`points` aligned buckets, checked against the same aggregation done by hand in Python over
the same rows (a real store; access is checked with every other api function in
test_access.py)."""

from __future__ import annotations

import random

import pytest

from jobs import api, store

NAMES = ("loss", "lr", "grad_norm")


def running_job(db, steps: int, published: int) -> tuple[str, list[tuple[int, str, float]]]:
    """A running job with `steps` steps of random loss and grad_norm, a constant lr (every
    bucket a tie) and an eval_loss every 37 steps, complete up to `published`; its rows."""
    job_id = store.insert_job(db, config={}, name="buckets", owner="local", priority=0)
    assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
    rnd = random.Random(7)
    rows = [(step, name, 1e-4 if name == "lr" else rnd.uniform(0, 3))
            for step in range(1, steps + 1) for name in NAMES]
    rows += [(step, "eval_loss", rnd.uniform(0, 3)) for step in range(37, steps + 1, 37)]
    with store.transaction(db):
        db.conn.executemany("INSERT INTO metrics (job_id, step, name, value, time) VALUES "
                            "(?, ?, ?, ?, 0)", [(job_id, *row) for row in rows])
    store.publish_metrics(db, job_id, published, attempt=1)
    return job_id, rows


def by_hand(rows, width: int, upto: int, names=None) -> dict[str, dict]:
    """The buckets computed the slow way: a tied min keeps its earliest step, a tied max its
    latest."""
    out: dict[str, dict] = {}
    for step, name, value in sorted(rows):
        if step > upto or (names is not None and name not in names):
            continue
        series = out.setdefault(name, {"buckets": {}, "first": {"step": step, "value": value}})
        series["last"] = {"step": step, "value": value}
        b = series["buckets"].setdefault((step - 1) // width, {
            "count": 0, "sum": 0.0, "first_step": step, "min": value, "min_step": step,
            "max": value, "max_step": step})
        b["count"] += 1
        b["sum"] += value
        b["last_step"] = step
        if value < b["min"]:
            b["min"], b["min_step"] = value, step
        if value >= b["max"]:
            b["max"], b["max_step"] = value, step
    for series in out.values():
        series["buckets"] = list(series["buckets"].values())
    return out


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert got[name]["first"] == expected[name]["first"], name
        assert got[name]["last"] == expected[name]["last"], name
        assert len(got[name]["buckets"]) == len(expected[name]["buckets"]), name
        for g, e in zip(got[name]["buckets"], expected[name]["buckets"]):
            assert g["sum"] == pytest.approx(e["sum"], rel=1e-12), (name, e)
            assert {k: v for k, v in g.items() if k != "sum"} == \
                {k: v for k, v in e.items() if k != "sum"}, name


def test_buckets_agree_with_a_brute_force_aggregation_over_complete_steps(home):
    with store.connect() as db:
        job_id, rows = running_job(db, steps=3000, published=2900)
        got = store.metric_buckets(db, job_id, points=100)
    # steps 1..2900 in at most 100 buckets: 16 steps a bucket would take 182, 32 take 91
    assert got["width"] == 32
    assert max(len(s["buckets"]) for s in got["metrics"].values()) == 91
    assert_same(got["metrics"], by_hand(rows, 32, upto=2900))
    assert got["metrics"]["loss"]["last"]["step"] == 2900      # not past metrics_step


def test_a_finished_job_is_bucketed_whole_and_names_narrow_it(home):
    with store.connect() as db:
        job_id, rows = running_job(db, steps=1000, published=10)
        assert store.transition(db, job_id, "completed")
    got = api.metric_buckets(job_id, 1000, names=["loss", "eval_loss"])
    assert got["width"] == 1                                # 1000 steps fit: every row exact
    assert_same(got["metrics"], by_hand(rows, 1, upto=1000, names={"loss", "eval_loss"}))
    assert all(b["count"] == 1 for b in got["metrics"]["loss"]["buckets"])
    small = api.metric_buckets(job_id, 7, names=("lr",))
    assert small["width"] == 256 and len(small["metrics"]["lr"]["buckets"]) == 4


def test_a_job_without_metrics_has_no_buckets(home):
    with store.connect() as db:
        job_id = store.insert_job(db, config={}, name="empty", owner="local", priority=0)
    assert api.metric_buckets(job_id, 1500) == {"width": 1, "metrics": {}}
    with pytest.raises(store.JobNotFound):
        api.metric_buckets("0000000000", 1500)

"""The live charts of long jobs, over a real store: the first poll reads each curve as SQL
buckets, later polls add new rows to bounded Curves, and the browser gets at most about twice
CHART_POINTS points a series, with spikes, both ends and every eval point kept. A short job's
frames are what they were before curves: every point, smoothed by smooth()."""

from __future__ import annotations

import math
import os
import time

import pandas as pd
import pytest

from app.studio import curves as charts, jobview
from jobs import api, store

LIMIT = charts.CHART_POINTS
SPIKE = 50_001             # one step whose loss jumps far above its neighbours
DIP = 70_001               # and one where it drops far below them
EVAL_EVERY = 500


def value(name: str, step: int) -> float:
    if name == "loss":
        return 40.0 if step == SPIKE else 0.01 if step == DIP else \
            2.0 + 0.5 * math.sin(step / 700) + ((step * 7919) % 101) / 1010
    if name == "eval_loss":
        return 1.5 + 1 / step
    return {"epoch": step / 1000, "lr": 1e-4, "grad_norm": 0.8}.get(name, 900.0 + step % 13)


def running_job(db) -> str:
    job_id = store.insert_job(db, config={}, name="long", owner="local", priority=0)
    assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
    return job_id


def write_steps(db, job_id: str, first: int, last: int) -> None:
    """Steps first..last as the engine writes them (five values a step, eval_loss every
    EVAL_EVERY steps) in one transaction, then published as complete."""
    names = ("epoch", "loss", "lr", "grad_norm", "tokens_per_s")
    rows = ((job_id, step, name, value(name, step)) for step in range(first, last + 1)
            for name in names + (("eval_loss",) if step % EVAL_EVERY == 0 else ()))
    with store.transaction(db):
        db.conn.executemany("INSERT INTO metrics (job_id, step, name, value, time) VALUES "
                            "(?, ?, ?, ?, 0)", rows)
    store.publish_metrics(db, job_id, last, attempt=1)


def held(session) -> int:
    return sum(len(c.buckets) for c in session["curves"].values())


def test_a_100k_step_job_sends_bounded_frames_with_its_spike_and_ends(home):
    with store.connect() as db:
        job_id = running_job(db)
        write_steps(db, job_id, 1, 100_000)
    session, changed, _ = jobview.poll(None, job_id)
    assert changed and session["since"] == 100_000
    f = jobview.frames(session)
    raw = f["loss"][f["loss"]["series"] == "raw"]
    smoothed = f["loss"][f["loss"]["series"] == "smoothed"]
    for points in (raw, smoothed, f["lr"], f["tokens_per_s"]):
        assert len(points) <= 2 * LIMIT + 2
    assert len(smoothed) <= LIMIT and len(raw) > LIMIT / 2      # not thinned to nothing
    assert (raw["step"] == SPIKE).any() and raw["value"].max() == 40.0
    assert (raw["step"] == DIP).any() and raw["value"].min() == 0.01
    assert raw["step"].iloc[0] == 1 and raw["step"].iloc[-1] == 100_000
    assert raw["value"].iloc[0] == value("loss", 1)
    assert raw["value"].iloc[-1] == value("loss", 100_000)
    assert list(raw["step"]) == sorted(raw["step"])
    assert smoothed["value"].max() < 3                          # one spike, a smooth curve
    evals = f["eval_loss"]                                      # few: every one exact
    assert list(evals["step"]) == list(range(EVAL_EVERY, 100_001, EVAL_EVERY))
    assert list(evals["value"]) == [value("eval_loss", s) for s in evals["step"]]
    assert held(session) <= len(jobview.CHARTED) * LIMIT
    assert list(f["loss"].columns) == ["step", "value", "series"]
    assert [str(t) for t in f["lr"].dtypes] == ["int64", "float64"]


def test_curves_stay_bounded_and_on_the_store_grid_over_100k_more_polled_steps(home):
    with store.connect() as db:
        job_id = running_job(db)
        write_steps(db, job_id, 1, 100_000)
        session, _, _ = jobview.poll(None, job_id)
        for last in range(110_000, 200_001, 10_000):       # ten ticks of 10k new steps
            write_steps(db, job_id, last - 9_999, last)
            session, changed, _ = jobview.poll(session, job_id)
            assert changed and session["since"] == last
            assert all(len(c.buckets) <= LIMIT for c in session["curves"].values())
    loss = session["curves"]["loss"]
    assert loss.width == 256 and len(loss.buckets) == 782     # 200k steps / 256, rounded up
    raw = jobview.series(session, "loss")
    assert (SPIKE, 40.0) in raw and raw[0][0] == 1 and raw[-1] == (200_000,
                                                                 value("loss", 200_000))
    # merged online, the curve holds what SQL computes at the same width
    fresh = charts.curves(api.metric_buckets(job_id, LIMIT, names=["loss"]))["loss"]
    assert fresh.width == loss.width and len(fresh.buckets) == len(loss.buckets)
    for online, sql in zip(loss.buckets, fresh.buckets):
        assert online.sum == pytest.approx(sql.sum, rel=1e-9)
        assert (online.count, online.first_step, online.last_step, online.min_step,
                online.max_step, online.min, online.max) == \
            (sql.count, sql.first_step, sql.last_step, sql.min_step, sql.max_step, sql.min,
             sql.max)


def frames_before(records) -> dict[str, pd.DataFrame]:
    """frames() as it was before curves (every point of a short job, loss smoothed by
    smooth())."""
    rows = jobview.metric_rows(records)

    def points(name):
        return sorted({s: v for s, n, v in rows if n == name}.items())

    loss = points("loss")
    smoothed = zip([s for s, _ in loss], charts.smooth([v for _, v in loss]))
    out = {"loss": jobview.frame(
        [{"step": s, "value": v, "series": "raw"} for s, v in loss] +
        [{"step": s, "value": v, "series": "smoothed"} for s, v in smoothed] +
        [{"step": s, "value": v, "series": "eval"} for s, v in points("eval_loss")],
        {**jobview.STEP_VALUE, "series": "str"})}    # train vs eval on one chart
    for name in ("eval_loss", "lr"):
        out[name] = jobview.frame([{"step": s, "value": v} for s, v in points(name)],
                                  jobview.STEP_VALUE)
    out["tokens_per_s"] = jobview.frame(   # now a series per kind of token (trained, all)
        [{"step": s, "value": v, "series": label} for name, label in jobview.RATES.items()
         for s, v in points(name)], {**jobview.STEP_VALUE, "series": "str"})
    return out


def test_a_short_job_draws_every_point_exactly_as_before(home):
    """50 steps written as the runner writes them, polled on four ticks; step 30's eval row
    lands after its train row was seen, and no step is counted twice."""
    with store.connect() as db:
        job_id = running_job(db)

        def step(n, **extra):
            record = {"step": n, "loss": value("loss", n) + n % 3, "lr": 1e-4 * n,
                      "tokens_per_s": value("tokens_per_s", n), "grad_norm": 0.5, **extra}
            assert store.add_metrics(db, job_id, record, attempt=1, total_steps=50)

        for n in range(1, 31):
            step(n, **({"eval_loss": 2.0 / n} if n % 10 == 0 and n < 30 else {}))
        store.publish_metrics(db, job_id, 30, attempt=1)
        session, _, _ = jobview.poll(None, job_id)
        # late: step 30's eval row after its train row was seen
        assert store.add_metrics(db, job_id, {"step": 30, "eval_loss": 2.0 / 30}, attempt=1)
        session, changed, _ = jobview.poll(session, job_id)
        assert changed and jobview.series(session, "eval_loss")[-1] == (30, 2.0 / 30)
        for n in range(31, 51):
            step(n, **({"eval_loss": 2.0 / n} if n % 10 == 0 else {}))
        store.publish_metrics(db, job_id, 50, attempt=1)
        session, _, _ = jobview.poll(session, job_id)
        session, changed, _ = jobview.poll(session, job_id)
        assert not changed                                   # the refetched step 50 is known
    assert all(b.count == 1 for b in session["curves"]["loss"].buckets)
    expected = frames_before(api.metrics(job_id))
    got = jobview.frames(session)
    assert len(got["loss"]) == 105 and len(got["eval_loss"]) == 5
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(got[name], frame, check_exact=True)


def test_compare_reads_buckets_for_long_jobs_and_every_point_for_short_ones(home):
    with store.connect() as db:
        long_id, short_id = running_job(db), running_job(db)
        write_steps(db, long_id, 1, 100_000)
        write_steps(db, short_id, 1, 600)
    frame = jobview.compare_frame([long_id, short_id, "0000000000"])
    assert [str(t) for t in frame.dtypes[:2]] == ["int64", "float64"]
    long_rows = frame[frame["job"] == f"#{long_id} · long"]
    assert len(long_rows) <= LIMIT and long_rows["step"].iloc[-1] == 100_000
    assert len(frame[frame["job"] == f"#{long_id} · long (eval)"]) == 100_000 // EVAL_EVERY
    short_rows = frame[frame["job"] == f"#{short_id} · long"]
    losses = [value("loss", s) for s in range(1, 601)]
    assert list(short_rows["step"]) == list(range(1, 601))
    assert list(short_rows["loss"]) == charts.smooth(losses)


def test_a_new_download_removes_copies_older_than_an_hour(tmp_path, monkeypatch):
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    hour_ago = time.time() - jobview.SERVED_COPY_TTL_S - 60
    old, recent, other = tmp / "ftstudio-dl-old", tmp / "ftstudio-dl-recent", tmp / "other"
    for folder in (old, recent, other):
        folder.mkdir()
        (folder / "job-run.zip").write_bytes(b"zip")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp / "ftstudio-dl-link").symlink_to(outside, target_is_directory=True)
    for path in (old, other, tmp / "ftstudio-dl-link"):
        os.utime(path, (hour_ago, hour_ago), follow_symlinks=False)
    src = tmp_path / "adapter.zip"
    src.write_bytes(b"adapter")
    served = jobview.served_copy(src)
    assert open(served, "rb").read() == b"adapter"
    assert not old.exists()                            # an hour untouched: gone
    assert (recent / "job-run.zip").exists()           # may still be on its way out
    assert other.exists() and outside.exists() and (tmp / "ftstudio-dl-link").is_symlink()
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("ftstudio-dl-")) == \
        sorted(["ftstudio-dl-recent", "ftstudio-dl-link", os.path.basename(
            os.path.dirname(served))])


def test_a_resumed_job_redraws_the_steps_past_its_checkpoint(home):
    """Resuming deletes the metrics past the checkpoint and writes those steps anew: an open
    page must show the new values, not keep the old ones."""
    with store.connect() as db:
        job_id = running_job(db)
        write_steps(db, job_id, 1, 30)
    session, _, _ = jobview.poll(None, job_id)
    with store.connect() as db:   # the worker died; the job resumes from step 20
        assert store.transition(db, job_id, "interrupted", frm=("running",))
        assert store.transition(db, job_id, "queued", frm=("interrupted",))
        assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
        store.truncate_metrics(db, job_id, 20)
        with store.transaction(db):
            db.conn.executemany("INSERT INTO metrics (job_id, step, name, value, time) VALUES "
                                "(?, ?, 'loss', ?, 0)", [(job_id, s, 7.0) for s in range(21, 26)])
        store.publish_metrics(db, job_id, 25, attempt=2)
    session, changed, _ = jobview.poll(session, job_id)
    raw = jobview.frames(session)["loss"].query("series == 'raw'")
    assert changed and session["since"] == 25
    assert list(raw["step"]) == list(range(1, 26))
    assert list(raw["value"])[20:] == [7.0] * 5
    assert list(raw["value"])[:20] == [value("loss", s) for s in range(1, 21)]


def test_a_preference_job_charts_its_rewards_and_compare_overlays_them(home):
    """The reward and reward-accuracy charts fill from the metrics a preference job writes
    (engine.training.preference), accuracy in percent; an SFT job has none, so its page hides them; and
    Compare jobs overlays the reward accuracy of two jobs with each one's eval line."""
    with store.connect() as db:
        dpo, sft = running_job(db), running_job(db)
        for n in range(1, 21):
            store.add_metrics(db, dpo, {"step": n, "loss": 0.7 - n / 100,
                                        "reward_chosen": n / 10, "reward_rejected": -n / 20,
                                        "reward_margin": n * 0.15,
                                        "reward_accuracy": min(1.0, n / 10)}, attempt=1)
            store.add_metrics(db, sft, {"step": n, "loss": 2.0 - n / 50}, attempt=1)
            if n % 10 == 0:
                store.add_metrics(db, dpo, {"step": n, "eval_reward_margin": n / 8,
                                            "eval_reward_accuracy": n / 20}, attempt=1)
        store.publish_metrics(db, dpo, 20, attempt=1)
        store.publish_metrics(db, sft, 20, attempt=1)
    f = jobview.frames(jobview.poll(None, dpo)[0])
    assert set(f["rewards"]["series"]) == {"chosen", "rejected", "margin", "eval margin"}
    acc = f["accuracy"]
    assert set(acc["series"]) == {"train", "eval"}
    assert acc[acc["series"] == "eval"]["value"].tolist() == [50.0, 100.0]
    assert acc[acc["series"] == "train"]["value"].max() == 100.0
    plain = jobview.frames(jobview.poll(None, sft)[0])
    assert len(plain["rewards"]) == 0 and len(plain["accuracy"]) == 0
    both = jobview.compare_frame([dpo, sft], metric="reward accuracy (%)")
    assert set(both["job"]) == {f"#{dpo} · long", f"#{dpo} · long (eval)"}   # sft has none
    assert both[both["job"] == f"#{dpo} · long (eval)"]["loss"].tolist() == [50.0, 100.0]
    losses = jobview.compare_frame([dpo, sft])                  # the default: training loss
    assert {f"#{dpo} · long", f"#{sft} · long"} <= set(losses["job"])

"""studio.db: migrations, atomic transitions, metrics cursors (no worker, no model)."""

from __future__ import annotations

import threading

import pytest

from jobs import store


def _job(db, **over) -> str:
    return store.insert_job(db, config={"output_dir": "x"}, name=None, owner="local",
                            priority=0, **over)


def test_migrations_are_idempotent_and_safe_from_many_connections(tmp_path):
    path = tmp_path / "studio.db"
    errors, applied = [], []

    def migrate():
        try:
            with store.connect(path) as db:  # each thread: its own connection
                applied.append(store.migrate(db))
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    store._READY.discard(str(path))
    threads = [threading.Thread(target=migrate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with store.connect(path) as db:
        assert store.migrate(db) == []
        names = [m.name for m in store.MIGRATIONS.applied(db)]
        assert names == [m.name for m in store.MIGRATIONS._migrations]
        assert {"jobs", "metrics", "events", "artifacts"} <= set(db.table_names())
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_transitions_follow_the_allowed_moves(home):
    with store.connect() as db:
        job_id = _job(db)
        assert not store.transition(db, job_id, "completed")       # queued -> completed: no
        assert store.transition(db, job_id, "running", frm=("queued",))
        assert not store.transition(db, job_id, "running", frm=("queued",))  # claimed once
        assert store.transition(db, job_id, "interrupted", resume_on_start=1)
        assert store.transition(db, job_id, "queued")               # resume
        assert store.transition(db, job_id, "cancelled")
        assert not store.transition(db, job_id, "interrupted")
        job = store.get_job(db, job_id)
        assert job["status"] == "cancelled" and job["resume_on_start"] == 1
        lines = [e["line"] for e in store.events(db, job_id) if e["level"] == "status"]
        assert lines == ["queued", "running", "interrupted", "queued", "cancelled"]
        with pytest.raises(ValueError):
            store.update(db, job_id, status="running")
        with pytest.raises(store.JobNotFound):
            store.get_job(db, "nope")


@pytest.mark.parametrize("rounds", [15])
def test_a_cancel_racing_a_claim_has_exactly_one_winner(home, rounds):
    with store.connect() as db:
        ids = [_job(db) for _ in range(rounds)]
    for job_id in ids:
        results: dict[str, bool] = {}
        barrier = threading.Barrier(4)

        def act(name, to):
            with store.connect() as db:
                barrier.wait()
                claim = {"attempt": store.Expr("attempt + 1")} if to == "running" else {}
                results[name] = store.transition(db, job_id, to, frm=("queued",), **claim)

        threads = [threading.Thread(target=act, args=(f"{to}{i}", to))
                   for i, to in enumerate(["running", "cancelled", "running", "running"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(results.values()) == 1, results
        with store.connect() as db:
            job = store.get_job(db, job_id)
        winner = next(k for k, v in results.items() if v)
        assert job["status"] == winner.rstrip("0123456789")
        assert job["attempt"] == (1 if job["status"] == "running" else 0)


def test_metrics_come_back_by_step_after_a_cursor_and_only_whole_steps(home):
    with store.connect() as db:
        job_id = _job(db)
        store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
        for step in (1, 2, 3):
            assert store.add_metrics(db, job_id, {"step": step, "loss": 1 / step, "lr": 0.1,
                                                  "total_steps": 4}, attempt=1)
        store.add_metrics(db, job_id, {"step": 3, "eval_loss": 0.5}, attempt=1)
        assert store.metrics(db, job_id) == []          # nothing published yet
        store.publish_metrics(db, job_id, 2, attempt=1)
        assert [r["step"] for r in store.metrics(db, job_id)] == [1, 2]
        assert [r["step"] for r in store.metrics(db, job_id, since_step=1)] == [2]
        store.publish_metrics(db, job_id, 3, attempt=1)
        assert store.metrics(db, job_id, since_step=2) == [
            {"step": 3, "loss": pytest.approx(1 / 3), "lr": 0.1, "eval_loss": 0.5}]
        job = store.get_job(db, job_id)
        assert (job["step"], job["total_steps"], job["progress"]) == (3, 4, 0.75)
        assert not store.add_metrics(db, job_id, {"step": 4, "loss": 0.1}, attempt=2)  # stale
        assert store.truncate_metrics(db, job_id, 1) == 5  # rows of steps 2 and 3
        assert [r["step"] for r in store.metrics(db, job_id)] == [1]
        plan = " ".join(str(r) for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT step, name, value FROM metrics WHERE job_id = ? AND "
            "step > ? AND step <= ? ORDER BY step, id", [job_id, 0, 9]).fetchall())
        assert "idx_metrics_job_id_step" in plan   # each poll reads only its new rows


def test_finished_jobs_show_every_metric_and_events_page_by_id(home):
    with store.connect() as db:
        job_id = _job(db)
        store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
        store.add_metrics(db, job_id, {"step": 1, "loss": 2.0}, attempt=1)
        store.transition(db, job_id, "completed")
        assert store.metrics(db, job_id) == [{"step": 1, "loss": 2.0}]
        first = store.events(db, job_id)
        store.add_event(db, job_id, "hello")
        assert [e["line"] for e in store.events(db, job_id, since=first[-1]["id"])] == ["hello"]


TABLES = ("jobs", "metrics", "events", "artifacts", "evals", "eval_rows")


def _counts(db) -> dict[str, int]:
    return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_deleting_a_running_job_deletes_nothing_and_a_finished_one_everything(home):
    """Regression: delete_job deleted a running job's metrics, events, artifacts and
    evaluations, then refused its row, and committed."""
    record = {"n": 1, "metrics": {"exact_match": {"base": 0.0, "tuned": 1.0, "n": 1}},
              "rows": [{"index": 0, "where": "line 1", "prompt": "q", "reference": "a",
                        "base": "b", "tuned": "a", "change": "improved",
                        "tuned_scores": {"exact_match": 1.0, "token_f1": 1.0}}]}
    with store.connect() as db:
        job_id = _job(db)
        store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
        store.add_metrics(db, job_id, {"step": 1, "loss": 2.0}, attempt=1)
        store.add_artifact(db, job_id, "adapter", "adapter")
        store.add_eval(db, job_id, record, kind="end", path="eval.json")
        before = _counts(db)
        assert all(before.values())
        assert not store.delete_job(db, job_id)
        assert _counts(db) == before and store.get_job(db, job_id)["status"] == "running"
        assert not store.delete_job(db, "nope")
        store.transition(db, job_id, "completed")
        assert store.delete_job(db, job_id)
        assert _counts(db) == dict.fromkeys(TABLES, 0)


def test_a_data_folder_this_user_cannot_write_is_named_with_the_chown():
    """A bind-mounted /data not owned by the image's user ended in a raw sqlite3 traceback."""
    import os
    import shutil
    import subprocess
    import sys

    from tests_paths import ROOT

    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="ftstudio-ro-"))  # /tmp: every user reaches it
    folder.chmod(0o555)
    env = {**os.environ, "FTSTUDIO_HOME": str(folder)}
    cmd = [sys.executable, "-m", "app.cli", "jobs", "ls"]
    if os.geteuid() == 0:  # root writes anywhere: try as nobody
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot write {folder}" in done.stderr and "sudo chown -R" in done.stderr
    assert "10001:10001" in done.stderr

"""Sweep groups (jobs/sweeps.py): grid and random expansion, every point checked before any
job is queued, ownership, the leaderboard's order, the queue limit, priorities on the real
SQLite and Redis queues, and `ftstudio sweep` / `ftstudio sweeps`."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli
from engine.config import ConfigError
from jobs import api, halving, store, sweeps, users
from queue_helpers import fake_config, wait_for
from test_redis import redis_url  # noqa: F401 - the fixture: a real redis-server


def test_grid_expands_to_every_combination_first_key_slowest():
    grid = sweeps.parse_grid(["train.lr=1e-4,2e-4,5e-4", "method.r=8..16 step 8"])
    assert grid == {"train.lr": ["1e-4", "2e-4", "5e-4"], "method.r": ["8", "16"]}
    points = sweeps.expand(grid)
    assert points == [{"train.lr": lr, "method.r": r} for lr in ("1e-4", "2e-4", "5e-4")
                      for r in ("8", "16")]


def test_ranges_lists_and_bad_values():
    assert sweeps.parse_values("method.r", "4..7") == ["4", "5", "6", "7"]
    assert sweeps.parse_values("train.lr", "1e-5..1e-3 log 3") == ["1e-05", "0.0001", "0.001"]
    assert sweeps.parse_values("data.val_fraction", "0.1..0.3 step 0.1") == ["0.1", "0.2",
                                                                             "0.3"]
    assert sweeps.parse_values("train.lr", " 1e-4 , 3e-4 ") == ["1e-4", "3e-4"]
    with pytest.raises(ConfigError) as exc:
        sweeps.parse_grid(["train.lr=", "nokey", "method.r=9..3", "train.lr=1..2 log 1"])
    keys = [p.key for p in exc.value.problems]
    assert keys == ["train.lr", "nokey", "method.r", "train.lr"]


def test_random_draws_distinct_points_by_seed():
    grid = sweeps.parse_grid(["train.lr=1e-4,2e-4,3e-4,4e-4", "method.r=4,8,16"])
    every = sweeps.expand(grid)
    a, b = sweeps.expand(grid, random=5, seed=1), sweeps.expand(grid, random=5, seed=1)
    assert a == b and len({json.dumps(p) for p in a}) == 5
    assert all(p in every for p in a)
    assert [every.index(p) for p in a] == sorted(every.index(p) for p in a)  # grid order
    assert sweeps.expand(grid, random=5, seed=2) != a
    with pytest.raises(ConfigError, match="13 points asked of a grid of 12"):
        sweeps.expand(grid, random=13)


def test_every_point_is_checked_before_anything_is_queued(home):
    cfg = fake_config()
    with pytest.raises(ConfigError) as exc:
        # batch_size 0 fails only one point; lr -1 fails its points; a bad type and an
        # unknown key are reported per value
        sweeps.submit(cfg, ["train.lr=1e-3,-1", "train.batch_size=2,0"])
    messages = [f"{p.key}: {p.message}" for p in exc.value.problems]
    assert len(messages) == 4, messages
    assert sum("train.lr" in m and "(train.lr=-1, train.batch_size=2)" in m
               for m in messages) == 1
    assert any("point 4 of 4 (train.lr=-1, train.batch_size=0)" in m and "train.batch_size"
               in m for m in messages)
    assert any("point 2 of 4 (train.lr=1e-3, train.batch_size=0)" in m for m in messages)
    with store.connect() as db:
        assert store.list_jobs(db) == [] and store.list_sweeps(db) == []
    with pytest.raises(ConfigError) as exc:
        sweeps.submit(cfg, ["train.batch_size=two,4", "train.nope=1"])
    assert [p.key for p in exc.value.problems] == ["train.batch_size", "train.nope"]
    bad = fake_config(eval_every=0)
    with pytest.raises(ConfigError) as exc:
        sweeps.submit(bad, ["train.lr=1e-3,2e-3"], halving_steps=[5])
    assert [(p.key, p.message.split(":")[0]) for p in exc.value.problems] == \
        [("train.eval_every", "every point"), ("--halving-steps", "every point")]
    assert "not before train.max_steps" in str(exc.value)  # fake_config runs 2 steps


def test_a_sweep_queues_its_jobs_linked_to_the_group(home):
    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3", "method.r=4,8"], name="grid",
                       priority=2)
    assert (sw["name"], sw["keys"], len(sw["jobs"])) == ("grid", ["train.lr", "method.r"], 4)
    jobs = sw["jobs"]
    assert [j["name"] for j in jobs] == ["grid-1", "grid-2", "grid-3", "grid-4"]
    assert [(j["config"]["train"]["lr"], j["config"]["method"]["r"]) for j in jobs] == \
        [(1e-3, 4), (1e-3, 8), (2e-3, 4), (2e-3, 8)]
    assert {j["status"] for j in jobs} == {"queued"} and {j["priority"] for j in jobs} == {2}
    assert all(j["output_dir"] == str(store.job_dir(j["id"])) for j in jobs)
    with store.connect() as db:
        assert [halving.queue_priority(db, j) for j in jobs] == [2, 1.5, 2 - 2 / 3, 1.25]
    assert [s["id"] for s in sweeps.list_sweeps()] == [sw["id"]]
    api.delete(jobs[0]["id"])
    assert len(sweeps.get(sw["id"])["jobs"]) == 3
    assert all(j["config"]["train"].get("tracker_experiment") is None for j in jobs)


def test_a_sweep_is_the_trackers_experiment_of_its_jobs(home):
    """With train.report_to set, every job of the group logs under the group's name (the MLflow
    experiment, the W&B group), unless the config names an experiment itself."""
    tracked = fake_config(report_to=["tensorboard"])
    sw = sweeps.submit(tracked, ["train.lr=1e-3,2e-3"], name="lr-grid")
    assert {j["config"]["train"]["tracker_experiment"] for j in sw["jobs"]} == {"lr-grid"}
    named = fake_config(report_to=["tensorboard"], tracker_experiment="mine")
    sw = sweeps.submit(named, ["train.lr=1e-3,2e-3"], name="other")
    assert {j["config"]["train"]["tracker_experiment"] for j in sw["jobs"]} == {"mine"}


def test_another_user_sees_neither_the_sweep_nor_its_jobs(home):
    ana, bob = users.add_user("ana", "ana-password"), users.add_user("bob", "bob-password")
    root = users.add_user("root", "root-password", is_admin=True)
    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3"], actor=ana, owner="bob")
    assert sw["owner"] == "ana" and {j["owner"] for j in sw["jobs"]} == {"ana"}
    for call in (sweeps.get, sweeps.leaderboard, sweeps.cancel_rest, sweeps.resume_failed,
                 sweeps.tensorboard_zip):
        with pytest.raises(store.JobNotFound, match=f"no sweep '{sw['id']}'"):
            call(sw["id"], actor=bob)
    assert sweeps.list_sweeps(actor=bob) == [] and api.list_jobs(actor=bob) == []
    with pytest.raises(store.JobNotFound):
        api.get(sw["jobs"][0]["id"], actor=bob)
    assert [s["id"] for s in sweeps.list_sweeps(actor=ana)] == [sw["id"]]
    assert sweeps.get(sw["id"], actor=root)["owner"] == "ana"


def test_queue_limit_counts_every_job_of_a_sweep(home, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_MAX_QUEUED_PER_USER", "5")
    ana = users.add_user("ana", "ana-password")
    api.submit(fake_config(), actor=ana)
    api.submit(fake_config(), actor=ana)
    with pytest.raises(store.JobError, match="already has 2 queued jobs .* would add 4"):
        sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3", "method.r=4,8"], actor=ana)
    assert len(api.list_jobs(actor=ana)) == 2  # nothing of the sweep was queued
    sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3,3e-3"], actor=ana)
    with pytest.raises(store.JobError, match="already has 5 queued jobs"):
        api.submit(fake_config(), actor=ana)


def _metric(job_id: str, step: int, **values: float) -> None:
    """A metrics record of a job as its runner writes it (the job running, attempt 0)."""
    with store.connect() as db:
        store.transition(db, job_id, "running", frm=("queued",))
        assert store.add_metrics(db, job_id, {"step": step, **values}, attempt=0)


def test_leaderboard_ranks_by_the_chosen_metric_best_first(home):
    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3,3e-3,4e-3"])
    a, b, c, d = (j["id"] for j in sw["jobs"])
    _metric(a, 2, eval_loss=0.9, eval_token_accuracy=0.5)
    _metric(b, 2, eval_loss=0.4, eval_token_accuracy=0.3)
    _metric(c, 1, eval_loss=0.1)   # an old value ...
    _metric(c, 2, eval_loss=0.7, eval_token_accuracy=0.8)   # ... the newest one counts
    board = sweeps.leaderboard(sw["id"])
    assert [r["job_id"] for r in board["rows"]] == [b, c, a, d]
    assert [r["rank"] for r in board["rows"]] == [1, 2, 3, None]
    assert [r["train.lr"] for r in board["rows"]] == ["2e-3", "3e-3", "1e-3", "4e-3"]
    assert board["keys"] == ["train.lr"]
    assert board["metrics"] == ["eval_loss", "eval_token_accuracy"]
    by_accuracy = sweeps.leaderboard(sw["id"], "eval_token_accuracy")["rows"]
    assert [r["job_id"] for r in by_accuracy] == [c, a, b, d]   # higher is better
    assert sweeps.best(sw["id"]) == b and sweeps.best(sw["id"], "eval_token_accuracy") == c


def test_leaderboard_reads_generation_metrics_of_evaluations(home):
    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3"])
    a, b = (j["id"] for j in sw["jobs"])
    for job_id, score in ((a, 0.2), (b, 0.6)):
        with store.connect() as db:
            db.execute("INSERT INTO evals (job_id, kind, step, n, summary) VALUES "
                       "(?, 'end', 2, 5, ?)", [job_id, json.dumps(
                           {"exact_match": {"base": 0.0, "tuned": score}})])
            db.conn.commit()
    board = sweeps.leaderboard(sw["id"], "gen_exact_match")
    assert "gen_exact_match" in board["metrics"]
    assert [(r["job_id"], r["value"]) for r in board["rows"]] == [(b, 0.6), (a, 0.2)]


def test_tensorboard_download_zips_each_jobs_tb_folder(home):
    import zipfile

    sw = sweeps.submit(fake_config(), ["train.lr=1e-3,2e-3,3e-3"], name="tb")
    with pytest.raises(store.JobError, match="no job of sweep .* TensorBoard"):
        sweeps.tensorboard_zip(sw["id"])
    for job in sw["jobs"][:2]:   # the third has no tb/: left out
        tb = store.job_dir(job["id"]) / "tb" / "run"
        tb.mkdir(parents=True)
        (tb / "events.out.tfevents.1").write_bytes(job["id"].encode())
    names = zipfile.ZipFile(sweeps.tensorboard_zip(sw["id"])).namelist()
    assert sorted(names) == ["tb-1/run/events.out.tfevents.1", "tb-2/run/events.out.tfevents.1"]


def _started_order(ids: dict[str, str]) -> list[str]:
    wait_for(lambda: all(api.get(i)["status"] == "completed" for i in ids.values()), 90,
             what="every job")
    return sorted(ids, key=lambda n: api.get(ids[n])["started_at"])


def _queue_a_sweep_and_singles() -> dict[str, str]:
    ids = {f"ana-{i + 1}": j["id"] for i, j in enumerate(sweeps.submit(
        fake_config(), ["train.lr=1e-3,2e-3,3e-3,4e-3,5e-3"], owner="ana")["jobs"])}
    ids["bob"] = api.submit(fake_config(), owner="bob", name="bob")["id"]
    ids.update({f"cy-{i + 1}": j["id"] for i, j in enumerate(sweeps.submit(
        fake_config(), ["train.lr=1e-3,2e-3"], owner="cy")["jobs"])})
    ids["dee"] = api.submit(fake_config(), owner="dee", name="dee")["id"]
    return ids


# a single job waits for at most the first job of each sweep queued before it; two sweeps
# take turns
FAIR_ORDER = ["ana-1", "bob", "cy-1", "dee", "ana-2", "cy-2", "ana-3", "ana-4", "ana-5"]


def test_single_jobs_do_not_wait_behind_a_sweep_on_sqlite(workers):
    ids = _queue_a_sweep_and_singles()
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="2")
    assert _started_order(ids) == FAIR_ORDER


def test_single_jobs_do_not_wait_behind_a_sweep_on_redis(redis_url, workers):
    ids = _queue_a_sweep_and_singles()
    workers.start(FTSTUDIO_REDIS_URL=redis_url, FTSTUDIO_TEST_FAKE_TRAIN="2")
    assert _started_order(ids) == FAIR_ORDER


def test_cli_sweep_queues_lists_and_shows(home, tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(fake_config()))
    run = CliRunner().invoke
    result = run(cli, ["sweep", str(path), "--grid", "train.lr=1e-4,2e-4", "--grid",
                       "method.r=4..8 step 4", "--set", "train.batch_size=2", "--name", "cli",
                       "--priority", "1"])
    assert result.exit_code == 0, result.output
    assert "queued sweep" in result.output and ": 4 jobs" in result.output
    sw = sweeps.list_sweeps()[0]
    assert (sw["name"], sw["jobs"], sw["priority"]) == ("cli", 4, 1)
    jobs = sweeps.get(sw["id"])["jobs"]
    assert {j["config"]["train"]["batch_size"] for j in jobs} == {2}
    assert [j["config"]["train"]["lr"] for j in jobs] == [1e-4, 1e-4, 2e-4, 2e-4]
    assert sw["id"] in run(cli, ["sweeps", "ls"]).output
    shown = run(cli, ["sweeps", "show", sw["id"]]).output
    assert "TRAIN.LR" not in shown and "train.lr" in shown and shown.count("queued") == 4
    board = json.loads(run(cli, ["sweeps", "show", sw["id"], "--json"]).output)
    assert len(board["rows"]) == 4
    assert "cancelled 4 job(s)" in run(cli, ["sweeps", "cancel", sw["id"]]).output
    result = run(cli, ["sweep", str(path), "--grid", "train.lr=1e-4,2e-4,3e-4", "--random",
                       "2", "--seed", "3", "--json"])
    drawn = [j["sweep_point"] for j in json.loads(result.output)["jobs"]]
    assert drawn == sweeps.expand({"train.lr": ["1e-4", "2e-4", "3e-4"]}, random=2, seed=3)
    result = run(cli, ["sweep", str(path), "--grid", "train.lr=-1,-2", "--grid",
                       "train.batch_size=0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "point 1 of 2" in result.output and "point 2 of 2" in result.output
    assert result.output.count("every point: ") == 1   # batch_size 0: every point, once
    assert len(sweeps.list_sweeps()) == 2   # the bad sweep queued nothing

"""Successive halving on a real queue (jobs/halving.py): real worker processes and runner
children pause each job at the halving steps, the worse half by eval loss is cut and the
better half continues from its checkpoint. Once with the fake engine (fast, its eval loss
is known in advance: 1/step + 1/lr), once with the tiny model and the real engine."""

from __future__ import annotations

import pytest

from jobs import api, store, sweeps
from queue_helpers import fake_config, train_config, wait_for


def _settled(sweep_id: str) -> dict:
    def done():
        sw = sweeps.get(sweep_id)
        return sw if all(j["status"] in ("completed", "cancelled", "failed")
                         for j in sw["jobs"]) else None
    return wait_for(done, 240, every=0.5, what="every job of the sweep to end")


def test_halving_cuts_the_worse_half_at_each_step_fake_engine(workers):
    sw = sweeps.submit(fake_config(max_steps=8, eval_every=2),
                       ["train.lr=1e-3,2e-3,3e-3,4e-3"], halving_steps=[2, 4], name="sh")
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="8")
    jobs = {j["config"]["train"]["lr"]: j for j in _settled(sw["id"])["jobs"]}
    # eval loss 1/step + 1/lr: the higher the lr, the better
    assert {lr: (j["status"], j["cut_at"]) for lr, j in jobs.items()} == {
        1e-3: ("cancelled", 2), 2e-3: ("cancelled", 2), 3e-3: ("cancelled", 4),
        4e-3: ("completed", None)}
    assert {lr: j["step"] for lr, j in jobs.items()} == {1e-3: 2, 2e-3: 2, 3e-3: 4, 4e-3: 8}
    assert "cut by successive halving at step 2" in jobs[1e-3]["hint"]
    assert "rank 2 of 2" in jobs[3e-3]["hint"]
    # the survivor continued from its pauses: every step once, no duplicate
    steps = [r["step"] for r in api.metrics(jobs[4e-3]["id"]) if "loss" in r]
    assert steps == list(range(1, 9))
    board = sweeps.leaderboard(sw["id"])["rows"]
    assert board[0]["job_id"] == jobs[4e-3]["id"]


def test_halving_waits_for_every_job_and_skips_failed_ones(workers):
    """A failed job leaves the race; the rest are still decided once all of them paused."""
    sw = sweeps.submit(fake_config(max_steps=6, eval_every=2),
                       ["train.lr=1e-3,2e-3,3e-3"], halving_steps=[2], name="gone")
    api.cancel(sw["jobs"][2]["id"])           # cancelled by a person before it ran
    workers.start(FTSTUDIO_TEST_FAKE_TRAIN="6")
    jobs = [j for j in _settled(sw["id"])["jobs"]]
    assert [(j["status"], j["cut_at"]) for j in jobs] == [
        ("cancelled", 2), ("completed", None), ("cancelled", None)]


@pytest.mark.slow
def test_halving_cuts_the_right_jobs_of_a_real_training_sweep(workers, tiny_model):
    cfg = train_config(tiny_model, max_steps=6, eval_every=2, save_every=0)
    sw = sweeps.submit(cfg, ["train.lr=1e-4,3e-3", "method.r=4,8"], halving_steps=[2, 4],
                       name="real")
    workers.start()
    jobs = _settled(sw["id"])["jobs"]
    assert not [j for j in jobs if j["status"] == "failed"], (jobs, workers.output())

    def eval_loss(job, step):
        return next(r["eval_loss"] for r in api.metrics(job["id"]) if r["step"] == step
                    and "eval_loss" in r)

    by_loss = sorted(jobs, key=lambda j: eval_loss(j, 2))
    assert [j["cut_at"] for j in by_loss[2:]] == [2, 2]
    assert all(j["step"] == 2 for j in by_loss[2:])
    kept = sorted(by_loss[:2], key=lambda j: eval_loss(j, 4))
    assert (kept[1]["cut_at"], kept[1]["step"], kept[1]["status"]) == (4, 4, "cancelled")
    winner = kept[0]
    assert (winner["status"], winner["step"], winner["cut_at"]) == ("completed", 6, None)
    assert [r["step"] for r in api.metrics(winner["id"]) if "loss" in r] == list(range(1, 7))
    assert (store.job_dir(winner["id"]) / "adapter").is_dir()
    board = {r["job_id"]: r for r in sweeps.leaderboard(sw["id"])["rows"]}
    assert board[winner["id"]]["value_step"] == 6 and board[kept[1]["id"]]["value_step"] == 4

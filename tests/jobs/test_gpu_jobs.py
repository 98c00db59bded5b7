"""Jobs that ask for GPUs, through a real worker (a fake pool of two GPU numbers on this
machine: the children run on the CPU, the scheduling is the worker's own)."""

from __future__ import annotations

import pytest

from jobs import api
from queue_helpers import fake_config, wait_for

pytestmark = pytest.mark.slow

DONE = ("completed", "failed", "cancelled", "interrupted")


def _config(gpus: int) -> dict:
    return {**fake_config(max_steps=4), "parallel": {"gpus": gpus}}


def test_a_two_gpu_job_waits_for_both_and_no_gpu_is_given_twice(workers):
    workers.start("--gpus", "0,1", "--workers", "3", FTSTUDIO_TEST_FAKE_TRAIN="4:0.5")
    first = api.submit(_config(1), name="one gpu")["id"]
    wait_for(lambda: api.get(first)["status"] == "running", 60, what="the 1-GPU job to start")
    big = api.submit(_config(2), name="two gpus")["id"]
    small = api.submit(_config(1), name="one more")["id"]   # asks after the big one
    wait_for(lambda: api.get(first)["status"] in DONE, 60, what="the first job to end")
    # while the first job ran, one GPU was free: neither the 2-GPU job nor the 1-GPU job
    # behind it took it
    for job_id in (big, small):
        wait_for(lambda: api.get(job_id)["status"] in DONE, 90, what=f"job {job_id}")
    jobs = {j: api.get(j) for j in (first, big, small)}
    assert all(j["status"] == "completed" for j in jobs.values()), jobs
    assert jobs[first]["gpus"] == "0" and jobs[big]["gpus"] == "0,1"
    assert jobs[small]["gpus"] in ("0", "1")
    assert jobs[big]["started_at"] >= jobs[first]["finished_at"]
    assert jobs[small]["started_at"] >= jobs[big]["finished_at"]   # served in turn
    held = sorted((j["started_at"], j["finished_at"], set(j["gpus"].split(",")))
                  for j in jobs.values())
    for i, (start, end, gpus) in enumerate(held):   # no GPU in two running jobs at once
        for other_start, other_end, other in held[i + 1:]:
            assert other_start >= end or not gpus & other


def test_a_job_asking_for_more_gpus_than_the_worker_has_fails_clearly(workers):
    workers.start("--gpus", "0", FTSTUDIO_TEST_FAKE_TRAIN="2")
    job = api.submit(_config(2))["id"]
    wait_for(lambda: api.get(job)["status"] in DONE, 60, what="the job to be refused")
    row = api.get(job)
    assert row["status"] == "failed"
    assert "asks for 2 GPUs (parallel.gpus) but this worker has 1" in row["error"]

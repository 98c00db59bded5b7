"""The Redis backend (FTSTUDIO_REDIS_URL): the same submit-and-complete path against a real
redis-server started here on a free loopback port. Skipped when redis-server is not installed,
except in CI (CI=true), where a missing redis-server is a failure: .ci/run installs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from jobs import api, queue
from queue_helpers import fake_config, train_config, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_url(tmp_path, monkeypatch):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not on PATH in CI; .ci/run should have installed it "
                        "(apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs this")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    monkeypatch.setenv("FTSTUDIO_REDIS_URL", url)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_redis_queue_runs_a_submitted_job_to_completion(redis_url, workers, tiny_model):
    assert queue.describe().startswith("redis 127.0.0.1:")
    job = api.submit(train_config(tiny_model, max_steps=4), name="on-redis")
    assert not (workers.home / "queue.db").exists()  # the queue is in Redis
    workers.start(FTSTUDIO_REDIS_URL=redis_url)
    wait_for(lambda: api.get(job["id"])["status"] in ("completed", "failed"), 180,
             what="the job")
    done = api.get(job["id"])
    assert done["status"] == "completed", (done, workers.output())
    assert [r["step"] for r in api.metrics(job["id"]) if "loss" in r] == [1, 2, 3, 4]


def test_redis_queue_starts_higher_priority_first(redis_url, workers):
    ids = {name: api.submit(fake_config(), name=name, priority=p)["id"]
           for name, p in (("low", 0), ("high", 9), ("mid", 3))}
    workers.start(FTSTUDIO_REDIS_URL=redis_url, FTSTUDIO_TEST_FAKE_TRAIN="2")
    wait_for(lambda: all(api.get(i)["status"] == "completed" for i in ids.values()), 60,
             what="the three jobs")
    assert sorted(ids, key=lambda n: api.get(ids[n])["started_at"]) == ["high", "mid", "low"]

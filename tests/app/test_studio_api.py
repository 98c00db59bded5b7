"""The studio's named API endpoints through gradio_client, against an in-process server
without a worker (the queue keeps the job; tests/e2e runs one to completion)."""

from __future__ import annotations

import pytest

from tests_paths import EXAMPLES


@pytest.fixture()
def client(home, tiny_model):
    from gradio_client import Client

    from app.studio import build_app, launch_kwargs

    home.mkdir(parents=True, exist_ok=True)
    app = build_app(worker="external")
    app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                       quiet=True, **launch_kwargs())
    try:
        yield Client(app.local_url, verbose=False)
    finally:
        app.close()


def test_named_endpoints(client, tiny_model):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/submit_job", "/job_status", "/job_metrics", "/job_logs", "/list_jobs",
            "/cancel_job", "/validate_config", "/estimate_memory"} <= names

    config = (f"model:\n  name: {tiny_model}\ndata:\n  train: {EXAMPLES / 'alpaca.json'}\n"
              "train:\n  max_steps: 3\n")
    assert client.predict(config, api_name="/validate_config") == []
    problems = client.predict("train:\n  lr: -1\n  speed: 2\n", api_name="/validate_config")
    assert {p["key"] for p in problems} == {"train.speed"}          # unknown keys first
    bad = client.predict(config.replace("max_steps: 3", "max_steps: 0\n  lr: -1"), "", 0,
                         api_name="/submit_job")
    assert bad["job_id"] is None
    assert {p["key"] for p in bad["problems"]} == {"train.max_steps", "train.lr"}

    est = client.predict(config, api_name="/estimate_memory")
    assert est["trainable_params"] == 32768 and est["verdict"] in ("fits", "tight", "exceeds")

    job = client.predict(config, "via-api", 0, api_name="/submit_job")
    assert job["job_id"] and job["problems"] == []
    status = client.predict(job["job_id"], api_name="/job_status")
    assert status["status"] == "queued" and status["name"] == "via-api"
    assert client.predict(job["job_id"], -1, api_name="/job_metrics") == []
    assert client.predict(job["job_id"], 0, api_name="/job_logs")[0]["line"] == "queued"
    assert [j["id"] for j in client.predict("", api_name="/list_jobs")] == [job["job_id"]]
    assert client.predict(job["job_id"], api_name="/cancel_job")["status"] == "cancelled"

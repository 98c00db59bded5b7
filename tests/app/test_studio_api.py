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
            "/cancel_job", "/export_job", "/job_artifacts", "/eval_job", "/job_eval",
            "/validate_config", "/estimate_memory"} <= names

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


def test_export_job_and_job_artifacts(client):
    """/export_job queues an export job (or raises with the reason); /job_artifacts lists the
    training job's files with their sizes, paths relative to its folder."""
    import json

    from gradio_client.exceptions import AppError

    from jobs import api, store

    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "base_model_name_or_path": "base-model"}))
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name="pt", owner="local",
                         priority=0, job_id=job_id)
        store.transition(db, job_id, "running")
        store.transition(db, job_id, "completed")
        store.add_artifact(db, job_id, "adapter", folder / "adapter")

    queued = client.predict(job_id, "adapter", api_name="/export_job")
    assert queued == {"export_job_id": queued["export_job_id"], "status": "queued"}
    assert api.get(queued["export_job_id"])["parent"] == job_id
    with pytest.raises(AppError, match="prompt_tuning cannot be exported as merged"):
        client.predict(job_id, "merged", api_name="/export_job")
    with pytest.raises(AppError, match="unknown export format 'onnx'"):
        client.predict(job_id, "onnx", api_name="/export_job")
    assert [j["id"] for j in client.predict("", "export", api_name="/list_jobs")] == \
        [queued["export_job_id"]]
    files = client.predict(job_id, api_name="/job_artifacts")
    assert [(f["kind"], f["location"], f["size"]) for f in files] == \
        [("adapter", "adapter", (folder / "adapter" / "adapter_config.json").stat().st_size)]
    with pytest.raises(AppError, match="no job 'nope'"):
        client.predict("nope", api_name="/job_artifacts")


def test_eval_job_and_job_eval(client):
    """/eval_job queues a generation evaluation (or raises with the reason); /job_eval reads a
    job's newest one with its rows, filtered."""
    import json

    from gradio_client.exceptions import AppError

    from engine.evaluation.evaluate import Answer, EvalExample, score
    from jobs import api, store

    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "base-model"}))
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name="lora", owner="local",
                         priority=0, job_id=job_id)
        store.transition(db, job_id, "running")
        store.transition(db, job_id, "completed")
    assert client.predict(job_id, "all", api_name="/job_eval")["eval"] is None
    examples = [EvalExample(f"line {i}", "q", ref, "completion") for i, ref in
                enumerate(["a", "b", "c"])]
    record = score(examples, [Answer(x, True, 1) for x in "axx"],
                   [Answer(x, True, 1) for x in "abx"], seconds={}, source="s", step=3,
                   max_new_tokens=8)
    with store.connect() as db:
        store.add_eval(db, job_id, record, kind="end", path=folder / "eval.json")
    found = client.predict(job_id, "all", api_name="/job_eval")
    assert found["eval"]["metrics"]["exact_match"]["tuned"] == pytest.approx(2 / 3)
    assert found["eval"]["card"].startswith("exact match 33% \u2192 67% (+33 points")
    assert [r["tuned"] for r in found["rows"]] == ["a", "b", "x"]
    assert [r["tuned"] for r in client.predict(job_id, "still wrong",
                                               api_name="/job_eval")["rows"]] == ["x"]
    with pytest.raises(AppError, match="unknown filter"):
        client.predict(job_id, "odd", api_name="/job_eval")

    queued = client.predict(job_id, "", 0, api_name="/eval_job")
    assert queued == {"eval_job_id": queued["eval_job_id"], "status": "queued"}
    assert api.get(queued["eval_job_id"])["parent"] == job_id
    with pytest.raises(AppError, match="does not exist"):
        client.predict(job_id, "/nowhere/x.jsonl", 0, api_name="/eval_job")
    with pytest.raises(AppError, match="no job 'nope'"):
        client.predict("nope", "", 0, api_name="/eval_job")

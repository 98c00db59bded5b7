"""Secrets from the environment (HF_TOKEN, *_TOKEN/_KEY/_SECRET/_PASSWORD) never reach what a
job writes for people: a real worker with HF_TOKEN set trains the tiny model on a data file whose
name holds the token (so the engine logs it), then exports the adapter; the token is in none of
the events, log.txt, config.yaml, run.json or the export's files."""

from __future__ import annotations

import json
import secrets
import shutil
import zipfile

from jobs import api, store
from jobs.redact import MASK, redact, redact_data, secret_values
from queue_helpers import train_config, wait_for
from tests_paths import EXAMPLES


def test_which_variables_are_secrets_and_how_they_are_masked(monkeypatch):
    env = {"HF_TOKEN": "hf_abcdefgh", "OPENAI_API_KEY": "sk-123456789", "DB_PASSWORD": "pa55word",
           "AWS_SECRET": "s3cr3tvalue", "WANDB_KEY": "short", "PATH": "/usr/bin:/bin",
           "MY_TOKENIZER": "not-a-secret"}
    assert set(secret_values(env)) == {"hf_abcdefgh", "sk-123456789", "pa55word", "s3cr3tvalue"}
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh")
    assert redact("Bearer hf_abcdefgh!") == f"Bearer {MASK}!"
    assert redact_data({"hf_abcdefgh": ["x hf_abcdefgh", 3]}) == {MASK: [f"x {MASK}", 3]}


def test_tracker_keys_and_passwords_in_urls_are_secrets(monkeypatch):
    env = {"WANDB_API_KEY": "w" * 40, "MLFLOW_TRACKING_TOKEN": "mlflow-token-1",
           "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-2", "MLFLOW_TRACKING_USERNAME": "alice-admin",
           "MLFLOW_TRACKING_URI": "https://alice:url-pass-3@mlflow.example/",
           "FTSTUDIO_REDIS_URL": "redis://:redis-pass-4@redis:6379/0",
           "OTHER_URL": "https://example.com/path"}
    assert set(secret_values(env)) == {"w" * 40, "mlflow-token-1", "mlflow-pass-2", "url-pass-3",
                                       "redis-pass-4"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    assert redact("mlflow at https://alice:url-pass-3@mlflow.example/ failed") == \
        f"mlflow at https://alice:{MASK}@mlflow.example/ failed"


def _text_of(folder) -> str:
    """Every file under folder as text, the members of zip files included."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        parts.append(data.decode("utf-8", "replace"))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                parts += [z.read(n).decode("utf-8", "replace") for n in z.namelist()]
    return "\n".join(parts)


def test_hf_token_never_reaches_logs_configs_run_files_or_exports(workers, tiny_model, tmp_path):
    token = "hf_" + secrets.token_hex(16)
    data = tmp_path / f"alpaca-{token}.json"
    shutil.copy(EXAMPLES / "alpaca.json", data)
    cfg = train_config(tiny_model, max_steps=3, eval_every=0, save_every=100)
    cfg["data"]["train"] = str(data)
    job = api.submit(cfg, name="secret-run")
    assert token in json.dumps(api.get(job["id"])["config"])  # what the person typed stays
    workers.start(HF_TOKEN=token)
    wait_for(lambda: api.get(job["id"])["status"] in store.FINISHED, 240, what="the job")
    assert api.get(job["id"])["status"] == "completed", workers.output()
    export = api.export(job["id"], "adapter")
    wait_for(lambda: api.get(export["id"])["status"] in store.FINISHED, 240, what="export")
    assert api.get(export["id"])["status"] == "completed", workers.output()

    with store.connect() as db:
        events = "\n".join(r["line"] for r in db.query("SELECT line FROM events"))
    assert f"alpaca-{MASK}.json" in events  # the engine logged the path: redaction ran
    folder = store.job_dir(job["id"])
    run = json.loads((folder / "run.json").read_text())
    assert not {"env", "environ", "environment"} & set(run)
    assert run["config"]["data"]["train"].endswith(f"alpaca-{MASK}.json")
    checked = {
        "events": events,
        "log.txt": (folder / "log.txt").read_text(),
        "export log.txt": (store.job_dir(export["id"]) / "log.txt").read_text(),
        "config.yaml": (folder / "config.yaml").read_text(),
        "run.json": (folder / "run.json").read_text(),
        "exports/adapter": _text_of(folder / "exports" / "adapter"),
    }
    assert checked["exports/adapter"]
    leaked = [name for name, text in checked.items() if token in text]
    assert not leaked, f"HF_TOKEN leaked into {leaked}"
    shown = {k: v for k, v in api.get(job["id"]).items() if k != "config"}  # error, hint...
    assert token not in json.dumps(shown)


def test_tracker_secrets_never_reach_a_jobs_trackers_or_log(workers, tiny_model, tmp_path):
    """A queued job with train.report_to all three, W&B's and MLflow's keys and HF_TOKEN set,
    and the token in its data file's name: the trackers log (their lines are in the job's
    events) and none of their files, nor the log, holds a secret."""
    secrets_env = {"HF_TOKEN": "hf_" + secrets.token_hex(16),
                   "WANDB_API_KEY": secrets.token_hex(20),
                   "MLFLOW_TRACKING_TOKEN": "mlt-" + secrets.token_hex(8),
                   "MLFLOW_TRACKING_PASSWORD": "mlp-" + secrets.token_hex(8)}
    data = tmp_path / f"alpaca-{secrets_env['HF_TOKEN']}.json"
    shutil.copy(EXAMPLES / "alpaca.json", data)
    cfg = train_config(tiny_model, max_steps=3, eval_every=0, save_every=100,
                       report_to=["tensorboard", "mlflow", "wandb"])
    cfg["data"]["train"] = str(data)
    job = api.submit(cfg, name="tracked-run")
    workers.start(WANDB_MODE="offline", **secrets_env)  # offline: a key, but no network here
    wait_for(lambda: api.get(job["id"])["status"] in store.FINISHED, 240, what="the job")
    assert api.get(job["id"])["status"] == "completed", workers.output()

    with store.connect() as db:
        events = "\n".join(r["line"] for r in db.query("SELECT line FROM events"))
    for name in ("tensorboard", "mlflow", "wandb"):
        assert f"trackers: {name} logging to" in events, events
    assert "failed" not in events
    folder = store.job_dir(job["id"])
    checked = {"tb": _text_of(folder / "tb"), "wandb": _text_of(folder / "wandb"),
               "mlflow": _text_of(store.home() / "mlflow"), "events": events,
               "log.txt": (folder / "log.txt").read_text()}
    assert all(checked.values()), [k for k, v in checked.items() if not v]
    leaked = {name: [where for where, text in checked.items() if value in text]
              for name, value in secrets_env.items()}
    assert not any(leaked.values()), leaked
    assert f"alpaca-{MASK}.json" in checked["mlflow"]   # the config went, masked

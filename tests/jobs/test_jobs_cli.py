"""`ftstudio worker`, `ftstudio submit` and `ftstudio jobs ...` through click's runner, and once
with a real `ftstudio worker` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli
from jobs import api
from queue_helpers import fake_config, wait_for
from tests_paths import ROOT


def _config_file(tmp_path, **train) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(fake_config(**train)))
    return str(path)


def test_submit_then_ls_show_logs_cancel_resume_delete(home, tmp_path):
    run = CliRunner().invoke
    result = run(cli, ["submit", _config_file(tmp_path), "--set", "train.lr=1e-3",
                       "--priority", "3", "--name", "cli-job", "--json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert (job["name"], job["priority"], job["config"]["train"]["lr"]) == ("cli-job", 3, 1e-3)
    jid = job["id"]
    result = run(cli, ["jobs", "ls"])
    assert result.exit_code == 0 and jid in result.output and "queued" in result.output
    assert [j["id"] for j in json.loads(run(cli, ["jobs", "ls", "--json"]).output)] == [jid]
    assert "status:      queued" in run(cli, ["jobs", "show", jid]).output
    assert json.loads(run(cli, ["jobs", "show", jid, "--json"]).output)["id"] == jid
    assert "queued" in run(cli, ["jobs", "logs", jid]).output
    assert f"job {jid} cancelled" in run(cli, ["jobs", "cancel", jid]).output
    result = run(cli, ["jobs", "cancel", jid])
    assert result.exit_code == 1 and "already cancelled" in result.output
    assert "queued again" in run(cli, ["jobs", "resume", jid]).output
    result = run(cli, ["jobs", "delete", jid, "--yes"])
    assert result.exit_code == 0 and api.list_jobs() == []


def test_bundle_writes_the_job_pages_downloads(home, tmp_path):
    """`ftstudio jobs bundle` calls jobs.bundles, as the studio's download buttons do."""
    import zipfile

    from jobs import store

    run = CliRunner().invoke
    jid = json.loads(run(cli, ["submit", _config_file(tmp_path), "--json"]).output)["id"]
    result = run(cli, ["jobs", "bundle", jid, "run"])
    assert result.exit_code == 1 and f"job {jid} has no run files yet" in result.output
    assert "Traceback" not in result.output
    folder = store.job_dir(jid)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model: {}\n")
    result = run(cli, ["jobs", "bundle", jid, "run"])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(result.output.strip()) as zf:
        assert zf.namelist() == ["config.yaml"]
    result = run(cli, ["jobs", "bundle", jid, "answers"])
    assert result.exit_code == 1 and "has no evaluation yet" in result.output
    result = run(cli, ["jobs", "bundle", jid, "weights"])
    assert result.exit_code == 2 and "adapter" in result.output


def test_errors_are_one_clear_line(home, tmp_path):
    run = CliRunner().invoke
    result = run(cli, ["jobs", "show", "nope"])
    assert result.exit_code == 1 and "Error: no job 'nope'" in result.output
    assert "Traceback" not in result.output
    result = run(cli, ["submit", _config_file(tmp_path), "--set", "train.lr=-1",
                       "--set", "train.batch_size=0"])
    assert result.exit_code == 1
    assert "train.lr" in result.output and "train.batch_size" in result.output
    result = run(cli, ["worker", "--gpus", "cuda:0"])
    assert result.exit_code == 1 and "device numbers" in result.output
    assert "no jobs" in run(cli, ["jobs", "ls"]).output


@pytest.mark.parametrize("kind", ["export", "eval"])
def test_resume_of_an_export_or_eval_job_says_it_starts_over(home, kind):
    """Regression: `jobs resume` read config["train"], which export and eval jobs lack."""
    from jobs import store

    parent = api.submit(fake_config())["id"]
    with store.connect() as db:
        child = store.insert_job(db, config={"parent": parent, "format": "adapter"}, kind=kind,
                                 name=f"{parent}-{kind}", owner="local", priority=0,
                                 parent=parent, output_dir=str(store.job_dir("x")))
        assert store.transition(db, child, "failed", finished_at=store.now(), error="boom")
    result = CliRunner().invoke(cli, ["jobs", "resume", child])
    assert result.exit_code == 0, result.output
    assert result.output == f"{kind} job {child} queued again (it starts over)\n"
    assert api.get(child)["status"] == "queued"


def test_a_real_ftstudio_worker_runs_a_submitted_job_and_logs_follow_ends(home, tmp_path):
    result = CliRunner().invoke(cli, ["submit", _config_file(tmp_path, max_steps=3)])
    assert result.exit_code == 0, result.output
    jid = result.output.split()[2]
    env = {"FTSTUDIO_HOME": str(home), "FTSTUDIO_TEST_FAKE_TRAIN": "3", "PATH": "/usr/bin:/bin",
           "FTSTUDIO_TRAIN_ENTRY": os.environ["FTSTUDIO_TRAIN_ENTRY"]}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        follow = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "logs", jid,
                                 "--follow"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
        assert follow.returncode == 0, follow.stdout + follow.stderr
        assert "fake training: 3 steps" in follow.stdout and "* completed" in follow.stdout
        wait_for(lambda: api.get(jid)["status"] == "completed", 10)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "Huey consumer started" in out and "worker" in out

"""Continue a finished SFT job with preference tuning (jobs.continuation): refused up front for
what cannot continue; on a real queue the new job merges the SFT adapter into the base inside
its own folder, trains a fresh adapter there with the SFT model as its reference (so its first
rewards are exactly zero), keeps working when the SFT job is deleted, and its clone continues
from the same SFT job. Also `ftstudio jobs continue`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from app.cli import cli
from engine.evaluation.generate import open_model
from jobs import api, store
from jobs.continuation import continue_with_preference
from queue_helpers import fake_config, train_config, wait_for

DONE = ("completed", "failed", "cancelled", "interrupted")


def _wait_done(job_id: str, timeout: float = 240) -> dict:
    wait_for(lambda: api.get(job_id)["status"] in DONE, timeout, what=f"job {job_id} to finish")
    return api.get(job_id)


def pairs(folder, n: int = 24):
    path = folder / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Is {i} a number?", "chosen": "yes",
                                "rejected": "no"}) + "\n")
    return path


def _finished(method: str = "lora", objective: str = "sft") -> str:
    job_id = store.new_id()
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True)
    cfg = {**fake_config(), "output_dir": str(folder)}
    cfg["method"] = {**cfg["method"], "kind": method}
    cfg["train"] = {**cfg["train"], "objective": objective}
    with store.connect() as db:
        store.insert_job(db, config=cfg, name="sft", owner="local", priority=0, job_id=job_id)
        assert store.transition(db, job_id, "running")
        assert store.transition(db, job_id, "completed")
    return job_id


def test_what_cannot_continue_is_refused_before_anything_is_queued(home, tmp_path):
    data = pairs(tmp_path)
    with pytest.raises(api.JobError, match="learns virtual tokens"):
        continue_with_preference(_finished("prompt_tuning"), str(data))
    with pytest.raises(api.JobError, match="already preference-tuned"):
        continue_with_preference(_finished(objective="dpo"), str(data))
    queued = api.submit(fake_config())["id"]
    with pytest.raises(api.JobError, match=f"job {queued} is queued; continue it once"):
        continue_with_preference(queued, str(data))
    with pytest.raises(api.ConfigError, match="train.objective"):
        continue_with_preference(_finished(), str(data), objective="ppo")
    with pytest.raises(api.ConfigError, match="data.train: name the preference data"):
        continue_with_preference(_finished(), "")
    with pytest.raises(api.ConfigError, match="train.beta"):
        continue_with_preference(_finished(), str(data), overrides=["train.beta=-1"])
    assert [j["id"] for j in api.list_jobs(status="queued")] == [queued]
    assert not any(j["parent"] for j in api.list_jobs())          # nothing continued


def test_a_continued_job_trains_from_the_merged_sft_model_as_its_reference(
        workers, tiny_model, tmp_path):
    workers.start()
    sft = api.submit(train_config(tiny_model, max_steps=6, eval_every=0, save_every=0,
                                  lr=3e-2), name="sft")["id"]
    assert _wait_done(sft)["status"] == "completed"
    result = CliRunner().invoke(cli, ["jobs", "continue", sft, "--data", str(pairs(tmp_path)),
                                      "--set", "train.max_steps=4", "--set",
                                      "train.eval_every=0", "--json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert job["parent"] == sft and job["name"] == "sft-dpo"
    cfg = job["config"]
    assert cfg["train"]["objective"] == "dpo"
    assert cfg["train"]["lr"] == pytest.approx(3e-3)               # a tenth of the SFT lr
    start = store.job_dir(job["id"]) / api.START_MODEL
    assert cfg["model"]["name"] == str(start)
    done = _wait_done(job["id"])
    assert done["status"] == "completed", (done.get("error"), done.get("hint"))
    lines = [e["line"] for e in api.logs(job["id"])]
    assert any(f"merging the adapter of job {sft}" in line for line in lines), lines[:20]
    assert any("reference: the model with its adapter disabled" in line for line in lines)
    # the start is the SFT model: base + SFT adapter, merged
    sft_dir = store.folder_of(api.get(sft))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        want = open_model(str(tiny_model), str(sft_dir / "adapter")).model(ids).logits
        got = open_model(str(start), None).model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    # a fresh adapter on the SFT model: before the first update the policy is the reference
    first = [r for r in api.metrics(job["id"]) if r["step"] == 1][0]
    assert first["reward_chosen"] == 0 and first["reward_rejected"] == 0, first
    shown = CliRunner().invoke(cli, ["jobs", "show", job["id"]])
    assert f"continues:   job {sft}" in shown.output

    copy = api.clone(job["id"])
    assert copy["parent"] == sft
    assert copy["config"]["model"]["name"] == str(store.job_dir(copy["id"]) / api.START_MODEL)
    assert _wait_done(copy["id"])["status"] == "completed"
    api.delete(sft)                             # the continued jobs keep their own start
    assert api.get(job["id"])["status"] == "completed" and start.is_dir()
    with pytest.raises(api.JobError, match="which is deleted"):
        api.clone(job["id"])

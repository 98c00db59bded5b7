"""GRPO jobs on the real queue (tiny model): a job whose admin-installed reward function raises
fails naming the function, the record and the error, and the same worker then runs a GRPO job
to the end, whose samples reach jobs.api.samples and whose end evaluation is stored with its
reward metrics; a finished SFT job continues with GRPO (refused without reward functions)."""

from __future__ import annotations

import json

import pytest

from engine.config import ConfigError
from jobs import api
from jobs.continuation import continue_with_preference
from queue_helpers import train_config, wait_for

DONE = ("completed", "failed", "cancelled", "interrupted")
REWARDS = '''
def picky(prompts, completions, answer, **kw):
    if any(int(a) % 2 for a in answer):
        raise KeyError("no odd numbers")
    return [1.0 for _ in completions]


def letters(prompts, completions, **kw):
    return [sum(ch.isalpha() for ch in c[0]["content"]) / 10 for c in completions]
'''


def prompts(folder, n=16):
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Number {i}?"}],
                                        "answer": str(i)}) + "\n" for i in range(n)))
    return path


def grpo_config(tiny_model, data, rewards, **train):
    cfg = train_config(tiny_model, objective="grpo", rewards=rewards, max_steps=3, batch_size=4,
                       num_generations=4, max_completion_len=8, eval_every=0, save_every=0,
                       **train)
    cfg["data"] = {"train": str(data), "max_seq_len": 64, "val_fraction": 0.25,
                   "order": "as_is"}
    return cfg


def _done(job_id, timeout=300):
    wait_for(lambda: api.get(job_id)["status"] in DONE, timeout, what=f"job {job_id}")
    return api.get(job_id)


def test_a_raising_reward_fails_its_job_and_the_worker_runs_the_next(workers, tiny_model,
                                                                     home, tmp_path):
    (home / "rewards").mkdir(parents=True, exist_ok=True)
    (home / "rewards" / "mine.py").write_text(REWARDS)
    data = prompts(tmp_path)
    bad = api.submit(grpo_config(tiny_model, data, [{"name": "mine.picky"}],
                                 eval_generate="off"), name="picky")["id"]
    good = api.submit(grpo_config(tiny_model, data, [{"name": "mine.letters"},
                                                     {"name": "length_penalty",
                                                      "args": {"target": 4}}]),
                      name="letters")["id"]
    workers.start()
    failed = _done(bad)
    assert failed["status"] == "failed"
    said = f"{failed.get('error')} {failed.get('hint')}"
    assert "reward function mine.picky raised on prompts.jsonl line" in said, said
    assert "KeyError: 'no odd numbers'" in said, said
    finished = _done(good)
    assert finished["status"] == "completed", (finished.get("error"), workers.output())
    samples = api.samples(good)
    assert samples["step"] == 3 and samples["functions"] == ["mine_letters", "length_penalty"]
    rows = [r for r in api.metrics(good) if "reward" in r]
    assert len(rows) == 3 and "rewards/mine_letters" in rows[0]
    ev = api.job_eval(good)["eval"]
    assert ev["n"] == 4 and {"reward", "reward_mine_letters", "reward_length_penalty"} <= \
        set(ev["metrics"]) and ev["card"].startswith("mean reward")


def test_a_finished_sft_job_continues_with_grpo(workers, tiny_model, tmp_path):
    workers.start()
    sft = api.submit(train_config(tiny_model, max_steps=2, eval_every=0, save_every=0,
                                  eval_generate="off"), name="sft")["id"]
    assert _done(sft)["status"] == "completed"
    data = prompts(tmp_path)
    with pytest.raises(ConfigError, match="train.rewards: grpo needs at least one reward"):
        continue_with_preference(sft, str(data), objective="grpo")
    job = continue_with_preference(sft, str(data), objective="grpo", overrides=[
        "train.rewards=[{name: length_penalty, args: {target: 2}}]", "train.max_steps=2",
        "train.max_completion_len=8", "train.eval_generate='off'"])
    assert job["parent"] == sft and job["name"] == "sft-grpo"
    assert job["config"]["train"]["objective"] == "grpo"
    done = _done(job["id"])
    assert done["status"] == "completed", (done.get("error"), workers.output())
    assert any(f"merging the adapter of job {sft}" in e["line"] for e in api.logs(job["id"]))

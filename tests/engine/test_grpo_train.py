"""GRPO in the engine's own loop on the tiny model: an admin-installed TRL-signature reward
rises while training and on the held-out prompts (base vs tuned, in eval.json); a resumed run
(interrupted inside a generation batch) repeats an uninterrupted one; a misbehaving reward
function fails the run naming the function, the record and the error; the data is checked at
the door; the sampled completions are written for the job page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import TrainConfig, validate
from engine.data import DataError
from engine.training.loop import run
from engine.training.reporter import ListReporter
from engine.training.rewards import RewardError

#: a reward the random tiny model can learn in a few steps: the share of odd token ids
EVEN_TOKENS = '''
def odd_share(prompts, completions, completion_ids, **columns):
    """Share of the completion's tokens whose id is odd."""
    return [sum(1 for t in ids if t % 2 == 1) / max(len(ids), 1) for ids in completion_ids]


def broken(prompts, completions, answer, **columns):
    """Raises on the record whose answer is 7."""
    return [1.0 / (int(a) - 7) for a in answer]


def too_few(prompts, completions, **columns):
    return [1.0]


def words(prompts, completions, **columns):
    return ["high" for _ in completions]
'''


def prompts_file(folder: Path, n: int = 32) -> Path:
    path = folder / "prompts.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"say something {i}"}],
                                "answer": str(i)}) + "\n")
    return path


@pytest.fixture()
def rewards_home(home):
    folder = home / "rewards"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.py").write_text(EVEN_TOKENS, encoding="utf-8")
    return home


def config(tiny_model, out: Path, data: Path, **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.output_dir = str(tiny_model), str(out)
    cfg.data.train, cfg.data.max_seq_len, cfg.data.val_fraction = str(data), 64, 0.25
    t = cfg.train
    t.objective, t.rewards = "grpo", [{"name": "toy.odd_share"}]
    t.batch_size, t.grad_accum, t.num_generations, t.max_completion_len = 8, 1, 4, 8
    t.max_steps, t.lr, t.scheduler, t.warmup_ratio = 12, 3e-2, "constant", 0.0
    t.save_every, t.eval_generate = 0, "off"
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def test_the_reward_rises_in_training_and_on_held_out_prompts(tiny_model, rewards_home,
                                                             tmp_path):
    out = tmp_path / "run"
    reporter = ListReporter()
    cfg = config(tiny_model, out, prompts_file(tmp_path), max_steps=20, lr=1e-2,
                 eval_generate="end")
    cfg.method.kind = "full"     # the 2-layer random model's LoRA cannot reach its lm_head
    result = run(cfg, reporter)
    rewards = [v for _, v in reporter.series("reward")]
    assert len(rewards) == 20
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.15, rewards
    for key in ("rewards/toy_odd_share", "reward_std", "completion_length", "clip_ratio",
                "sample_seconds", "train_seconds", "loss", "grad_norm"):
        assert key in reporter.records[0], key
    record = json.loads((out / "eval.json").read_text())
    m = record["metrics"]["reward"]
    assert record["n"] == 8 and m["base"] is not None
    assert m["tuned"] > m["base"] + 0.2, m
    assert result.metrics["gen_reward"] == pytest.approx(m["tuned"])
    row = record["rows"][0]
    assert {"reward", "toy_odd_share"} <= set(row["tuned_scores"])
    samples = json.loads((out / "samples.json").read_text())
    assert samples["step"] == 20 and samples["functions"] == ["toy_odd_share"]
    assert len(samples["rows"]) == 8 and {"prompt", "completion", "rewards", "advantage"} <= \
        set(samples["rows"][0])


def test_a_resumed_run_repeats_an_uninterrupted_one(tiny_model, rewards_home, tmp_path):
    """num_iterations 2: the checkpoint at step 3 falls inside a generation batch, which it keeps;
    the KL term (beta) needs the reference pass, with the adapter disabled."""
    data = prompts_file(tmp_path)
    settings = dict(max_steps=6, num_iterations=2, beta=0.05, grpo_loss_type="grpo")
    whole = ListReporter()
    run(config(tiny_model, tmp_path / "a", data, **settings), whole)
    cfg = config(tiny_model, tmp_path / "b", data, save_every=3, **settings)
    run(cfg, ListReporter(stop_after_step=3))
    assert (tmp_path / "b" / "checkpoints" / "step-3" / "grpo_batch.safetensors").is_file()
    cfg.train.resume_from = "latest"
    rest = ListReporter()
    run(cfg, rest)
    first = {r["step"]: r for r in whole.records if "loss" in r}
    again = {r["step"]: r for r in rest.records if "loss" in r}
    assert sorted(again) == [4, 5, 6]
    for step, r in again.items():
        for key in ("loss", "reward", "kl", "grad_norm"):
            assert r[key] == pytest.approx(first[step][key], rel=1e-5, abs=1e-6), (step, key)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, says", [
    ("toy.broken", "reward function toy.broken raised on prompts.jsonl line 8: "
                   "ZeroDivisionError: float division by zero"),
    ("toy.too_few", "reward function toy.too_few returned 1 values for 8 completions"),
    ("toy.words", "reward function toy.words returned 'high' for prompts.jsonl line"),
])
def test_a_misbehaving_reward_function_fails_the_run_naming_it(tiny_model, rewards_home,
                                                              tmp_path, name, says):
    data = prompts_file(tmp_path)
    cfg = config(tiny_model, tmp_path / "x", data, rewards=[{"name": name}], max_steps=8)
    cfg.data.order, cfg.data.val_fraction = "as_is", 0.0
    with pytest.raises(RewardError) as err:
        run(cfg, ListReporter())
    assert says in str(err.value)
    status = json.loads((tmp_path / "x" / "run.json").read_text())
    assert status["status"] == "failed" and says in status["error"]


def test_grpo_settings_are_checked_at_the_door(tiny_model, rewards_home, tmp_path):
    data = prompts_file(tmp_path)
    cfg = config(tiny_model, tmp_path / "x", data, num_generations=3, temperature=0.0,
                 rewards=[{"name": "regex"}, {"name": "nope"}, {"name": "toy.missing"},
                          {"name": "json_valid", "args": {"schema": {"type": "object"}}}],
                 max_completion_len=60)
    problems = {p.key: [] for p in validate(cfg)}
    for p in validate(cfg):
        problems[p.key].append(p.message)
    text = " | ".join(problems["train.rewards"])
    assert "[0] regex: needs args.pattern" in text
    assert "[1] nope: unknown reward; built-ins are exact_match" in text
    assert "[2] toy.missing: no such custom reward" in text and "toy.odd_share" in text
    assert "[3] json_valid: a schema needs the jsonschema package" in text or \
        "jsonschema" not in text
    assert "not a multiple of 3" in problems["train.num_generations"][0]
    assert "must be above 0" in problems["train.temperature"][0]
    assert "leaves no room" in problems["train.max_completion_len"][0]
    cfg = config(tiny_model, tmp_path / "x", data)
    cfg.train.objective, cfg.data.train = "sft", str(data)
    assert any(p.key == "train.rewards" and "applies to train.objective grpo" in p.message
               for p in validate(cfg))


def test_a_reward_needing_a_column_the_data_lacks_is_refused(tiny_model, rewards_home,
                                                             tmp_path):
    data = prompts_file(tmp_path)
    cfg = config(tiny_model, tmp_path / "x", data,
                 rewards=[{"name": "exact_match", "args": {"column": "solution"}}])
    with pytest.raises(DataError, match="reward exact_match reads the column 'solution', which "
                                        r"the records do not have \(their columns: answer\)"):
        run(cfg, ListReporter())

"""GRPO's proof on a real model: SmolLM2-135M-Instruct (imported from the wheel's GGUF, fixture
smollm2_model) trained with LoRA GRPO through the real queue on a small verifiable task of our
own, and the job's own end-of-training evaluation shows the held-out mean reward rising.

The task: "What is 17 + 25? Reply with only the number." The rewards: numeric_match against the
record's answer (the last number of the reply), a format reward (regex: the reply is only
digits) at half weight, and a length penalty past 8 tokens at half weight (a signal in every
group, since sampled answers differ in length), so a perfect answer scores 1.5. The base model
answers "17 + 22 = 38" or rambles (and adds badly); GRPO teaches it to answer short.
Measured numbers land in test-artifacts/real-model-grpo.json (docs/grpo.md's table is from
there). Slow tier: a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from jobs import api
from queue_helpers import Workers, wait_for
from tests_paths import ROOT

pytestmark = pytest.mark.slow

#: the held-out mean reward must rise by at least this much (base -> tuned, the job's own
#: evaluation). Measured on the 2-core CPU (docs/grpo.md): -0.07 -> 0.16 (+0.23; the paired 95%
#: interval of the change -0.01 .. +0.48 over only 16 held-out prompts, so the interval is
#: reported, not asserted). The run is seeded and the CPU kernels deterministic: the margin
#: leaves room for a different machine's arithmetic, not for luck.
RISE_AT_LEAST = 0.15
STEPS = 16


def sums(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            f.write(json.dumps({"prompt": [{"role": "user", "content":
                                            f"What is {a} + {b}? Reply with only the number."}],
                                "answer": str(a + b)}) + "\n")
    return path


def test_smollm2_grpo_raises_the_held_out_reward_through_the_queue(smollm2_model, home,
                                                                   tmp_path):
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cfg = {"model": {"name": str(smollm2_model)},
           "data": {"train": str(sums(tmp_path / "sums.jsonl", 100, seed=3)),
                    "max_seq_len": 128, "val_fraction": 0.16},
           "method": {"kind": "lora", "r": 16, "alpha": 32},
           "train": {"objective": "grpo", "max_steps": STEPS, "lr": 2e-4, "batch_size": 8,
                     "num_generations": 4, "max_completion_len": 24, "temperature": 0.8,
                     "scheduler": "constant", "warmup_ratio": 0.0, "save_every": 0,
                     "eval_generate": "end",
                     "rewards": [{"name": "numeric_match", "args": {"column": "answer"}},
                                 {"name": "regex", "weight": 0.5,
                                  "args": {"pattern": r"^\d+$", "full": True}},
                                 {"name": "length_penalty", "weight": 0.5,
                                  "args": {"target": 8}}]}}
    job = api.submit(cfg, name="smollm2-grpo-sums")
    workers = Workers(home, tmp_path)
    workers.start(OMP_NUM_THREADS="2")      # the real model: both cores (tests default to one)
    try:
        wait_for(lambda: api.get(job["id"])["status"] not in ("queued", "running"), 1500,
                 every=1, what="the SmolLM2 GRPO job")
        done = api.get(job["id"])
        assert done["status"] == "completed", (done, workers.output())
        found = api.job_eval(job["id"])
        ev = found["eval"]
        reward = ev["metrics"]["reward"]
        assert ev["kind"] == "end" and ev["n"] == 16
        assert reward["tuned"] >= reward["base"] + RISE_AT_LEAST, ev["card"]
        assert reward["delta_ci"][1] > RISE_AT_LEAST, ev["card"]  # the interval agrees
        samples = api.samples(job["id"])
        assert samples["step"] == STEPS and samples["rows"]
    finally:
        workers.stop_all()
    metrics = api.metrics(job["id"])
    run = json.loads((Path(done["output_dir"]) / "run.json").read_text())
    train = [r for r in metrics if "reward" in r]
    facts = {"steps": run["steps"], "train_s": run["timings"]["seconds"],
             "s_per_step": round(run["timings"]["seconds"] / max(run["steps"], 1), 2),
             "sample_s": round(sum(r["sample_seconds"] for r in train), 1),
             "optimise_s": round(sum(r["train_seconds"] for r in train), 1),
             "first_rewards": [round(r["reward"], 3) for r in train[:4]],
             "last_rewards": [round(r["reward"], 3) for r in train[-4:]],
             "eval_seconds": ev["seconds"], "card": ev["card"],
             "metrics": {k: {"base": m["base"], "tuned": m["tuned"], "delta_ci": m["delta_ci"]}
                         for k, m in ev["metrics"].items()},
             "total_s": round(time.monotonic() - started, 1)}
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "real-model-grpo.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))

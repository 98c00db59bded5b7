"""The proof on a real model: SmolLM2-135M-Instruct, imported from its GGUF file with
`ftstudio models import`, fine-tuned with LoRA through the real queue on a small deterministic
task of our own (dates in words -> ISO 8601), must answer the held-out records far better than
the base, by the job's own evaluation. Slow tier: about 2-3 minutes on 2 cores.

The task: "Write this date in ISO 8601 form: March 5, 2021" -> "2021-03-05". The base model
knows dates but answers in sentences (and often with the wrong year), so its exact match is
near 0; twelve LoRA steps teach the format. Measured numbers land in
test-artifacts/real-model.json (the table in docs/evaluation.md is from there).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from jobs import api
from queue_helpers import Workers, wait_for
from tests_paths import ROOT

pytestmark = pytest.mark.slow

MONTHS = ("January February March April May June July August September October November "
          "December").split()
#: what the tuned model must reach on the held-out dates, and the base stay under: set from
#: runs that gave base 0-5% and tuned 95-100% (see the table in docs/evaluation.md)
TUNED_AT_LEAST, BASE_AT_MOST = 0.8, 0.2


def dates(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Write this date in ISO 8601 form: "
                                            f"{MONTHS[m - 1]} {d}, {y}"},
                {"role": "assistant", "content": f"{y:04d}-{m:02d}-{d:02d}"}]}) + "\n")
    return path


def test_smollm2_learns_a_held_out_task_through_the_queue(smollm2_gguf, home, tmp_path,
                                                         monkeypatch):
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    imported = CliRunner().invoke(cli, ["models", "import", str(smollm2_gguf), "--name",
                                        "smollm2"])
    assert imported.exit_code == 0, imported.output
    model = home / "models" / "smollm2"
    assert (model / "model.safetensors").is_file() and "Q4_1" in (model / "README.md").read_text()
    import_s = time.monotonic() - started

    cfg = {"model": {"name": str(model)},
           "data": {"train": str(dates(tmp_path / "dates.jsonl", 100, seed=7)),
                    "max_seq_len": 128, "val_fraction": 0.2},
           "method": {"kind": "lora", "r": 8, "alpha": 16},
           "train": {"max_steps": 12, "lr": 1e-3, "batch_size": 8, "warmup_ratio": 0.0,
                     "eval_every": 0, "save_every": 100}}
    job = api.submit(cfg, name="smollm2-dates")
    workers = Workers(home, tmp_path)
    workers.start(OMP_NUM_THREADS="2")      # the real model: both cores (tests default to one)
    try:
        wait_for(lambda: api.get(job["id"])["status"] not in ("queued", "running"), 900,
                 every=1, what="the SmolLM2 job")
        done = api.get(job["id"])
        assert done["status"] == "completed", (done, workers.output())
        found = api.job_eval(job["id"])
        ev = found["eval"]
        em = ev["metrics"]["exact_match"]
        assert ev["kind"] == "end" and ev["n"] == 20
        assert em["base"] <= BASE_AT_MOST and em["tuned"] >= TUNED_AT_LEAST, ev["card"]
        assert em["delta_ci"][0] > 0.5, ev["card"]       # a real gain, not noise
        assert ev["metrics"]["chrf"]["tuned"] > ev["metrics"]["chrf"]["base"]
        good = [r for r in found["rows"] if r["tuned_scores"]["exact_match"]]
        assert all(r["tuned"] == r["reference"] for r in good)
        assert all(r["tuned_stopped"] for r in good)      # it stops at <|im_end|>

        # the same job through an eval job, from the command line, on a few records
        result = CliRunner().invoke(cli, ["eval", job["id"], "--max-records", "6", "--json"])
        assert result.exit_code == 0, (result.output, workers.output())
        again = json.loads(result.output)["eval"]
        assert again["kind"] == "job" and again["n"] == 6
        assert again["metrics"]["exact_match"]["tuned"] >= TUNED_AT_LEAST
    finally:
        workers.stop_all()
    run = json.loads((Path(done["output_dir"]) / "run.json").read_text())
    facts = {"import_s": round(import_s, 1), "train_s": run["timings"]["seconds"],
             "tokens_per_s": run["timings"]["tokens_per_s"], "steps": run["steps"],
             "eval_seconds": ev["seconds"], "card": ev["card"],
             "metrics": {k: {"base": m["base"], "tuned": m["tuned"], "delta_ci": m["delta_ci"]}
                         for k, m in ev["metrics"].items()},
             "eval_job_card": again["card"], "total_s": round(time.monotonic() - started, 1)}
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "real-model.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))

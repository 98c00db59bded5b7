"""A held-out task the tiny test model learns in a few LoRA steps, for the generation
evaluation tests (importable because pytest puts tests/ on sys.path): every answer is "yes",
which the untrained model never says, so a tuned exact match far above the base's shows the
whole path works (the slow tier proves it on a real model, tests/e2e/test_real_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = "red green blue moon stone river apple kiwi melon deer lion owl".split()
#: LoRA settings that take the tiny model from 0% to 100% exact match on it
LEARNS = {"max_steps": 30, "lr": 1e-2, "batch_size": 8, "scheduler": "constant",
          "warmup_ratio": 0.0}


def yes_data(path: Path, n: int = 60) -> Path:
    rows = [{"instruction": f"Is this a list of words? {' '.join(WORDS[i % 12:i % 12 + 3])} "
                            f"{i}", "output": "yes"} for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path

"""Two-process DDP on CPU (gloo) through `accelerate launch`, exactly as a worker starts it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import TrainConfig, save_config
from engine.training.reporter import ListReporter

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tiny_model, examples, out: Path, batch_size: int) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.data.train = str(examples / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.method.dropout = 0.0          # so that 2 processes x 4 rows match 1 process x 8 rows
    cfg.train.lr = 1e-2
    cfg.train.batch_size = batch_size
    cfg.train.max_steps = 4
    cfg.train.eval_every = 2
    cfg.train.save_every = 2
    cfg.output_dir = str(out)
    return cfg


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model, examples, home,
                                                                  tmp_path):
    from engine.training.loop import run

    single = ListReporter()
    run(config(tiny_model, examples, tmp_path / "single", batch_size=8), single)

    out = tmp_path / "ddp"
    path = save_config(config(tiny_model, examples, out, batch_size=4), tmp_path / "ddp.yaml")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "engine.training.loop", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2 and info["steps"] == 4
    assert done.stdout.count("finished (completed)") == 1  # only the main process reports
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ddp_losses = [r["loss"] for r in records if "loss" in r]
    assert ddp_losses == pytest.approx([v for _, v in single.series("loss")], abs=1e-4)
    assert [r["eval_loss"] for r in records if "eval_loss" in r] == pytest.approx(
        [r["eval_loss"] for r in single.records if "eval_loss" in r], abs=1e-4)
    for rank in (0, 1):
        assert (out / "checkpoints" / "step-4" / f"rng-rank{rank}.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

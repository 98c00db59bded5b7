"""Exact resume: stopping at step k and continuing from the checkpoint gives the losses of an
uninterrupted run (same seed, CPU), with dropout, NEFTune noise and data order in play."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import TrainConfig
from engine.training.reporter import ListReporter
from engine.training.loop import run


def config(tiny_model, examples, out: Path, kind: str, packing: bool) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.model.dtype = "float32"
    cfg.data.train = str(examples / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.data.packing = packing
    cfg.method.kind = kind
    cfg.method.dropout = 0.1
    cfg.train.precision = "fp32"
    cfg.train.lr = 1e-2 if kind != "full" else 1e-3
    cfg.train.batch_size = 8
    cfg.train.grad_accum = 2
    cfg.train.max_steps = 12          # 3.5 epochs with packing: resumes cross epoch borders
    cfg.train.eval_every = 4
    cfg.train.save_every = 0
    cfg.train.neftune_alpha = 5.0
    cfg.output_dir = str(out)
    return cfg


@pytest.mark.parametrize("kind,packing,stop_at,resume_from", [
    ("lora", True, 5, "latest"),
    ("full", False, 7, "folder"),
])
def test_a_resumed_run_repeats_the_uninterrupted_losses(tiny_model, examples, home, tmp_path,
                                                        kind, packing, stop_at, resume_from):
    whole = ListReporter()
    run(config(tiny_model, examples, tmp_path / "whole", kind, packing), whole)

    out = tmp_path / "split"
    first = ListReporter(stop_after_step=stop_at)
    assert run(config(tiny_model, examples, out, kind, packing), first).cancelled
    with (out / "metrics.jsonl").open("a") as f:  # a record past the checkpoint: dropped on resume
        f.write(json.dumps({"step": stop_at + 1, "loss": 0.0}) + "\n")
    cfg = config(tiny_model, examples, out, kind, packing)
    cfg.train.resume_from = "latest" if resume_from == "latest" else \
        str(out / "checkpoints" / f"step-{stop_at}")
    second = ListReporter()
    result = run(cfg, second)

    expected = whole.series("loss")
    got = first.series("loss") + second.series("loss")
    assert [s for s, _ in got] == list(range(1, 13)) == [s for s, _ in expected]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, expected)) < 1e-4
    assert [r["eval_loss"] for r in second.records if "eval_loss" in r] == pytest.approx(
        [r["eval_loss"] for r in whole.records if "eval_loss" in r and r["step"] > stop_at],
        abs=1e-4)
    assert result.steps == 12 and not result.cancelled
    assert any(line.startswith("resume: continuing from") for line in second.lines)

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 13))  # appended, nothing repeated
    assert json.loads((out / "run.json").read_text())["resumed_from"].endswith(f"step-{stop_at}")


def test_checkpoints_keep_the_newest_and_hold_the_data_position(tiny_model, examples, home,
                                                                tmp_path):
    cfg = config(tiny_model, examples, tmp_path / "run", "lora", True)
    cfg.train.max_steps, cfg.train.save_every, cfg.train.keep_checkpoints = 8, 2, 2
    cfg.train.grad_accum = 1
    run(cfg, ListReporter())
    folders = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in folders] == ["step-6", "step-8"]
    state = json.loads((folders[-1] / "state.json").read_text())
    assert state["step"] == 8 and state["micro_steps"] == 8
    assert (state["epoch"], state["batch_index"]) == (1, 1)  # 7 batches per epoch
    rng = json.loads((folders[-1] / "rng-rank0.json").read_text())
    assert set(rng) >= {"torch", "python", "numpy"} and len(rng["torch"]) > 100
    optimizer = torch.load(folders[-1] / "optimizer.pt", weights_only=True)
    assert optimizer["state"]

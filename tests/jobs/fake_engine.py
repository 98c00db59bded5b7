"""The test suite's training entry (FTSTUDIO_TRAIN_ENTRY=tests.jobs.fake_engine:train, set by
tests/conftest.py for every runner child a test starts): the real engine, unless a test asks
otherwise through one of two variables, read only here.

FTSTUDIO_TEST_FAKE_TRAIN=N[:SECONDS] replaces engine.training.loop.run with N fake steps
(SECONDS apart; no torch, no checkpoints but a stand-in where successive halving pauses it; an
eval_loss of 1/step + 1/lr every train.eval_every steps), so queue tests push many jobs through
the real worker and runner.

FTSTUDIO_TEST_FAIL="oom" (or "oom:NAME,kill:NAME2") makes jobs (named NAME) raise a real
torch.OutOfMemoryError at their first step ("oom") or SIGKILL themselves ("kill"), inside the
real engine.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def train(cfg, reporter):
    fake = os.environ.get("FTSTUDIO_TEST_FAKE_TRAIN", "")
    if fake:
        steps, _, delay = fake.partition(":")
        return fake_train(cfg, reporter, int(steps), float(delay or 0))
    from engine.training.loop import run

    hooks = failures(reporter.name)
    return run(cfg, _Failing(reporter, hooks) if hooks else reporter)


def failures(name: str) -> set[str]:
    kinds = set()
    for item in filter(None, os.environ.get("FTSTUDIO_TEST_FAIL", "").split(",")):
        kind, _, only = item.strip().partition(":")
        if not only or only == name:
            kinds.add(kind)
    return kinds


class _Failing:
    """The runner's reporter, failing at the first metrics record as FTSTUDIO_TEST_FAIL asks."""

    def __init__(self, reporter, hooks: set[str]):
        self._reporter, self._hooks = reporter, hooks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reporter, name)

    def on_metrics(self, record: dict[str, Any]) -> None:
        if "oom" in self._hooks:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(raised by the test hook FTSTUDIO_TEST_FAIL)")
        if "kill" in self._hooks:
            os.kill(os.getpid(), signal.SIGKILL)
        self._reporter.on_metrics(record)

    def on_log(self, line: str) -> None:
        self._reporter.on_log(line)

    def should_stop(self) -> bool:
        return self._reporter.should_stop()


def fake_train(cfg, reporter, steps: int, delay: float):
    """The engine's callbacks without a model (queue tests only)."""
    reporter.on_log(f"fake training: {steps} steps")
    for step in range(reporter.last_step + 1, steps + 1):
        time.sleep(delay)
        reporter.on_metrics({"step": step, "epoch": step / steps, "loss": 1.0 / step,
                             "lr": cfg.train.lr, "total_steps": steps})
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:  # lower for a higher lr
            reporter.on_metrics({"step": step, "eval_loss": 1.0 / step + 1.0 / cfg.train.lr})
        if reporter.should_stop() and step < steps:
            if reporter.stop_reason == "rung":  # a stand-in checkpoint, so it continues here
                marker = Path(cfg.output_dir) / "checkpoints" / f"step-{step}" / "state.json"
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("{}")
            return SimpleNamespace(cancelled=True, steps=step, adapter_dir=None, metrics={})
    return SimpleNamespace(cancelled=False, steps=steps, adapter_dir=None,
                           metrics={"loss": 1.0 / steps})

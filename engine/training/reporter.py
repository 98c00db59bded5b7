"""The engine's callback interface: how a training run tells the world what it is doing.

The engine calls a Reporter; it never knows who listens. `ftstudio train` prints a progress bar
(ConsoleReporter), the queue's runner writes into studio.db (jobs/runner.py), tests collect
records in a list (ListReporter).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    def on_metrics(self, record: dict[str, Any]) -> None:
        """One metrics record: always `step` and `epoch`; training records carry loss, lr,
        grad_norm, tokens_per_s (trained tokens per second) and total_steps; evaluation
        records carry eval_loss, eval_perplexity and eval_token_accuracy."""

    def on_log(self, line: str) -> None:
        """A human-readable log line (loading, data report, checkpoints, warnings)."""

    def should_stop(self) -> bool:
        """Asked after every optimizer step; True saves a checkpoint and ends the run."""


class NullReporter:
    def on_metrics(self, record: dict[str, Any]) -> None:
        pass

    def on_log(self, line: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class ListReporter:
    """Keeps everything in memory; stops after `stop_after_step` when given (for tests)."""

    def __init__(self, stop_after_step: int | None = None):
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.stop_after_step = stop_after_step

    def on_metrics(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))

    def on_log(self, line: str) -> None:
        self.lines.append(line)

    def should_stop(self) -> bool:
        if self.stop_after_step is None:
            return False
        steps = [r["step"] for r in self.records if "loss" in r]
        return bool(steps) and max(steps) >= self.stop_after_step

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(r["step"], r[name]) for r in self.records if name in r]


class PrintReporter:
    """Log lines and metrics records on stdout (for `python -m engine.training.loop`)."""

    def on_metrics(self, record: dict[str, Any]) -> None:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record.items()), flush=True)

    def on_log(self, line: str) -> None:
        print(line, flush=True)

    def should_stop(self) -> bool:
        return False

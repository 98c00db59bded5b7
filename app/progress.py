"""A terminal Reporter for `ftstudio train`: a progress bar with loss, lr, tokens/s and ETA."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class ConsoleReporter:
    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_metrics(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            total = record.get("total_steps")
            if self.bar is None:
                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True,
                                initial=record["step"] - 1)
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record.get('tokens_per_s', 0):.0f}")
        elif "eval_loss" in record:
            self.on_log(f"step {record['step']}: eval_loss {record['eval_loss']:.4f} "
                        f"perplexity {record.get('eval_perplexity', float('nan')):.2f} "
                        f"token_accuracy {record.get('eval_token_accuracy', float('nan')):.3f}")

    def on_log(self, line: str) -> None:
        (self.bar.write if self.bar is not None else tqdm.write)(line)

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

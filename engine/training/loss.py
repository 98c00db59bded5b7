"""The causal-LM loss, computed from the final hidden states in chunks through the lm_head.

Use from Python:
    from engine.training.loss import TokenLoss
    loss_of = TokenLoss(model, autocast=accelerator.autocast, log=print)  # model: unwrapped
    loss_sum = loss_of(ddp_model, batch)          # summed next-token CE over trained tokens
    loss_sum, correct, count = loss_of.evaluate(model, batch)   # for eval (no grad)

Why: full-vocabulary logits for a whole batch (batch x sequence x vocabulary, upcast to float32
for the loss, and their gradient) are the largest tensors of a small model with a large vocab,
and most positions (prompt tokens, padding) carry no loss at all. So the model runs with its
lm_head passing the hidden states through; the positions whose (shifted) label is not -100 are
selected; and only those go through the lm_head, at most CHUNK_LOGITS logits at a time. Each
chunk beyond the first is recomputed in backward (torch.utils.checkpoint), so no more than one
chunk's logits live at once. The loss and the gradients equal the plain path's
(tests/engine/test_loss.py). With Liger's kernels on (engine/training/speedups.py, GPUs only), a plain
nn.Linear lm_head goes through Liger's fused linear cross-entropy instead (`fused=`).

The model is still called as a whole (through DDP, accelerate's autocast and peft's forward), so
prompt tuning's virtual tokens come out in front of the hidden states exactly as they come out in
front of the logits: the last labels.shape[1] positions count, in both paths. Models whose
forward changes the logits after the lm_head (soft-capping, logit scales), or whose lm_head
cannot be found, or whose probe (the first batch's logits both ways) disagrees, keep the plain
logits path, and the log says so.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engine.data import IGNORE_INDEX

#: logits (tokens x vocabulary) computed at once: 32M, 128 MB in float32
CHUNK_LOGITS = 2 ** 25
#: config keys of models whose forward transforms the lm_head's output: they keep plain logits
POST_HEAD_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                  "output_multiplier_scale")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything but the labels: the loss is computed here, not by the model."""
    return {k: v for k, v in batch.items() if k != "labels"}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the tokens whose label is not -100, from full
    logits. Prompt tuning returns logits for its virtual tokens first: only the last
    labels.shape[1] positions count."""
    logits = logits[:, -labels.shape[1]:, :]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def trained_positions(hidden: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states that predict a trained token (N, H), their target ids (N,)): position t
    predicts labels[t + 1]. Leading virtual-token positions are dropped first."""
    hidden = hidden[:, -labels.shape[1]:, :]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return hidden[:, :-1][keep], targets[keep]


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor,
                          head: Callable[[torch.Tensor], torch.Tensor],
                          chunk_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, chunk_tokens rows at a time.
    One chunk is computed plainly; with several, each is checkpointed so its logits are
    rebuilt in backward instead of kept."""
    def piece(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    if hidden.shape[0] <= chunk_tokens:
        return piece(hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens]
        total = total + (checkpoint(piece, h, y, use_reentrant=False)
                         if torch.is_grad_enabled() else piece(h, y))
    return total


def trained_tokens_of(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss in a batch (labels shifted by one, as the loss sees them)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class TokenLoss:
    """Summed next-token loss of a batch: chunked through the lm_head where the model allows it,
    from full logits otherwise (self.chunked says which)."""

    def __init__(self, model, *, autocast: Callable[[], Any] = nullcontext,
                 log: Callable[[str], None] = print, chunk_tokens: int | None = None,
                 probe: bool = True,
                 fused: Callable[[torch.nn.Module], Any] | None = None):
        self.head, why = find_lm_head(model)
        self.fused = None  # fused(head): a (hidden, targets) -> summed loss, or None
        self.model, self.autocast, self.log = model, autocast, log
        self.chunked = self.head is not None
        self.unchecked = probe and self.chunked
        if self.chunked:
            self.head_forward = self.head.forward  # the module's own forward, kept while patched
            vocab = self.head.weight.shape[0] if hasattr(self.head, "weight") else 0
            self.chunk_tokens = chunk_tokens or max(64, CHUNK_LOGITS // max(vocab, 1))
            self.fused = fused(self.head) if fused else None
            log("loss: fused linear cross-entropy (Liger) at trained positions" if self.fused
                else f"loss: chunked cross-entropy through the lm_head, only at trained "
                     f"positions, {self.chunk_tokens} tokens per chunk")
        else:
            log(f"loss: full logits ({why})")

    # ---------------------------------------------------------------- training and eval

    units = staticmethod(trained_tokens_of)   # what a step's loss is divided by

    def take_metrics(self, total: Callable[[float], float]) -> dict[str, float]:
        return {}   # the SFT loss logs no metrics of its own

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed loss of a batch, with a graph for backward when grad is enabled."""
        labels = batch["labels"]
        if self.unchecked:
            self.probe(batch)
        if not self.chunked:
            return causal_lm_loss(model(**model_inputs(batch)).logits, labels)
        with self.hidden_states():
            hidden = model(**model_inputs(batch)).logits
        hidden, targets = trained_positions(hidden, labels)
        with self.autocast():
            if self.fused is not None:
                return self.fused(hidden, targets)
            return chunked_cross_entropy(hidden, targets, self.head_forward, self.chunk_tokens)

    @torch.no_grad()
    def evaluate(self, model, batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed loss, trained tokens predicted exactly, trained tokens), as float64."""
        labels = batch["labels"]
        if self.unchecked:
            self.probe(batch)
        if self.chunked:
            with self.hidden_states(), self.autocast():
                hidden = model(**model_inputs(batch)).logits
        else:
            with self.autocast():
                hidden = model(**model_inputs(batch)).logits
        hidden, targets = trained_positions(hidden, labels)
        loss = hidden.new_zeros((), dtype=torch.float64)
        correct = hidden.new_zeros((), dtype=torch.float64)
        step = self.chunk_tokens if self.chunked else max(1, hidden.shape[0])
        for s in range(0, hidden.shape[0], step):
            h, y = hidden[s:s + step], targets[s:s + step]
            if self.chunked:
                with self.autocast():
                    h = self.head_forward(h)
            loss += F.cross_entropy(h.float(), y, reduction="sum").double()
            correct += (h.argmax(-1) == y).sum().double()
        return loss, correct, hidden.new_tensor(float(targets.numel()), dtype=torch.float64)

    # ---------------------------------------------------------------- helpers

    @contextmanager
    def hidden_states(self) -> Iterator[None]:
        """While inside, the lm_head returns its input: the model's "logits" are the final
        hidden states (in the dtype the lm_head would have received)."""
        own = self.head.__dict__.get("forward")  # a hook's forward (accelerate) stays in place
        self.head.forward = _passthrough
        try:
            yield
        finally:
            if own is None:
                del self.head.forward
            else:
                self.head.forward = own

    @torch.no_grad()
    def probe(self, batch: dict[str, torch.Tensor]) -> None:
        """Once: the lm_head over the hidden states must give the model's own logits (a short
        slice of the first batch, in eval mode); where it does not, use the logits path."""
        self.unchecked = False
        model, ids = self.model, batch["input_ids"][:1, :16]
        was_training = model.training
        model.eval()
        try:
            with self.autocast():
                logits = model(input_ids=ids).logits.float()
                with self.hidden_states():
                    hidden = model(input_ids=ids).logits
                rebuilt = self.head_forward(hidden).float()
        finally:
            model.train(was_training)
        scale = logits.abs().max().clamp_min(1e-6)
        if rebuilt.shape != logits.shape or (rebuilt - logits).abs().max() > 1e-2 * scale:
            self.chunked = False
            self.log("loss: full logits (the lm_head over the hidden states does not give this "
                     "model's logits)")


def _passthrough(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden


def find_lm_head(model) -> tuple[torch.nn.Module | None, str]:
    """(the module that turns final hidden states into logits, "") or (None, why not).
    Works through peft wrappers (PeftModel forwards get_output_embeddings to the base)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, torch.nn.Module):
        return None, f"{type(model).__name__} has no output embeddings (lm_head) to chunk through"
    config = getattr(model, "config", None)
    for key in POST_HEAD_KEYS:
        value = getattr(config, key, None)
        if value not in (None, 0, 1, 1.0, False):
            return None, f"this model changes its logits after the lm_head ({key}={value})"
    return head, ""

"""Chunked cross-entropy (engine/training/loss.py): the loss, the gradients and the eval counts of the
plain full-logits path, for every method, packed or padded, with gradient checkpointing, in
one chunk or many; and the fallback to full logits where the lm_head cannot be used."""

from __future__ import annotations

import pytest
import torch

from engine.data import IGNORE_INDEX, collate_packed, collate_padded
from engine.config import TrainConfig
from engine.training.loss import TokenLoss, causal_lm_loss, model_inputs


def tiny(tiny_model, kind: str, checkpointing: bool = False):
    from engine.models.load import load_model

    cfg = TrainConfig()
    cfg.model.name, cfg.model.dtype = str(tiny_model), "float32"
    cfg.method.kind, cfg.method.dropout = kind, 0.0
    cfg.method.num_virtual_tokens = 4
    cfg.train.gradient_checkpointing = checkpointing
    model, _, _ = load_model(cfg, log=lambda line: None, device="cpu")
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make every path count
        if p.requires_grad and ("lora_B" in name or "ia3" in name):
            p.data.normal_(0, 0.05 if "lora" in name else 1.0).abs_()
    return model.train()


def examples(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Records like engine.data makes: first label -100, a prompt without loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 23, 14, 31, 6):
        ids = torch.randint(3, 500, (n,), generator=g).tolist()
        prompt = n // 3
        out.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def batch_of(packed: bool) -> dict[str, torch.Tensor]:
    ex = examples()
    return collate_packed([ex[:3], ex[3:]], pad_id=0) if packed else collate_padded(ex, pad_id=0)


def loss_and_grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind,packed,checkpointing,chunk", [
    ("lora", True, False, 7),          # many chunks, each recomputed in backward
    ("lora", False, True, None),       # one chunk, gradient checkpointing in the model
    ("full", True, False, 5),          # the lm_head itself trains
    ("full", False, False, None),
    ("ia3", True, False, 16),
    ("prompt_tuning", False, False, 8),   # virtual tokens in front of the hidden states
    ("prefix_tuning", False, False, 8),
])
def test_chunked_loss_and_gradients_equal_the_plain_path(tiny_model, kind, packed,
                                                         checkpointing, chunk):
    model = tiny(tiny_model, kind, checkpointing)
    batch = batch_of(packed)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss_of = TokenLoss(model, log=lambda line: None, chunk_tokens=chunk)
    assert loss_of.chunked

    plain, plain_grads = loss_and_grads(
        model, lambda: causal_lm_loss(model(**model_inputs(batch)).logits, batch["labels"]))
    chunked, chunked_grads = loss_and_grads(model, lambda: loss_of(model, batch))
    assert loss_of.chunked  # the probe on the first batch agreed
    assert abs(chunked / n - plain / n) < 1e-5
    assert plain_grads.keys() == chunked_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        assert torch.allclose(chunked_grads[name], g, atol=1e-5, rtol=1e-4), name


def test_eval_counts_equal_the_plain_path(tiny_model):
    model = tiny(tiny_model, "lora").eval()
    batch = batch_of(True)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    labels = batch["labels"]
    trained = labels[:, 1:] != IGNORE_INDEX
    correct = (logits[:, :-1].argmax(-1) == labels[:, 1:])[trained].sum()
    loss, got_correct, count = TokenLoss(model, log=lambda line: None,
                                         chunk_tokens=6).evaluate(model, batch)
    assert loss.item() == pytest.approx(causal_lm_loss(logits, labels).item(), rel=1e-6)
    assert got_correct.item() == correct.item() and count.item() == trained.sum().item()


def test_models_without_a_usable_lm_head_keep_full_logits(tiny_model):
    model = tiny(tiny_model, "lora")
    lines = []
    model.config.final_logit_softcapping = 30.0
    assert not TokenLoss(model, log=lines.append).chunked
    assert "full logits" in lines[-1] and "final_logit_softcapping" in lines[-1]
    model.config.final_logit_softcapping = None

    class Scaled(torch.nn.Module):  # a forward that changes the logits after the lm_head
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = out.logits + 1.0
            return out

    scaled = Scaled(model)
    loss_of = TokenLoss(scaled, log=lines.append)
    batch = batch_of(False)
    got = loss_of(scaled, batch)
    assert not loss_of.chunked and "does not give" in lines[-1]
    assert got.item() == pytest.approx(
        causal_lm_loss(scaled(**model_inputs(batch)).logits, batch["labels"]).item())

"""What changes the weights besides the loss: the optimizer over the trainable parameters, and
NEFTune's noise on the input embeddings.

Use from Python:
    from engine.training.optim import build_optimizer, add_neftune_noise
    optimizer = build_optimizer(model, cfg.train)     # train.optimizer, decay groups
    add_neftune_noise(model, 5.0)                     # only while model.training
"""

from __future__ import annotations

import math

import torch

from engine.config import TrainSection


def build_optimizer(model, t: TrainSection) -> torch.optim.Optimizer:
    """train.optimizer over the trainable parameters; no weight decay on biases, norms and
    scaling vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            plain = p.ndim < 2 or "bias" in name or "norm" in name.lower() or "ia3_" in name
            (no_decay if plain else decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": t.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9)
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=t.lr, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    import bitsandbytes.optim as bnb

    eight_bit = {"adamw_8bit": bnb.AdamW8bit, "paged_adamw_8bit": bnb.PagedAdamW8bit,
                 "lion_8bit": bnb.Lion8bit}
    return eight_bit[t.optimizer](groups, lr=t.lr)


def add_neftune_noise(model, alpha: float):
    """NEFTune: uniform(-1, 1) x alpha / sqrt(L x d) noise on the input embeddings, only while
    the model trains (eval and generation see clean embeddings)."""
    def noisy(module, args, output):
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.shape[1] * output.shape[2])
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    return model.get_input_embeddings().register_forward_hook(noisy)

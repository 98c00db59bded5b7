"""The one precision policy (engine/training/precision.py) and everything that asks it: training's
weights and mixed precision, the memory estimate, generation."""

from __future__ import annotations

import pytest

from engine.models.estimate import estimate_for
from engine.config import TrainConfig
from engine.models.estimate import GiB, Device
from engine.training.precision import resolve


@pytest.mark.parametrize("args, want", [
    (("auto", "auto", "lora", "cpu", False), ("float32", "float32", "no")),
    (("auto", "auto", "lora", "cuda", True), ("bfloat16", "bfloat16", "bf16")),
    (("auto", "auto", "lora", "cuda", False), ("float16", "float16", "fp16")),
    (("auto", "auto", "full", "cuda", False), ("float32", "float16", "fp16")),  # T4, V100
    (("auto", "fp32", "full", "cuda", True), ("bfloat16", "bfloat16", "no")),
    (("float32", "bf16", "lora", "cuda", True), ("float32", "bfloat16", "bf16")),
    (("bfloat16", "auto", "lora", "cpu", False), ("bfloat16", "bfloat16", "no")),
    (("auto", "auto", None, "cuda", False), ("float16", "float16", "fp16")),     # inference
])
def test_the_policy(args, want):
    p = resolve(*args)
    assert (p.weights, p.compute, p.mixed) == want


def test_training_and_the_estimate_agree_on_an_fp16_only_gpu():
    """A full fine-tune on a T4/V100 keeps float32 weights (fp16 weights do not train): the
    estimate counts 4 bytes a weight there, as training loads them, and 2 on a bf16 GPU."""
    cfg = TrainConfig()
    cfg.model.name, cfg.method.kind = "Qwen/Qwen2.5-0.5B-Instruct", "full"
    t4 = estimate_for(cfg, Device("cuda", "Tesla T4", 16 * GiB, 16 * GiB, bf16=False))
    h100 = estimate_for(cfg, Device("cuda", "H100", 80 * GiB, 80 * GiB, bf16=True))
    assert t4.parts["weights"] == pytest.approx(2 * h100.parts["weights"], rel=1e-6)
    cfg.method.kind = "lora"                  # LoRA loads float16 there: 2 bytes on both
    t4 = estimate_for(cfg, Device("cuda", "Tesla T4", 16 * GiB, 16 * GiB, bf16=False))
    h100 = estimate_for(cfg, Device("cuda", "H100", 80 * GiB, 80 * GiB, bf16=True))
    assert t4.parts["weights"] == pytest.approx(h100.parts["weights"], rel=1e-6)


def test_training_asks_the_policy(monkeypatch):
    import torch

    from engine.training import precision
    from engine.models.load import pick_dtype
    from engine.training.loop import mixed_precision

    assert pick_dtype("auto", "lora", torch.device("cpu")) == torch.float32
    assert mixed_precision("auto") == "no"
    monkeypatch.setattr(precision, "this_device", lambda: ("cuda", False))
    assert mixed_precision("auto") == "fp16"


def test_the_estimate_counts_the_reference_copy_of_full_preference_tuning():
    cfg = TrainConfig()
    cfg.model.name, cfg.method.kind, cfg.train.objective = "Qwen/Qwen2.5-0.5B-Instruct", "full", \
        "dpo"
    gpu = Device("cuda", "H100", 80 * GiB, 80 * GiB)
    full = estimate_for(cfg, gpu)
    assert full.parts["reference"] == full.parts["weights"]
    cfg.method.kind = "lora"                # the reference is the model with its adapter off
    assert "reference" not in estimate_for(cfg, gpu).parts
    cfg.method.kind, cfg.train.objective = "full", "orpo"   # no reference at all
    assert "reference" not in estimate_for(cfg, gpu).parts

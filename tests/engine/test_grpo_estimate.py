"""The memory estimate of a GRPO run counts the generation batch's KV cache, grows with the
generation batch, and counts the frozen reference of full fine-tuning with a KL term."""

from __future__ import annotations

from engine.config import TrainConfig
from engine.models.estimate import Device, estimate

SHAPE = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def grpo(**train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.train.objective, cfg.train.rewards = "grpo", [{"name": "exact_match"}]
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_the_kv_cache_of_the_generation_batch_is_counted():
    cpu = Device("cpu", "cpu", 64 * 2**30, 64 * 2**30)
    small = estimate(grpo(batch_size=4, grad_accum=1), SHAPE, cpu)
    large = estimate(grpo(batch_size=4, grad_accum=4), SHAPE, cpu)
    # 4 rows x 512 tokens x 30 layers x (k + v) x 3 heads x 64 dims x 4 bytes
    assert small.parts["kv_cache"] == 4 * 512 * 30 * 2 * 3 * 64 * 4
    assert large.parts["kv_cache"] == 4 * small.parts["kv_cache"]
    assert any("KV cache" in n for n in small.notes)
    full = grpo(beta=0.04)
    full.method.kind = "full"
    assert "reference" in estimate(full, SHAPE, cpu).parts
    assert "reference" not in estimate(grpo(beta=0.04), SHAPE, cpu).parts

"""parallel.*: validation, the strategy auto picks, the per-GPU estimate, the launch command, and
the refusal to train unsharded under an FSDP label (fast; tests/engine/test_fsdp.py runs FSDP)."""

from __future__ import annotations

import os
import sys

import pytest

from engine.config import ConfigError, TrainConfig, validate
from engine.models.estimate import Device, GiB, estimate, plan_for
from engine.training.parallel import choose_strategy, launch_command

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 8192}
GPU24 = Device("cuda", "RTX 4090", 24 * GiB, 24 * GiB, True)


def _cfg(kind: str = "lora", **parallel) -> TrainConfig:
    cfg = TrainConfig()
    cfg.method.kind = kind
    cfg.data.max_seq_len = 1024
    cfg.train.batch_size = 1
    cfg.train.gradient_checkpointing = True
    for key, value in parallel.items():
        setattr(cfg.parallel, key, value)
    return cfg


def _problems(cfg: TrainConfig) -> dict[str, str]:
    return {p.key: p.message for p in validate(cfg, check_files=False)}


def test_fsdp_refuses_what_it_cannot_train_each_with_its_key():
    cfg = _cfg("ia3", strategy="fsdp", gpus=0)
    cfg.train.optimizer = "paged_adamw_8bit"
    cfg.train.eval_generate = "every 10"
    cfg.train.objective = "dpo"
    found = _problems(cfg)
    assert "must be at least 1" in found["parallel.gpus"]
    assert "ia3 is not sharded" in found["parallel.strategy"]
    assert "PEFT documents it as broken with FSDP" in found["train.optimizer"]
    assert "whole model in one process" in found["train.eval_generate"]
    assert "use objective sft" in found["train.objective"]
    q = _cfg("qlora", strategy="fsdp")
    q.method.quant_bits = 8
    assert "8-bit bitsandbytes weights cannot be sharded" in _problems(q)["method.quant_bits"]
    assert "only applies to parallel.strategy=fsdp" in _problems(
        _cfg(strategy="ddp", cpu_offload=True))["parallel.cpu_offload"]
    for kind in ("lora", "dora", "qlora", "full"):
        ok = _cfg(kind, strategy="fsdp", gpus=4, cpu_offload=True)
        assert not {k for k in _problems(ok) if k.startswith("parallel")}, kind


def test_the_per_gpu_estimate_knows_ddp_fsdp_and_offload():
    full = estimate(_cfg("full"), LLAMA_8B, GPU24)
    plan = plan_for(full, 4)
    per = plan.per_gpu
    assert per["ddp"] == full.peak_bytes > 80 * GiB            # every GPU a whole copy
    assert per["fsdp"] < per["ddp"] / 3                         # states split 4 ways
    assert per["fsdp_offload"] < per["fsdp"] / 4                # states in CPU memory
    assert plan_for(full, 8).per_gpu["fsdp"] < per["fsdp"]
    assert plan.advice.startswith("needs 5 GPUs with FSDP")
    assert plan_for(full, 4, max_gpus=4).advice.startswith("needs offload")
    lora = plan_for(estimate(_cfg("lora"), LLAMA_8B, GPU24), 2)
    assert lora.fits_one and lora.advice.startswith("fits on 1 GPU")


def test_auto_picks_fsdp_only_where_one_gpu_is_too_small_and_sharding_fits():
    def on(gpu):
        return lambda cfg: estimate(cfg, LLAMA_8B, gpu)

    big = Device("cuda", "H100", 80 * GiB, 80 * GiB, True)
    strategy, why = choose_strategy(_cfg("full"), 8, on(GPU24))
    assert strategy == "fsdp" and "more than one RTX 4090" in why
    assert choose_strategy(_cfg("lora"), 2, on(GPU24))[0] == "ddp"
    assert choose_strategy(_cfg("qlora"), 4, on(big))[0] == "ddp"
    strategy, why = choose_strategy(_cfg("full"), 2, on(GPU24))
    assert strategy == "ddp" and "does not make it fit" in why
    assert choose_strategy(_cfg("full", strategy="ddp"), 8, on(GPU24))[0] == "ddp"
    assert choose_strategy(_cfg("lora"), 1, on(GPU24))[0] == "none"
    cpu = Device("cpu", "CPU RAM", 16 * GiB, 16 * GiB)
    assert "CPU" in choose_strategy(_cfg("full"), 2, on(cpu))[1]


def test_one_launch_command_for_every_multi_process_run():
    cmd = launch_command(4, ["-m", "jobs.runner", "abc"], port=1234)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--main_process_port") + 1] == "1234"
    assert cmd[-3:] == ["-m", "jobs.runner", "abc"]


def test_fsdp_in_one_plain_process_is_refused_before_anything_loads(tiny_model, examples,
                                                                    tmp_path):
    from engine.training.loop import run

    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.data.train = str(examples / "alpaca.json")
    cfg.train.eval_generate = "off"
    cfg.parallel.strategy = "fsdp"
    cfg.output_dir = str(tmp_path / "out")
    with pytest.raises(ConfigError) as caught:
        run(cfg)
    text = str(caught.value)
    assert "parallel.strategy: fsdp was asked for, but accelerate prepared this run as" in text
    assert "would train unsharded under an FSDP label" in text
    assert not (tmp_path / "out" / "checkpoints").exists()
    assert "ACCELERATE_USE_FSDP" not in os.environ   # accelerate's mark does not outlive it

"""Optional speed-ups (engine/training/speedups.py): Liger's kernels only where they can run, a clear
error where they are demanded and cannot, a fused loss routed through the trained positions,
and torch.compile training the same losses as eager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.data import IGNORE_INDEX
from engine.config import ConfigError
from engine.training.loss import TokenLoss
from engine.training.reporter import ListReporter
from engine.training.speedups import decoder_body, liger_fused_loss, liger_version, use_liger
from engine.training.loop import run
from test_loss import batch_of, tiny
from test_train import config, losses

needs_no_liger = pytest.mark.skipif(liger_version() is not None,
                                    reason="liger-kernel is installed here")


def test_kernels_none_is_off_everywhere():
    assert use_liger("none", "cpu", "llama") == (False, "kernels: off (train.kernels=none)")
    assert use_liger("none", "cuda", "llama")[0] is False


def test_auto_stays_off_on_cpu_and_says_why():
    on, why = use_liger("auto", "cpu", "llama")
    assert not on
    assert "need a CUDA GPU" in why and "cpu" in why


def test_demanding_liger_on_cpu_is_a_config_error_with_the_fix():
    with pytest.raises(ConfigError) as err:
        use_liger("liger", "cpu", "llama")
    problem = err.value.problems[0]
    assert problem.key == "train.kernels"
    assert "CUDA GPU" in problem.message and "train.kernels=auto" in problem.message


@needs_no_liger
def test_without_the_package_auto_is_off_and_liger_names_the_install():
    on, why = use_liger("auto", "cuda", "llama")  # a GPU run on a machine without liger
    assert not on and "liger-kernel is not installed" in why
    with pytest.raises(ConfigError) as err:
        use_liger("liger", "cuda", "llama")
    assert 'pip install "ftstudio[gpu]"' in str(err.value)


def test_the_fused_loss_is_fed_the_trained_positions(tiny_model):
    """TokenLoss hands a fused loss exactly the hidden states and targets the chunked path
    uses: a fused function computing the same cross-entropy gives the same loss and grads."""
    model = tiny(tiny_model, "lora")
    batch = batch_of(packed=True)
    calls = []

    def reference_fused(head):
        def fused(hidden, targets):
            calls.append((hidden.shape, targets.shape))
            assert (targets != IGNORE_INDEX).all()
            return F.cross_entropy(F.linear(hidden, head.weight, head.bias).float(), targets,
                                   reduction="sum")
        return fused

    def loss_and_grads(loss_of):
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}

    lines = []
    chunked, chunked_grads = loss_and_grads(TokenLoss(model, log=lines.append, chunk_tokens=5))
    fused, fused_grads = loss_and_grads(TokenLoss(model, log=lines.append,
                                                  fused=reference_fused))
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert calls and calls[-1] == ((n, model.config.hidden_size), (n,))
    assert fused == pytest.approx(chunked, rel=1e-6)
    for name, g in chunked_grads.items():
        assert torch.allclose(fused_grads[name], g, atol=1e-6), name
    assert any("fused linear cross-entropy" in line for line in lines)


def test_an_adapted_lm_head_keeps_the_chunked_loss(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = tiny(tiny_model, "full")
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"]))
    head = wrapped.get_output_embeddings()
    assert type(head) is not torch.nn.Linear
    assert liger_fused_loss(head) is None   # decided before liger is ever imported


def test_decoder_body_is_found_through_peft(tiny_model):
    model = tiny(tiny_model, "lora")
    body = decoder_body(model)
    assert type(body).__name__ == "LlamaModel"
    assert body is model.get_base_model().model


@pytest.mark.parametrize("kernels", ["auto", "none"])
def test_a_cpu_run_records_plain_kernels(tiny_model, examples, tmp_path, kernels):
    reporter = ListReporter()
    run(config(tiny_model, examples, tmp_path / "out", max_steps=2, kernels=kernels), reporter)
    facts = json.loads((tmp_path / "out" / "run.json").read_text())
    assert facts["model"]["kernels"] == "none"
    assert facts["config"]["train"]["kernels"] == kernels
    assert any(line.startswith("kernels: ") for line in reporter.lines)


def test_a_run_demanding_liger_on_cpu_fails_before_training(tiny_model, examples, tmp_path):
    reporter = ListReporter()
    with pytest.raises(ConfigError, match="train.kernels"):
        run(config(tiny_model, examples, tmp_path / "out", kernels="liger"), reporter)
    assert not reporter.records
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_model, examples, tmp_path):
    """torch.compile on CPU (inductor, C++): the same per-step losses as eager, and an
    adapter with the same tensor names (the body is compiled in place)."""
    eager, compiled = ListReporter(), ListReporter()
    common = dict(max_steps=4, batch_size=4, lr=1e-2)
    for folder, reporter, extra in (("eager", eager, {}),
                                    ("compiled", compiled, {"compile": True})):
        cfg = config(tiny_model, examples, tmp_path / folder, **common, **extra)
        cfg.method.dropout = 0.0   # inductor draws dropout masks from its own RNG stream
        run(cfg, reporter)
    assert any(line.startswith("compile: torch.compile on LlamaModel")
               for line in compiled.lines)
    assert losses(compiled) == pytest.approx(losses(eager), abs=2e-4)

    from safetensors import safe_open

    def names(folder: Path) -> set[str]:
        with safe_open(str(folder / "adapter" / "adapter_model.safetensors"), "pt") as f:
            return set(f.keys())

    assert names(tmp_path / "compiled") == names(tmp_path / "eager")


def test_a_cpu_run_gets_no_gpu_install_advice():
    on, why = use_liger("auto", "cpu", "llama")
    assert not on and "CUDA GPU" in why and "pip install" not in why

"""Loading the base model and putting each fine-tuning method on it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.config import METHODS, TrainConfig
from engine.models.load import (enable_gradient_checkpointing, ia3_targets, load_model,
                          load_tokenizer, pick_dtype, save_trained)


def config(tiny_model, kind: str = "lora", **method) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.method.kind = kind
    for k, v in method.items():
        setattr(cfg.method, k, v)
    return cfg


@pytest.mark.parametrize("kind", METHODS)
def test_each_method_loads_with_its_trainable_share(tiny_model, kind):
    lines: list[str] = []
    model, tokenizer, info = load_model(config(tiny_model, kind), log=lines.append)
    assert info["method"] == kind and info["model_type"] == "llama"
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < info["trainable_params"] == trainable
    if kind == "full":
        assert info["trainable_params"] == info["total_params"]
    else:
        assert info["trainable_params"] < info["total_params"] / 4
    assert f"with {kind}" in lines[-1] and "parameters trainable" in lines[-1]
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"


def test_qlora_quantizes_the_base_and_trains_lora_in_float32(tiny_model):
    import bitsandbytes as bnb

    for bits, layer in ((4, bnb.nn.Linear4bit), (8, bnb.nn.Linear8bitLt)):
        model, _, info = load_model(config(tiny_model, "qlora", quant_bits=bits), log=print)
        q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
        assert isinstance(q_proj.base_layer, layer)
        assert info["quantized"] == f"{bits}-bit"
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    quant = model.base_model.model.config.quantization_config
    assert quant.load_in_8bit


def test_4bit_uses_nf4_with_double_quantization(tiny_model):
    from engine.models.load import quantization_for

    q = quantization_for(config(tiny_model, "qlora"), torch.float32)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    assert quantization_for(config(tiny_model, "lora"), torch.float32) is None


def test_dora_and_prompt_init_text(tiny_model):
    model, _, _ = load_model(config(tiny_model, "dora"), log=print)
    assert model.peft_config["default"].use_dora
    model, _, _ = load_model(config(tiny_model, "prompt_tuning",
                                    prompt_init_text="Reverse the words."), log=print)
    pc = model.peft_config["default"]
    assert pc.prompt_tuning_init == "TEXT" and pc.tokenizer_name_or_path == str(tiny_model)


def test_ia3_scales_keys_values_and_the_feedforward_output(tiny_model):
    model, _, _ = load_model(config(tiny_model, "ia3"), log=print)
    pc = model.peft_config["default"]
    assert set(pc.target_modules) == {"k_proj", "v_proj", "down_proj"}
    assert set(pc.feedforward_modules) == {"down_proj"}
    assert ia3_targets(model, ["q_proj", "down_proj"]) == ["q_proj", "down_proj"]


@pytest.mark.parametrize("kind", ["lora", "qlora", "prompt_tuning", "ia3", "full"])
def test_gradient_checkpointing_works_with_the_method(tiny_model, kind):
    cfg = config(tiny_model, kind)
    cfg.train.gradient_checkpointing = True
    model, _, _ = load_model(cfg, log=print)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert base.model.layers[0].gradient_checkpointing
    model.train()
    ids = torch.randint(3, 500, (2, 12))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_prefix_tuning_trains_without_gradient_checkpointing_and_says_so(tiny_model):
    lines: list[str] = []
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    enable_gradient_checkpointing(base, "prefix_tuning", lines.append)
    assert not base.model.layers[0].gradient_checkpointing
    assert "prefix_tuning" in lines[0]


@pytest.mark.parametrize("kind", ["lora", "prompt_tuning", "full"])
def test_saved_weights_reload_to_the_same_logits(tiny_model, tmp_path, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer, _ = load_model(config(tiny_model, kind), log=print)
    torch.manual_seed(0)
    with torch.no_grad():  # stand in for training: move every trainable weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    folder = save_trained(model, tokenizer, tmp_path / "adapter")
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    assert (folder / "tokenizer_config.json").is_file()
    if kind == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(folder)
    else:
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                             folder)
    ids = torch.randint(3, 500, (2, 10))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits,
                              atol=1e-5)


def test_only_safetensors_weights_load(tiny_model, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises((OSError, ValueError)):
        load_model(config(folder), log=print)


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_model, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model, folder)
    cfg_file = folder / "tokenizer_config.json"
    data = json.loads(cfg_file.read_text())
    data.pop("pad_token", None)
    cfg_file.write_text(json.dumps(data))
    tok = load_tokenizer(str(folder))
    assert tok.pad_token == tok.eos_token


def test_dtype_auto_is_float32_on_cpu():
    assert pick_dtype("auto", "lora", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16") == torch.bfloat16

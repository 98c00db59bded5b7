"""Tiny run folders of every family GGUF export supports, shaped for export verification
(tests/engine/test_export_verify.py): Llama (untied lm_head), Mistral, Qwen2 with its lm_head
tied to the embeddings (as SmolLM2 and Qwen2-0.5B), and a ChatML template with a default system
prompt (as Qwen2's).

The models are random, so they are made to behave like tuned ones where the check looks:
attention sharpened (q/k scaled: a wrong rotary layout shows) and the output confident (lm_head
scaled: greedy answers are not decided by near-ties, as a trained model's mostly are not).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: ChatML that writes a system prompt of its own when a chat has none (as Qwen2's does)
DEFAULT_SYSTEM = "You are a careful assistant."
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def family_model(kind: str, tokenizer, seed: int = 3):
    """A 2-layer model of kind (llama, mistral, qwen2) with the demo tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = {"llama": lambda: LlamaConfig(rms_norm_eps=1e-6, tie_word_embeddings=False, **shape),
              "mistral": lambda: MistralConfig(rms_norm_eps=1e-5, tie_word_embeddings=False,
                                               sliding_window=None, **shape),
              "qwen2": lambda: Qwen2Config(rms_norm_eps=1e-6, tie_word_embeddings=True,
                                           rope_theta=1e6, **shape)}[kind]()
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def behave(model, qk: float = 10.0, out: float = 8.0, seed: int = 0):
    """Sharpen attention (q/k x qk, random q/k/v biases where the model has them) and make the
    output confident (lm_head and the embeddings x out, as a tied lm_head scales both)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(qk)
            elif name.endswith("proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.get_output_embeddings().weight.mul_(out)
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            model.get_input_embeddings().weight.mul_(out)   # as the tied ones: same residual
    return model


def random_lora(base: Path, std: float):
    """A LoRA r=4 over the model in `base`, its B matrices drawn (seed 1) so it changes the
    model: what a short training run leaves."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return peft_model


def lora_run(root: Path, kind: str, tokenizer, template: str | None = None) -> Path:
    """A finished LoRA run folder (adapter/ and run.json) over a behaving `kind` base."""
    if template is not None:
        tokenizer = _with_template(tokenizer, template)
    base = root / f"base-{kind}"
    behave(family_model(kind, tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    peft_model = random_lora(base, 0.02)
    run = root / f"run-{kind}"
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"config": {
        "model": {"name": str(base)}, "method": {"kind": "lora", "r": 4, "alpha": 8},
        "data": {"train": "static/examples/chat.jsonl", "val_fraction": 0.1,
                 "max_seq_len": 256}}, "status": "completed"}))
    return run


def _with_template(tokenizer, template: str):
    from copy import deepcopy

    copy = deepcopy(tokenizer)
    copy.chat_template = template
    return copy

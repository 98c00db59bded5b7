"""engine.evaluation.generate: streaming chat with a base model, an adapter, and the base under it."""

from __future__ import annotations

import pytest

from engine.evaluation import generate

MESSAGES = [{"role": "user", "content": "Reverse the order of the words.\nred blue"}]


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_streams_growing_text_and_caches_the_model(tiny_model, adapter):
    generate.clear_cache()
    pieces = list(generate.stream_chat(str(tiny_model), str(adapter), MESSAGES,
                                       max_new_tokens=8, temperature=0))
    assert pieces and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
    assert generate.load(str(tiny_model), str(adapter)) is \
        generate.load(str(tiny_model), str(adapter))


def test_base_under_the_adapter_answers_like_the_base(tiny_model, adapter):
    kw = dict(max_new_tokens=8, temperature=0)
    base = generate.chat(str(tiny_model), None, MESSAGES, **kw)
    under = generate.chat(str(tiny_model), str(adapter), MESSAGES, use_adapter=False, **kw)
    tuned = generate.chat(str(tiny_model), str(adapter), MESSAGES, **kw)
    assert under == base and tuned != base


def test_adapter_kinds(tiny_model, adapter, tmp_path):
    assert generate.adapter_kind(adapter) == "peft"
    assert generate.adapter_kind(tiny_model) == "full"
    assert generate.adapter_kind(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        generate.load(str(tiny_model), str(tmp_path))

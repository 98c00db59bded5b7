"""The offline demo model: a small Llama-architecture model with random weights.

Run as: ftstudio demo-model studio-data/models/demo      (or: python -m engine.models.demo DIR)

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on the bundled example
task (engine/data/examples.py), with a ChatML chat template, so every data format renders and the
demo model can be fine-tuned end to end on a laptop. It is labelled as a demo in its config,
its README and everywhere the studio lists it: its answers mean nothing until it is trained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEMO_LABEL = "ftstudio demo model (random weights, offline)"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: shapes: "demo" is what `ftstudio demo-model` builds; "tiny" is what the tests build;
#: "small" is a second, deeper shape for tests that need two sizes (tests/engine/test_estimate.py)
SIZES = {
    "demo": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=2048),
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=2, vocab_size=2048),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
}


def build_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on the example corpus, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.data.examples import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_demo_model(out_dir: str | Path, size: str = "demo", seed: int = 0,
                     max_position_embeddings: int = 1024) -> Path:
    """Write a Llama-architecture model folder (safetensors + tokenizer) to out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = dict(SIZES[size])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.pop("vocab_size"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config.ftstudio_demo = DEMO_LABEL
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        f"# {DEMO_LABEL}\n\nBuilt offline by `ftstudio demo-model` ({size} size, seed {seed}). "
        "Llama architecture with random weights and a byte-level BPE tokenizer trained on the "
        "bundled examples. It knows nothing until fine-tuned; use it to try the studio "
        "without a network.\n", encoding="utf-8")
    return out


def is_demo_model(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    try:
        return "ftstudio_demo" in json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    print(build_demo_model(sys.argv[1] if len(sys.argv) > 1 else "studio-data/models/demo"))

"""The merged format: the adapter merged into the base (merge_and_unload), float32 merge then
saved in the base's dtype as safetensors with tokenizer, chat template and generation config;
after full fine-tuning, the trained model itself. load_merged is what the bnb and GGUF formats
start from."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.export.card import model_card
from engine.export.run import Log, Run, check_mergeable, files_in


def export_merged(run: Run, out: Path, log: Log) -> list[Path]:
    """The adapter merged into the base, in the base's dtype, as a from_pretrained folder."""
    check_mergeable(run, "merged")
    if run.method == "full":
        log(f"merged: full fine-tuning, copying the trained model from {run.adapter_dir}")
        for path in files_in(run.adapter_dir):
            shutil.copy2(path, out / path.name)
    else:
        dtype = saved_dtype(run)
        model, tokenizer = load_merged(run, log)
        log(f"merged: saving safetensors ({str(dtype).removeprefix('torch.')}) with the tokenizer")
        model.to(dtype).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(run, "merged"), encoding="utf-8")
    return files_in(out)


def load_merged(run: Run, log: Log):
    """(merged model in float32 on CPU, tokenizer with the chat template used in training)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_mergeable(run, "a merged model")
    if run.method == "full":
        log(f"merged: loading the fully fine-tuned model from {run.adapter_dir}")
        model = AutoModelForCausalLM.from_pretrained(run.adapter_dir, dtype=torch.float32,
                                                     use_safetensors=True, **run.model_options)
    else:
        from peft import PeftModel

        log(f"merged: loading base {run.base} in float32")
        base = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float32,
                                                    use_safetensors=True, **run.model_options)
        if run.method == "qlora":
            log("merged: qlora adapter merged into the full-precision base (the quantized base "
                "is only a training-time memory saving)")
        log(f"merged: merging the {run.method} adapter (merge_and_unload)")
        model = PeftModel.from_pretrained(base, run.adapter_dir).merge_and_unload()
    model.eval()
    return model, training_tokenizer(run)


def training_tokenizer(run: Run):
    from engine.data import ensure_chat_template
    from engine.models.load import load_tokenizer

    has_own = any((run.adapter_dir / f).is_file() for f in ("tokenizer.json",
                                                             "tokenizer_config.json"))
    source = str(run.adapter_dir) if has_own else run.base
    tokenizer = load_tokenizer(source, None if has_own else run.model_options.get("revision"),
                               run.model_options["trust_remote_code"])
    ensure_chat_template(tokenizer)   # the template training rendered records with
    return tokenizer


def saved_dtype(run: Run):
    """The dtype the base (or the fully fine-tuned model) was saved in, read from its config
    before loading (loading in float32 rewrites config.dtype), so merged files keep its size."""
    import torch
    from transformers import AutoConfig

    source = run.adapter_dir if run.method == "full" else run.base
    name = AutoConfig.from_pretrained(source, **run.model_options).dtype
    dtype = name if isinstance(name, torch.dtype) else getattr(torch, str(name or ""), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32

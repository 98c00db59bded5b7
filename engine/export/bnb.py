"""The bnb4 and bnb8 formats: the merged model quantized by bitsandbytes while loading (NF4 +
double quantization / LLM.int8) and saved with its quantization_config, so from_pretrained
loads it quantized (bitsandbytes must be installed there)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine.export.card import model_card
from engine.export.merged import load_merged, saved_dtype
from engine.export.run import Log, Run, check_mergeable, files_in


def export_bnb4(run: Run, out: Path, log: Log) -> list[Path]:
    """The merged model as NF4 with double quantization (bitsandbytes), saved pre-quantized."""
    return _export_bnb(run, out, log, bits=4)


def export_bnb8(run: Run, out: Path, log: Log) -> list[Path]:
    """The merged model as LLM.int8 (bitsandbytes), saved pre-quantized."""
    return _export_bnb(run, out, log, bits=8)


def _export_bnb(run: Run, out: Path, log: Log, bits: int) -> list[Path]:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.models.load import default_device

    check_mergeable(run, f"bnb{bits}")
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=out) as tmp:
        dtype = saved_dtype(run)
        model, tokenizer = load_merged(run, log)
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        del model
        if bits == 4:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=dtype)
        else:
            quant = BitsAndBytesConfig(load_in_8bit=True)
        device = default_device()
        log(f"bnb{bits}: quantizing with bitsandbytes on {device} "
            f"({'NF4, double quantization' if bits == 4 else 'LLM.int8'})")
        qmodel = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, device_map={"": device}, dtype=dtype,
            use_safetensors=True)
        log(f"bnb{bits}: saving the quantized model with its quantization_config")
        qmodel.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    del qmodel
    (out / "README.md").write_text(model_card(run, f"bnb{bits}"), encoding="utf-8")
    return files_in(out)

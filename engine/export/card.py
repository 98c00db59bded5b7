"""The README.md card of an export: what it was trained from and on, and how to load it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.export.run import Run


USAGE = {
    "adapter": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "from peft import PeftModel\n\n"
                "base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n"
                "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n"),
    "merged": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
               "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n"
               "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n\n"
               "vLLM: `vllm serve path/to/this/folder`\n"),
    "bnb": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "# needs bitsandbytes; loads quantized (quantization_config is in config.json)\n"
            "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\", "
            "device_map=\"auto\")\n```\n"),
    "gguf": ("```bash\nllama-cli -m {gguf_name} -cnv\nollama create my-model -f Modelfile && "
             "ollama run my-model\n```\n"),
}


#: the method settings that matter for each method (shown on the card)
METHOD_KEYS = {"lora": ("r", "alpha", "dropout", "target_modules"),
               "dora": ("r", "alpha", "dropout", "target_modules"),
               "qlora": ("r", "alpha", "dropout", "target_modules", "quant_bits"),
               "ia3": ("target_modules",),
               "prompt_tuning": ("num_virtual_tokens", "prompt_init_text"),
               "prefix_tuning": ("num_virtual_tokens",)}


def model_card(run: Run, fmt: str, gguf_name: str | None = None) -> str:
    """README.md for an export: what it was trained from and on, and how to load it."""
    from engine.models.demo import is_demo_model

    cfg = run.config
    method, train, data = cfg.get("method") or {}, cfg.get("train") or {}, cfg.get("data") or {}
    lines = [f"# Fine-tuned {Path(run.base).name} ({fmt})", "",
             "Exported by ftstudio.", ""]
    if Path(run.base).is_dir() and is_demo_model(run.base):
        lines += ["**Demo model**: the base is the ftstudio demo model (random weights, offline); "
                  "it knows only what this run taught it.", ""]
    lines += ["| | |", "| --- | --- |", f"| base model | `{run.base}` |",
              f"| method | {run.method} |"]
    hyper = {k: method[k] for k in METHOD_KEYS.get(run.method, ()) if k in method}
    hyper.update({k: train.get(k) for k in ("lr", "epochs", "max_steps", "batch_size",
                                            "grad_accum", "scheduler", "seed") if k in train})
    if "max_seq_len" in data:
        hyper["max_seq_len"] = data["max_seq_len"]
    for key, value in hyper.items():
        lines.append(f"| {key} | {value} |")
    for name, digest in _data_hashes(run.record).items():
        lines.append(f"| data `{name}` sha256 | `{digest}` |")
    metrics = run.record.get("final_metrics") or run.record.get("metrics") or {}
    for key, value in metrics.items():
        if key in ("step", "lr", "grad_norm", "tokens_per_s"):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else value
        lines.append(f"| final {key} | {shown} |")
    key = "bnb" if fmt.startswith("bnb") else "gguf" if fmt.startswith("gguf") else fmt
    if key == "adapter" and run.method == "full":
        key = "merged"   # full fine-tuning's "adapter" is the whole model
    lines += ["", "## Use", "", USAGE[key].format(base=run.base, gguf_name=gguf_name)]
    if run.method == "qlora" and fmt != "adapter":
        lines += ["Trained as QLoRA: the adapter was merged into the full-precision base, not "
                  "the 4/8-bit base it was trained over.", ""]
    return "\n".join(lines)


def _data_hashes(record: dict[str, Any]) -> dict[str, str]:
    """{data file: sha256} from run.json wherever the trainer keeps them: every 64-hex string
    outside "config", named by the nearest key that is not itself about sha256."""
    found: dict[str, str] = {}

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict) and len(path) < 4:
            for k, v in node.items():
                visit(v, path + (str(k),))
        elif isinstance(node, str) and re.fullmatch(r"[0-9a-f]{64}", node):
            names = [p for p in path if "sha" not in p.lower() and "hash" not in p.lower()]
            found[Path(names[-1]).name if names else "train"] = node

    visit({k: v for k, v in record.items() if k != "config"}, ())
    return found

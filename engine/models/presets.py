"""Model shapes known without a download: the presets (small to 8B instruction models) and
read_config(), which finds a model's config.json in a local folder, the hub cache or a preset.

Use from Python:
    from engine.models.presets import PRESETS, read_config
    read_config("Qwen/Qwen2.5-0.5B-Instruct")["hidden_size"]     # 896, offline
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _llama(h, i, layers, heads, kv, vocab, tied, head_dim=None, model_type="llama", **extra):
    cfg = dict(model_type=model_type, hidden_size=h, intermediate_size=i,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
               vocab_size=vocab, tie_word_embeddings=tied, **{"hidden_act": "silu", **extra})
    if head_dim:
        cfg["head_dim"] = head_dim
    return cfg


@dataclass(frozen=True)
class Preset:
    name: str          # hub id
    label: str
    config: dict       # the shape numbers of its config.json
    note: str = ""


#: small to 8B instruction models, smallest first
PRESETS: tuple[Preset, ...] = (
    Preset("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2 135M Instruct",
           _llama(576, 1536, 30, 9, 3, 49152, True)),
    Preset("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M Instruct",
           _llama(960, 2560, 32, 15, 5, 49152, True)),
    Preset("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct",
           _llama(896, 4864, 24, 14, 2, 151936, True, model_type="qwen2", attention_bias=True)),
    Preset("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct",
           _llama(2048, 8192, 16, 32, 8, 128256, True), "gated: accept the licence on the hub"),
    Preset("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct",
           _llama(1536, 8960, 28, 12, 2, 151936, True, model_type="qwen2", attention_bias=True)),
    Preset("google/gemma-2-2b-it", "Gemma 2 2B it",
           _llama(2304, 9216, 26, 8, 4, 256000, True, head_dim=256, model_type="gemma2",
                  hidden_act="gelu_pytorch_tanh"), "gated: accept the licence on the hub"),
    Preset("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct",
           _llama(3072, 8192, 28, 24, 8, 128256, True), "gated: accept the licence on the hub"),
    Preset("Qwen/Qwen2.5-3B-Instruct", "Qwen2.5 3B Instruct",
           _llama(2048, 11008, 36, 16, 2, 151936, True, model_type="qwen2", attention_bias=True)),
    Preset("microsoft/Phi-3.5-mini-instruct", "Phi 3.5 mini instruct (3.8B)",
           _llama(3072, 8192, 32, 32, 32, 32064, False, model_type="phi3")),
    Preset("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct",
           _llama(3584, 18944, 28, 28, 4, 152064, False, model_type="qwen2", attention_bias=True)),
    Preset("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3",
           _llama(4096, 14336, 32, 32, 8, 32768, False, model_type="mistral")),
    Preset("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct",
           _llama(4096, 14336, 32, 32, 8, 128256, False), "gated: accept the licence on the hub"),
)
PRESETS_BY_NAME = {p.name: p for p in PRESETS}


def read_config(name: str) -> dict[str, Any] | None:
    """config.json of a local folder, the hub cache, or a preset's shape; None if unknown."""
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return read_json(path / "config.json")
    cached = hub_cached_file(name, "config.json")
    if cached:
        return read_json(Path(cached))
    preset = PRESETS_BY_NAME.get(name)
    return dict(preset.config) if preset else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file; None when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hub_cached_file(repo_id: str, filename: str) -> str | None:
    """The hub cache's copy of a repo's file, or None (nothing is downloaded)."""
    if repo_id.count("/") != 1 or Path(repo_id).expanduser().exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - invalid repo ids raise validation errors
        return None
    return found if isinstance(found, str) else None

"""The base models the studio offers: curated presets, local folders and the offline demo model.

Use from Python:
    from engine.catalog import list_models, describe
    for m in list_models():                       # presets, FTSTUDIO_HOME/models/*, the demo
        print(m.name, m.label)
    info = describe("Qwen/Qwen2.5-0.5B-Instruct")  # architecture, parameters, offline or not

Nothing here downloads or loads weights. Presets carry the shape numbers of their config.json so
parameter counts and memory estimates (engine.estimate) work without a network; local folders are
read from their config.json and their safetensors headers (exact parameter counts, no tensors).
Folders that engine.gguf_import made (an ftstudio-source.json beside config.json) are labelled
"Imported from GGUF" with their quantization type.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.demo import DEMO_LABEL


def studio_home() -> Path:
    """FTSTUDIO_HOME, default ./studio-data (engine.settings)."""
    from engine.settings import home

    return home()


def models_dir() -> Path:
    return studio_home() / "models"


def demo_dir() -> Path:
    return models_dir() / "demo"


#: written by engine.gguf_import into each model folder it makes: where the weights came from
SOURCE_FILE = "ftstudio-source.json"


def imported_from(folder: str | Path) -> dict[str, Any] | None:
    """The ftstudio-source.json of a folder imported from a GGUF file, or None."""
    data = _read_json(Path(folder) / SOURCE_FILE)
    return data if data and data.get("kind") == "gguf" else None


def _gguf_tag(source: dict[str, Any]) -> str:
    quant = source.get("main_quantization") or ", ".join(source.get("quantization") or []) or "?"
    return f"{quant} GGUF {source.get('file', '')}".strip()


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
_PRESETS = {p.name: p for p in PRESETS}


@dataclass
class ModelInfo:
    """What the studio shows about one base model."""

    name: str                       # what goes into model.name
    label: str
    source: str                     # demo | local | preset | hub
    architecture: str = "unknown"   # e.g. LlamaForCausalLM
    model_type: str = ""
    params: int | None = None       # total parameters (exact for local folders)
    offline: bool = False           # loadable without a network (local folder or hub cache)
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"


def human_count(n: int | None) -> str:
    """1234567 -> '1.2M'."""
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def read_config(name: str) -> dict[str, Any] | None:
    """config.json of a local folder, the hub cache, or a preset's shape; None if unknown."""
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return _read_json(path / "config.json")
    cached = hub_cached_file(name, "config.json")
    if cached:
        return _read_json(Path(cached))
    preset = _PRESETS.get(name)
    return dict(preset.config) if preset else None


def safetensors_params(folder: str | Path) -> int | None:
    """Exact parameter count from the safetensors headers (no tensor is read)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for dim in meta.get("shape", []):
                n *= dim
            total += n
    return total


def describe(name: str) -> ModelInfo:
    """Architecture, parameter count and offline availability of `name` (never downloads)."""
    from engine.estimate import count_params

    name = str(name).strip()
    path = Path(name).expanduser()
    if path.is_dir():
        cfg = read_config(name)
        demo = bool(cfg and "ftstudio_demo" in cfg)
        info = ModelInfo(name, DEMO_LABEL if demo else path.name, "demo" if demo else "local",
                         offline=True, config=cfg)
        info.params = safetensors_params(path)
        gguf = None if demo else imported_from(path)
        if gguf:
            info.label = f"{path.name} (imported from GGUF)"
            info.notes.append(f"dequantized from the {_gguf_tag(gguf)}: an approximation of "
                              "the original model's weights (its README.md says more)")
        if info.params is None:
            info.notes.append("no *.safetensors weights in this folder; only safetensors load")
        if cfg is None:
            info.notes.append("no config.json in this folder; it is not a transformers model")
        if demo:
            info.notes.append("random weights: its answers mean nothing until it is fine-tuned")
    else:
        preset = _PRESETS.get(name)
        cfg = read_config(name)
        offline = hub_cached_file(name, "config.json") is not None
        info = ModelInfo(name, preset.label if preset else name, "preset" if preset else "hub",
                         offline=offline, config=cfg)
        if preset and preset.note:
            info.notes.append(preset.note)
        if not offline:
            info.notes.append("not in the local hub cache: it downloads on first use, which "
                              "needs a network (or copy the folder under FTSTUDIO_HOME/models)")
        if cfg is None:
            info.notes.append("shape unknown offline: no parameter count or memory estimate")
    if info.config:
        info.model_type = str(info.config.get("model_type", ""))
        archs = info.config.get("architectures") or []
        info.architecture = archs[0] if archs else (info.model_type or "unknown")
        if info.params is None:
            info.params = count_params(info.config).total
    return info


def tokenizer_if_available(name: str):
    """The model's tokenizer when it loads without a network (a local folder, or a hub id in
    the local cache), else None. Never waits on the hub: the studio calls it on every change."""
    from engine.model import load_tokenizer

    if Path(name).expanduser().is_dir():
        return load_tokenizer(name)
    if hub_cached_file(name, "tokenizer_config.json") is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def local_models() -> list[Path]:
    """Folders under FTSTUDIO_HOME/models holding a config.json (one level, or owner/name).
    Hidden folders (a GGUF import in progress) are left out."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if (child / "config.json").is_file():
            found.append(child)
        elif child.is_dir():
            found += [g for g in sorted(child.iterdir()) if (g / "config.json").is_file()]
    return found


@dataclass(frozen=True)
class Choice:
    name: str
    label: str
    source: str


def list_models() -> list[Choice]:
    """The picker's entries: the demo model first, other local folders, then the presets."""
    out: list[Choice] = []
    demo = demo_dir()
    for folder in local_models():
        cfg = _read_json(folder / "config.json") or {}
        if "ftstudio_demo" in cfg:
            tag = "demo" if folder.resolve() == demo.resolve() else "local"
            out.append(Choice(str(folder), f"Demo model · {folder.name} · offline · "
                              f"{human_count(safetensors_params(folder))} params", tag))
        elif (gguf := imported_from(folder)) is not None:
            out.append(Choice(str(folder), f"Imported from GGUF · {folder.name} · "
                              f"{gguf.get('main_quantization') or '?'} · offline · "
                              f"{human_count(safetensors_params(folder))} params", "local"))
        else:
            out.append(Choice(str(folder), f"Local · {folder.name} · offline · "
                              f"{human_count(safetensors_params(folder))} params", "local"))
    out.sort(key=lambda c: c.source != "demo")
    if not any(c.source == "demo" for c in out):
        out.insert(0, Choice(str(demo), "Demo model (built on first start) · offline", "demo"))
    from engine.estimate import count_params, human_bytes

    for p in PRESETS:
        cached = " · offline" if hub_cached_file(p.name, "config.json") else ""
        lora, qlora = needs(p.name, "lora"), needs(p.name, "qlora")
        out.append(Choice(p.name, f"{p.label} · {human_count(count_params(p.config).total)} · "
                                  f"LoRA ≈{human_bytes(lora)}, QLoRA ≈{human_bytes(qlora)}"
                                  f"{cached}", "preset"))
    return out


#: what the picker's memory figures assume
NEEDS_ASSUME = "batch 4 x 512 tokens, bf16, gradient checkpointing"


def needs(name: str, kind: str = "lora") -> int:
    """Peak GPU memory of `kind` on `name` with the NEEDS_ASSUME settings."""
    from engine.config import TrainConfig
    from engine.estimate import Device

    cfg = TrainConfig()
    cfg.model.name, cfg.method.kind = name, kind
    cfg.train.gradient_checkpointing = True
    est = estimate_for(cfg, Device("cuda", "reference GPU", 0, 0))
    return est.peak_bytes if est else 0


def estimate_for(cfg, device=None):
    """engine.estimate.estimate for cfg.model.name, its shape read here (a local folder's
    config.json, a cached hub config, or a preset's); None when the shape is unknown."""
    from engine.estimate import estimate

    return estimate(cfg, read_config(cfg.model.name), device)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hub_cached_file(repo_id: str, filename: str) -> str | None:
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

"""The base models the studio offers: curated presets, local folders and the offline demo model.

Use from Python:
    from engine.models.catalog import list_models, describe
    for m in list_models():                       # presets, FTSTUDIO_HOME/models/*, the demo
        print(m.name, m.label)
    info = describe("Qwen/Qwen2.5-0.5B-Instruct")  # architecture, parameters, offline or not

Nothing here downloads or loads weights. Presets carry the shape numbers of their config.json so
parameter counts and memory estimates (engine.models.estimate) work without a network; local folders are
read from their config.json and their safetensors headers (exact parameter counts, no tensors).
Folders that engine.models.gguf_import made (an ftstudio-source.json beside config.json) are labelled
"Imported from GGUF" with their quantization type.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.demo import DEMO_LABEL
from engine.models.presets import PRESETS, PRESETS_BY_NAME, hub_cached_file, read_config, read_json


def studio_home() -> Path:
    """FTSTUDIO_HOME, default ./studio-data (engine.settings)."""
    from engine.settings import home

    return home()


def models_dir() -> Path:
    return studio_home() / "models"


def demo_dir() -> Path:
    return models_dir() / "demo"


#: written by engine.models.gguf_import into each model folder it makes: where the weights came from
SOURCE_FILE = "ftstudio-source.json"


def imported_from(folder: str | Path) -> dict[str, Any] | None:
    """The ftstudio-source.json of a folder imported from a GGUF file, or None."""
    data = read_json(Path(folder) / SOURCE_FILE)
    return data if data and data.get("kind") == "gguf" else None


def _gguf_tag(source: dict[str, Any]) -> str:
    quant = source.get("main_quantization") or ", ".join(source.get("quantization") or []) or "?"
    return f"{quant} GGUF {source.get('file', '')}".strip()


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
    from engine.models.estimate import count_params

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
        preset = PRESETS_BY_NAME.get(name)
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
    from engine.models.load import load_tokenizer

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
        cfg = read_json(folder / "config.json") or {}
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
    from engine.models.estimate import count_params, human_bytes

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
    from engine.models.estimate import Device, estimate_for

    cfg = TrainConfig()
    cfg.model.name, cfg.method.kind = name, kind
    cfg.train.gradient_checkpointing = True
    est = estimate_for(cfg, Device("cuda", "reference GPU", 0, 0))
    return est.peak_bytes if est else 0

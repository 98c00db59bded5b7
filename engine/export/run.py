"""A finished run folder as the exporters read it (adapter/ and run.json), what an export
wrote, and the rules every format shares. engine.export re-exports these names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config import VIRTUAL_TOKEN_METHODS

Log = Callable[[str], None]


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what can be exported instead."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    bytes: int


@dataclass
class ExportResult:
    """What one export wrote: every file with its size in bytes."""

    fmt: str
    out_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    verification: dict[str, Any] | None = None   # engine/export/verify.py's record

    @property
    def total_bytes(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.fmt, "out_dir": str(self.out_dir), "total_bytes": self.total_bytes,
                "artifacts": [{"path": str(a.path), "bytes": a.bytes} for a in self.artifacts],
                "verification": self.verification}


@dataclass
class Run:
    """A finished run folder, as the export functions need it."""

    run_dir: Path
    adapter_dir: Path
    base: str                      # base model: hub id or local folder
    method: str                    # TrainConfig method.kind
    record: dict[str, Any]         # run.json ({} when the folder has none)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config") or {}

    @property
    def model_options(self) -> dict[str, Any]:
        m = self.config.get("model") or {}
        opts = {"trust_remote_code": bool(m.get("trust_remote_code", False))}
        if m.get("revision") and not Path(self.base).is_dir():
            opts["revision"] = m["revision"]
        return opts


def read_run(run_dir: str | Path) -> Run:
    """The run in run_dir: its adapter folder, base model and method (from run.json, else from
    the adapter's own files)."""
    root = Path(run_dir)
    adapter = root / "adapter"
    if not adapter.is_dir():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise ExportError(f"{root} is not a finished run folder: it has no adapter/ "
                          f"(found: {', '.join(found) or 'nothing'}). Export a run after training "
                          "has finished, or pass the folder that holds adapter/ and run.json.")
    record: dict[str, Any] = {}
    if (root / "run.json").is_file():
        record = json.loads((root / "run.json").read_text(encoding="utf-8"))
    cfg = record.get("config") or {}
    peft_cfg = read_json(adapter / "adapter_config.json")
    method = (cfg.get("method") or {}).get("kind") or _method_from_adapter(peft_cfg, adapter)
    base = (cfg.get("model") or {}).get("name") or peft_cfg.get("base_model_name_or_path")
    if method == "full":
        base = base or str(adapter)
    if not base:
        raise ExportError(f"{root}: cannot tell the base model (run.json has no config.model.name "
                          "and adapter_config.json no base_model_name_or_path)")
    return Run(root, adapter, str(base), method, record)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _method_from_adapter(peft_cfg: dict[str, Any], adapter: Path) -> str:
    kind = str(peft_cfg.get("peft_type", "")).lower()
    if kind == "lora":
        return "dora" if peft_cfg.get("use_dora") else "lora"
    if kind in ("prompt_tuning", "prefix_tuning", "ia3"):
        return kind
    if not peft_cfg and (adapter / "config.json").is_file():
        return "full"
    raise ExportError(f"{adapter}: unknown adapter type {kind or '(none)'}")


def check_mergeable(run: Run, fmt: str) -> None:
    if run.method in VIRTUAL_TOKEN_METHODS:
        raise ExportError(
            f"{run.method} cannot be exported as {fmt}: it learns virtual tokens that are fed in "
            "front of every input, not a change to the model's weights, so there is nothing to "
            "merge into the base. Export the adapter instead (--format adapter) and load it over "
            f"the base with peft: PeftModel.from_pretrained(base, adapter_folder).")


def model_type(run: Run) -> str | None:
    """The model_type from the base's (or full run's) config.json, without loading weights."""
    folder = run.adapter_dir if run.method == "full" else Path(run.base)
    if (folder / "config.json").is_file():
        return read_json(folder / "config.json").get("model_type")
    return None   # a hub id: checked again once the model is loaded


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def slug(run: Run) -> str:
    name = Path(run.base.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + "-ft"

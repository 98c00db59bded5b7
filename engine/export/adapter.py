"""The adapter format: the PEFT adapter folder as trained (or, after full fine-tuning, the model
folder), a README card inside it, and a zip of the folder."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from engine.export.card import model_card
from engine.export.run import Log, Run, files_in, slug


def export_adapter(run: Run, out: Path, log: Log) -> list[Path]:
    """The adapter folder as trained, a README card inside it, and a zip of the folder."""
    folder = out / "adapter"
    log(f"adapter: copying {run.adapter_dir}")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(run.adapter_dir, folder)
    card = folder / "README.md"
    card.write_text(model_card(run, "adapter"), encoding="utf-8")
    zip_path = out / f"{slug(run)}-adapter.zip"
    log(f"adapter: zipping into {zip_path.name}")
    part = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():   # weights barely compress: store them, deflate the rest
                kind = zipfile.ZIP_STORED if path.suffix == ".safetensors" else None
                zf.write(path, path.relative_to(folder).as_posix(), compress_type=kind)
    part.replace(zip_path)
    return files_in(folder) + [zip_path]

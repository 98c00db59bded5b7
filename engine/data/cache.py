"""The tokenized-data cache: under `cache_dir` (default $FTSTUDIO_HOME/cache), keyed by the
sha256 of the file, the tokenizer (name, vocab, chat template), the data settings that change
tokens and the data's kind, so a second run loads instead of tokenizing again. Entries are
written to a temporary folder and renamed, so concurrent jobs never read half a cache.

The kind (messages, completion, text, preference, kto: it decides the dataset's columns) is in
the key as data.format's kind when the format is set. With data.format auto it is the detected
format's, a function of what the key already holds: the file's sha256, the format registry
(every format's kind and identifying fields are in the key) and the detection rule (its
changes bump CACHE_VERSION). A loaded entry whose columns are not its kind's is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import DataConfig
from engine.data.formats import FORMATS
from engine.data.readers import file_sha256
from engine.data.report import DataReport
from engine.data.template import tokenizer_fingerprint

if TYPE_CHECKING:
    import datasets

#: bump when the tokenized output changes for the same inputs, to invalidate old caches
#: (3: preference and kto data, and detection's tie-break by the number of fields)
CACHE_VERSION = 3


def default_cache_dir() -> Path:
    from engine.settings import home

    return home() / "cache"


def _settings(d: DataConfig) -> dict[str, Any]:
    """The data settings that change the tokenized output (the rest do not touch the cache)."""
    return {"format": d.format, "max_seq_len": d.max_seq_len, "train_on_prompt": d.train_on_prompt,
            "system_prompt": d.system_prompt, "dedupe": d.dedupe, "min_tokens": d.min_tokens,
            "max_tokens": d.max_tokens, "on_bad_record": d.on_bad_record,
            **({"columns": d.columns} if d.columns else {})}   # older cache keys stay valid


def _kind(d: DataConfig) -> dict[str, Any]:
    """The data's kind where data.format names it, and what decides it under auto detection."""
    fmt = FORMATS.get(d.format)
    return {"kind": fmt.kind if fmt else "detected",
            "formats": {name: [f.kind, list(f.fields)] for name, f in FORMATS.items()}}


def cache_key(path: str | os.PathLike, tokenizer, d: DataConfig) -> str:
    material = {"version": CACHE_VERSION, "data_sha256": file_sha256(path),
                "tokenizer": tokenizer_fingerprint(tokenizer), "settings": _settings(d),
                "kind": _kind(d)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def save_cache(folder: Path, dataset: datasets.Dataset, report: DataReport,
               log: Callable[[str], None], show_progress: bool = False) -> None:
    """Write to a temporary folder and rename it, so concurrent jobs never read half a cache."""
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        with progress_bars(show_progress):
            dataset.flatten_indices().save_to_disk(str(tmp / "dataset"))
        (tmp / "report.json").write_text(json.dumps(report.to_dict()), "utf-8")
        os.replace(tmp, folder)
    except OSError as exc:
        if not (folder / "report.json").is_file():
            log(f"data: could not write the cache at {folder} ({exc}); continuing without it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def progress_bars(show: bool):
    """datasets' progress bars only for inputs large enough to be worth watching."""
    import datasets

    hide = not show and not datasets.are_progress_bars_disabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()

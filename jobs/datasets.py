"""Uploaded datasets: the files people upload to the studio, checked and kept once by content,
and who uploaded which (studio.db datasets table).

Files live under FTSTUDIO_HOME/datasets/<sha256[:16]>/<name> (store_upload writes them after
engine.data has read them); one row per (owner, file), so each person lists and trains on their
own uploads (jobs.access checks data paths against it).

Use from Python:
    from jobs import datasets
    stored = datasets.store_upload("/tmp/upload/mine.jsonl", owner="alice")
    datasets.list_datasets(actor)    # an actor's uploads; admins and local mode: all
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from jobs import settings
from engine.config import DATA_SUFFIXES
from jobs import store

DEFAULT_MAX_UPLOAD_MB = 200


def max_upload_bytes() -> int:
    """FTSTUDIO_MAX_UPLOAD_MB (default 200) in bytes: the largest upload the studio accepts."""
    return int(settings.max_upload_mb(DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024)


def store_upload(path: str | os.PathLike, owner: str = "local",
                 columns: dict[str, str] | None = None) -> str:
    """Check an uploaded file, keep it under FTSTUDIO_HOME/datasets/<sha256[:16]>/<name> and
    record it as `owner`'s upload; returns the stored file's absolute path. Everything is checked first (type, FTSTUDIO_MAX_UPLOAD_MB,
    that engine.data can read it and finds usable records, its columns renamed by `columns`,
    data.columns): a refused file raises DataError, named as uploaded, and leaves nothing
    behind (no file under datasets/, no row); when no format fits its columns, the error is a
    FormatNotDetected whose `.columns` lists them, for a column mapping."""
    from engine.data import DataError, check_file
    from jobs.apart import run_apart

    src = Path(path)
    name = _safe_name(src.name)
    if src.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"{name}: unsupported file type {src.suffix or '(none)'}; upload "
                        f"{', '.join(DATA_SUFFIXES)}")
    size, limit = src.stat().st_size, max_upload_bytes()
    if size > limit:
        raise DataError(f"{name} is {size / 2**20:.1f} MB, over the upload limit of "
                        f"{limit / 2**20:.0f} MB (FTSTUDIO_MAX_UPLOAD_MB); split it, or ask "
                        "the admin to raise the limit")
    try:   # parsed in jobs.apart's child: a big file never holds up the server's requests
        info = run_apart(check_file, str(src), columns)
    except DataError as exc:  # name the file as the person knows it, not the temp path
        renamed = type(exc)(str(exc).replace(str(src), name))
        renamed.columns = getattr(exc, "columns", None)
        raise renamed from None
    except (RecursionError, MemoryError) as exc:
        raise DataError(f"{name} cannot be read ({type(exc).__name__}); check that it is a "
                        "dataset file") from None
    with open(src, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    dest = store.home() / "datasets" / digest[:16] / name
    if not dest.is_file():
        _copy_in(src, dest)
    record(owner, dest, sha256=digest, size=size, records=info["records"])
    return str(dest.resolve())


def _copy_in(src: Path, dest: Path) -> None:
    """Copy src to dest through a temporary name, so dest is whole or absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        try:
            dest.parent.rmdir()          # only when empty: another upload may be there
        except OSError:
            pass
        raise


def _safe_name(name: str) -> str:
    """A file name that is safe to store: letters, digits, '.', '_', '-'; no leading dot."""
    stem, _, suffix = name.rpartition(".") if "." in name else (name, "", "")
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")[:100] or "data"
    return f"{clean}.{suffix.lower()}" if suffix else clean


def record(owner: str, path: str | Path, *, sha256: str, size: int, records: int
           ) -> dict[str, Any]:
    """The row of `owner`'s upload of the stored file at `path` (added once)."""
    path = str(Path(path).resolve())
    with store.connect() as db, store.transaction(db):
        db.execute("INSERT OR IGNORE INTO datasets (owner, name, path, sha256, size, records, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [owner, Path(path).name, path, sha256, int(size), int(records), store.now()])
        return dict(next(db.query("SELECT * FROM datasets WHERE owner = ? AND path = ?",
                                  [owner, path])))


def list_datasets(actor: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Newest first: an actor's own uploads; every upload for admins and local mode (None)."""
    with store.connect() as db:
        if actor is None or actor.get("is_admin"):
            return list(db.query("SELECT * FROM datasets ORDER BY created_at DESC, id DESC"))
        return list(db.query("SELECT * FROM datasets WHERE owner = ? "
                             "ORDER BY created_at DESC, id DESC", [actor["username"]]))


def owned_paths(owner: str) -> set[str]:
    with store.connect() as db:
        return {r["path"] for r in db.query("SELECT path FROM datasets WHERE owner = ?",
                                            [owner])}

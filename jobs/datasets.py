"""Uploaded datasets: who uploaded which stored file (studio.db datasets table).

Files live under FTSTUDIO_HOME/datasets/<sha256[:16]>/<name> (app.studio.handlers.store_upload
writes them after engine.data has read them); this records one row per (owner, file), so each
person lists and trains on their own uploads (jobs.access checks data paths against it).

Use from Python:
    from jobs import datasets
    datasets.record("alice", path, sha256=digest, size=n, records=k)
    datasets.list_datasets(actor)    # an actor's uploads; admins and local mode: all
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs import store


def record(owner: str, path: str | Path, *, sha256: str, size: int, records: int
           ) -> dict[str, Any]:
    path = str(Path(path).resolve())
    with store.connect() as db, store._tx(db):
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

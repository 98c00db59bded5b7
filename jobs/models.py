"""Base models under FTSTUDIO_HOME/models, added the same way from both front ends: the rule for
importing a GGUF file (who may, which name it gets, the same file twice) lives here, and
`ftstudio models import` (app/cli_models.py) and the studio's upload (app/studio/handlers.py)
both call it; engine.models.gguf_import does the dequantizing.

Use from Python:
    from jobs.models import import_model
    done = import_model("SmolLM2-135M-Instruct.Q4_1.gguf", actor=user)   # user: None locally
    done.folder, done.name, done.reused        # reused: the same file was imported before

The rule:
- FTSTUDIO_HOME/models is shared by everyone on the server, so with an actor (logins on) only an
  admin may import; actor None (local mode, the CLI on the server) may.
- The same file (same sha256) already imported under the name it would get is selected again,
  not imported twice.
- Without a name the folder is the file's stem (engine.models.gguf_import.default_name); when a
  different model holds it, the next free of NAME-2, NAME-3 ... is used.
- With a name, a different model holding it is an error that says to pick another name or
  replace it; force imports over whatever holds the name (given or default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jobs.store import JobError

ADMIN_ONLY = ("Only an admin can import a model: imported models are shared by everyone on "
              "this server. Ask an admin, or run `ftstudio models import FILE.gguf` on the "
              "server.")


class ImportRefused(JobError):
    """The actor may not import models (not an admin while logins are on)."""


@dataclass
class ModelImport:
    """What import_model did: the model folder, its name, and whether the same file had been
    imported before (then `imported` is None: nothing was written)."""

    folder: Path
    name: str
    imported: Any = None        # engine.models.gguf_import.ImportedModel of a new import

    @property
    def reused(self) -> bool:
        return self.imported is None


def import_model(path: str | Path, name: str | None = None, *, force: bool = False,
                 actor: dict[str, Any] | None = None,
                 log: Callable[[str], None] = lambda line: None) -> ModelImport:
    """Import the GGUF file at `path` under FTSTUDIO_HOME/models by the rule above. Raises
    ImportRefused (not an admin), GGUFImportError (not a GGUF file, a bad or taken name: the
    message says what to do), OSError (the file cannot be read)."""
    from engine.models.catalog import imported_from, models_dir
    from engine.models.gguf_import import (GGUFImportError, check_name, default_name,
                                           import_gguf, sha256_file)

    if actor is not None and not actor.get("is_admin"):
        raise ImportRefused(ADMIN_ONLY)
    src = Path(path).expanduser()
    if src.suffix.lower() != ".gguf":
        raise GGUFImportError(f"{src.name} is not a .gguf file; pick the .gguf file of a "
                              "llama.cpp or Ollama model")
    if not src.is_file():
        raise GGUFImportError(f"{src}: no such file")
    root = models_dir()
    digest: list[str] = []

    def same_file(folder: Path) -> bool:
        before = imported_from(folder)
        if not before or not (folder / "config.json").is_file():
            return False
        if not digest:
            digest.append(sha256_file(src))
        return before.get("sha256") == digest[0]

    if force:                   # replace whatever holds the name
        name = check_name(name) if name else default_name(src)
    elif name:
        name = check_name(name)
        if (root / name).exists() and same_file(root / name):
            return ModelImport(root / name, name)
        # a different model holds it: import_gguf says to pick another name or use --force
    else:
        base, n = default_name(src), 2
        name = base
        while (root / name).exists():
            if same_file(root / name):
                return ModelImport(root / name, name)
            name, n = f"{base}-{n}", n + 1
    info = import_gguf(src, name, overwrite=force, log=log)
    return ModelImport(info.folder, info.name, info)

"""jobs/models.py: the one GGUF import rule both front ends call (who may, names, the same file)."""

from __future__ import annotations

import pytest

from engine.models.gguf_import import GGUFImportError
from jobs.models import ImportRefused, import_model

ALICE = {"username": "alice", "is_admin": False}
ROOT = {"username": "root", "is_admin": True}


def test_only_admins_import_when_logins_are_on(tiny_gguf, home):
    with pytest.raises(ImportRefused, match="Only an admin"):
        import_model(tiny_gguf, actor=ALICE)
    assert not (home / "models").exists()
    done = import_model(tiny_gguf, actor=ROOT)
    assert not done.reused and done.folder == home / "models" / "tiny-model-q8_0"
    assert (done.folder / "model.safetensors").is_file()


def test_the_same_file_is_reused_and_a_taken_name_moves_on(tiny_gguf, home, tmp_path):
    import shutil

    first = import_model(tiny_gguf)
    again = import_model(tiny_gguf, actor=ROOT)
    assert again.reused and again.folder == first.folder and again.imported is None
    # another model already holds the stem: the import takes NAME-2
    (home / "models" / "tiny-model-q8_0-2").mkdir()
    copy = tmp_path / "copy" / tiny_gguf.name
    copy.parent.mkdir()
    shutil.copyfile(tiny_gguf, copy)
    (first.folder / "config.json").unlink()      # no longer a model: not reused
    third = import_model(copy)
    assert third.name == "tiny-model-q8_0-3" and not third.reused


def test_a_named_import_refuses_a_taken_name_unless_forced(tiny_gguf, home):
    (home / "models" / "mine").mkdir(parents=True)
    with pytest.raises(GGUFImportError, match="already exists.*--force"):
        import_model(tiny_gguf, "mine")
    assert not import_model(tiny_gguf, "mine", force=True).reused
    assert import_model(tiny_gguf, "mine").reused
    with pytest.raises(GGUFImportError, match="not a .gguf file"):
        import_model(home / "notes.txt")

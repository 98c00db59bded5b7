"""The Train tab's "Import a GGUF file" control: handlers.import_gguf_upload and its wiring."""

from __future__ import annotations

import shutil

from app.studio import handlers

ALICE = {"username": "alice", "is_admin": False}
ROOT = {"username": "root", "is_admin": True}


def _upload(tiny_gguf, tmp_path, name=None):
    """A copy where Gradio would put the upload, under the name the person's file had."""
    dest = tmp_path / "gradio" / (name or tiny_gguf.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_gguf, dest)
    return str(dest)


def test_non_admins_are_refused_when_logins_are_on(tiny_gguf, tmp_path, home):
    name, note = handlers.import_gguf_upload(_upload(tiny_gguf, tmp_path), ALICE)
    assert name is None and "Only an admin" in note and "ftstudio models import" in note
    assert not (home / "models").exists()


def test_import_selects_the_model_and_lists_it(tiny_gguf, tmp_path, home):
    for actor in (None, ROOT):   # local mode (no logins), then an admin
        name, note = handlers.import_gguf_upload(_upload(tiny_gguf, tmp_path), actor)
        assert name == str(home / "models" / "tiny-model-q8_0")
        assert "tiny-model-q8_0" in note and "Q8_0" in note
    assert "imported before" in note          # the same file again: selected, not copied
    choices = dict((value, label) for label, value in handlers.model_choices())
    assert choices[name].startswith("Imported from GGUF · tiny-model-q8_0")
    assert "imported from GGUF" in handlers.model_card(name)


def test_a_different_file_with_the_same_name_gets_a_new_name(tiny_gguf, tmp_path, home):
    from engine.models.catalog import SOURCE_FILE

    first, _ = handlers.import_gguf_upload(_upload(tiny_gguf, tmp_path), None)
    record = (home / "models" / "tiny-model-q8_0" / SOURCE_FILE)
    record.write_text(record.read_text().replace('"sha256": "', '"sha256": "0'))
    second, note = handlers.import_gguf_upload(_upload(tiny_gguf, tmp_path), None)
    assert second == str(home / "models" / "tiny-model-q8_0-2") and "Imported" in note


def test_bad_uploads_say_why(tmp_path, home):
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    name, note = handlers.import_gguf_upload(str(text), None)
    assert name is None and "not a GGUF file" in note and str(tmp_path) not in note
    name, note = handlers.import_gguf_upload(str(tmp_path / "x.safetensors"), None)
    assert name is None and "not a .gguf file" in note
    assert handlers.import_gguf_upload(None, None) == (None, "")


def test_the_train_tab_wires_the_upload(tiny_gguf, tmp_path, home):
    from app.studio.ui import build_app

    demo = build_app()
    button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "import-gguf")
    assert button.file_types == [".gguf"]
    fn = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "imported")
    update, note = fn(_upload(tiny_gguf, tmp_path), None)
    assert update["value"] == str(home / "models" / "tiny-model-q8_0")
    assert (update["value"] in [v for _, v in update["choices"]]) and "Imported" in note

"""`ftstudio models import|ls` (app/cli_models.py), in-process with click's runner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from app.cli import cli


def test_import_then_list(tiny_gguf, home):
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "import", str(tiny_gguf)])
    assert result.exit_code == 0, result.output
    folder = home / "models" / "tiny-model-q8_0"
    assert "Imported tiny-model-q8_0: llama" in result.output
    assert f"--set model.name={folder}" in result.output
    assert (folder / "model.safetensors").is_file()

    listed = runner.invoke(cli, ["models", "ls"])
    assert listed.exit_code == 0, listed.output
    assert "tiny-model-q8_0" in listed.output and "Q8_0" in listed.output
    rows = json.loads(runner.invoke(cli, ["models", "ls", "--json"]).output)
    row = next(r for r in rows if r["name"] == "tiny-model-q8_0")
    assert row["source"] == "gguf" and row["model_type"] == "llama"
    assert row["gguf"]["file"] == tiny_gguf.name and row["params"] == row["gguf"]["params"]


def _other_file_imported_as(folder):
    """Make the model in `folder` look imported from another file (its recorded sha256)."""
    from engine.models.catalog import SOURCE_FILE

    record = folder / SOURCE_FILE
    record.write_text(record.read_text().replace('"sha256": "', '"sha256": "0'))


def test_name_taken_then_force_and_a_new_name(tiny_gguf, home):
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "import", str(tiny_gguf), "--name", "mine"]
                         ).exit_code == 0
    same = runner.invoke(cli, ["models", "import", str(tiny_gguf), "--name", "mine"])
    assert same.exit_code == 0 and "imported before as mine: nothing to do" in same.output
    _other_file_imported_as(home / "models" / "mine")
    again = runner.invoke(cli, ["models", "import", str(tiny_gguf), "--name", "mine"])
    assert again.exit_code == 1
    assert "already exists" in again.output and "--force" in again.output
    assert "Traceback" not in again.output
    forced = runner.invoke(cli, ["models", "import", str(tiny_gguf), "--name", "mine", "--force"])
    assert forced.exit_code == 0, forced.output
    other = runner.invoke(cli, ["models", "import", str(tiny_gguf), "--name", "mine-2"])
    assert other.exit_code == 0, other.output
    assert sorted(p.name for p in (home / "models").iterdir()) == ["mine", "mine-2"]


def test_the_cli_follows_the_studios_rule_same_file_reused_other_file_gets_a_new_name(
        tiny_gguf, home):
    """jobs.models.import_model: what the studio's upload does, from the command line."""
    runner = CliRunner()
    first = runner.invoke(cli, ["models", "import", str(tiny_gguf)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, ["models", "import", str(tiny_gguf)])
    assert again.exit_code == 0 and "imported before as tiny-model-q8_0" in again.output
    assert f"--set model.name={home / 'models' / 'tiny-model-q8_0'}" in again.output
    _other_file_imported_as(home / "models" / "tiny-model-q8_0")
    other = runner.invoke(cli, ["models", "import", str(tiny_gguf)])
    assert other.exit_code == 0 and "Imported tiny-model-q8_0-2" in other.output
    assert sorted(p.name for p in (home / "models").iterdir()) == [
        "tiny-model-q8_0", "tiny-model-q8_0-2"]


def test_not_a_gguf_is_a_clean_error(tmp_path, home):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    result = CliRunner().invoke(cli, ["models", "import", str(bad)])
    assert result.exit_code == 1 and "not a GGUF file" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["models", "import", str(tmp_path / "nope.gguf")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    other = CliRunner().invoke(cli, ["models", "import", str(tmp_path / "x.safetensors")])
    assert other.exit_code == 1 and "not a .gguf file" in other.output


def test_ls_with_no_models(home):
    result = CliRunner().invoke(cli, ["models", "ls"])
    assert result.exit_code == 0 and "no models" in result.output
    assert json.loads(CliRunner().invoke(cli, ["models", "ls", "--json"]).output) == []

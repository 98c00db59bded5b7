"""`ftstudio rewards add|ls` (app/cli_rewards.py), in-process with click's runner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from app.cli import cli


def test_add_then_list_and_a_bad_file(home, tmp_path):
    source = tmp_path / "math_rewards.py"
    source.write_text('def correct(prompts, completions, answer, **kw):\n'
                      '    """1 when the answer ends the completion."""\n'
                      '    return [float(str(c).strip().endswith(str(a))) for c, a in '
                      'zip(completions, answer)]\n')
    runner = CliRunner()
    added = runner.invoke(cli, ["rewards", "add", str(source)])
    assert added.exit_code == 0, added.output
    assert "math_rewards.correct" in added.output
    assert (home / "rewards" / "math_rewards.py").is_file()
    listed = runner.invoke(cli, ["rewards", "ls"])
    assert "math_rewards.correct" in listed.output and "1 when the answer ends" in listed.output
    assert "numeric_match" in listed.output
    rows = json.loads(runner.invoke(cli, ["rewards", "ls", "--json"]).output)
    assert {"name": "math_rewards.correct", "kind": "custom",
            "doc": "1 when the answer ends the completion."} in rows
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    refused = runner.invoke(cli, ["rewards", "add", str(bad)])
    assert refused.exit_code == 1 and "bad.py line 1: not valid Python" in refused.output
    assert not (home / "rewards" / "bad.py").exists()


def test_the_studio_upload_installs_for_admins_only(home, tmp_path):
    from app.studio.handlers import install_reward_upload

    source = tmp_path / "fmt.py"
    source.write_text("def short(prompts, completions, **kw):\n"
                      "    return [float(len(str(c)) < 20) for c in completions]\n")
    refused = install_reward_upload(str(source), {"username": "bob", "is_admin": False})
    assert "Only an admin can install a reward function" in refused
    assert not (home / "rewards" / "fmt.py").exists()
    done = install_reward_upload(str(source), {"username": "root", "is_admin": True})
    assert "Installed fmt.py: fmt.short" in done and (home / "rewards" / "fmt.py").is_file()
    assert "Installed" in install_reward_upload(str(source), None)     # local mode: no logins
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    assert "must be NAME.py" in install_reward_upload(str(bad), None)

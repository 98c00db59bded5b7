"""Docs that cannot drift: every config key and every CLI command is in the README."""

from __future__ import annotations

import re

import click

from app.cli import cli
from engine.config import all_keys, reference_markdown
from tests_paths import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "ftstudio") -> list[str]:
    names = []
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        names.append(path)
        if isinstance(cmd, click.Group):
            names.extend(_commands(cmd, path))
    return names


def test_config_reference_in_readme_is_current():
    block = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->",
                      README, re.S)
    assert block, "README lost its config-reference markers"
    assert block.group(1) == reference_markdown(), \
        "README config table is stale: regenerate it with `python -m engine.config`"


def test_every_config_key_is_documented():
    for key in all_keys():
        assert f"`{key}`" in README, key


def test_every_cli_command_is_in_the_readme():
    for command in _commands(cli):
        assert f"`{command}" in README, f"{command} is not in README.md"


def test_every_environment_setting_is_in_the_readme():
    names = set()
    for package in ("engine", "jobs", "app"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"FTSTUDIO_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"settings missing from README.md: {missing}"


def test_the_architecture_doc_names_only_paths_that_exist():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert "docs/architecture.md" in README
    paths = set(re.findall(r"`((?:engine|jobs|app|tests|static)/[\w/.-]*)`", doc))
    paths |= {f"{folder}{name}" for folder, names in re.findall(
        r"`((?:engine|jobs|app)/[\w/]+/)` \(([^)]*)\)", doc)
        for name in re.findall(r"`([\w.]+\.py)`", names)}
    assert len(paths) > 30
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"

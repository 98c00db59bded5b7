"""Docs that cannot drift: the README is a front page; the references in docs/ are generated
(`python -m app.docs`) and every config key, CLI command and FTSTUDIO_* setting is in them."""

from __future__ import annotations

import re

from app.cli import cli
from app.docs import REGENERATE, cli_markdown, commands
from engine.config import all_keys, reference_markdown
from tests_paths import ROOT

DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _command_names() -> list[str]:
    import click

    top = click.Context(cli, info_name="ftstudio")
    return [path for path, _ in commands(top)]


def test_the_config_reference_is_current():
    assert _doc("config.md") == reference_markdown(), \
        f"docs/config.md is stale: regenerate it with `{REGENERATE}`"


def test_the_cli_reference_is_current():
    assert _doc("cli.md") == cli_markdown(), \
        f"docs/cli.md is stale: regenerate it with `{REGENERATE}`"


def test_the_cli_reference_does_not_depend_on_what_ran_before():
    """A command invoked alone first (as some tests do) keeps a help option without the
    group's -h; the reference is still what `ftstudio ... --help` prints."""
    from click.testing import CliRunner

    from app.cli_jobs import worker

    CliRunner().invoke(worker, ["--help"])
    assert _doc("cli.md") == cli_markdown()


def test_the_cli_reference_is_what_help_prints():
    from click.testing import CliRunner

    shown = CliRunner().invoke(cli, ["jobs", "ls", "--help"], prog_name="ftstudio",
                               terminal_width=120).output
    assert f"```text\n{shown.rstrip()}\n```" in _doc("cli.md")


def test_every_config_key_is_documented():
    doc = _doc("config.md")
    for key in all_keys():
        assert f"`{key}`" in doc and f"\n### {key}\n" in doc, key


def test_every_cli_command_is_in_the_cli_reference():
    doc = _doc("cli.md")
    names = _command_names()
    assert "ftstudio jobs bundle" in names and len(names) > 25
    for command in names:
        assert f"\n## {command}\n" in doc, f"{command} is not in docs/cli.md"


def test_every_environment_setting_is_documented():
    doc = _doc("settings.md")
    names = set()
    for package in ("engine", "jobs", "app"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"FTSTUDIO_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def test_the_architecture_doc_names_only_paths_that_exist():
    doc = _doc("architecture.md")
    assert "docs/architecture.md" in README
    paths = set(re.findall(r"`((?:engine|jobs|app|tests|static)/[\w/.-]*)`", doc))
    paths |= {f"{folder}{name}" for folder, names in re.findall(
        r"`((?:engine|jobs|app)/[\w/]+/)` \(([^)]*)\)", doc)
        for name in re.findall(r"`([\w.]+\.py)`", names)}
    assert len(paths) > 30
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    unnamed = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
                     if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in paths)
    assert not unnamed, f"docs/architecture.md's engine map does not name {unnamed}"


def test_the_readme_is_a_front_page_that_links_every_doc():
    lines = README.splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines: move the detail to docs/"
    assert max(len(line) for line in lines) <= 100
    assert "make serve" in README and "make test" in README
    for doc in sorted(DOCS.glob("*.md")):
        assert f"(docs/{doc.name})" in README, f"README.md does not link docs/{doc.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    pages = {ROOT / "README.md": README} | {p: p.read_text(encoding="utf-8")
                                             for p in DOCS.glob("*.md")}
    anchors = {p: {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
               for p, text in pages.items()}
    broken = []
    for page, text in pages.items():
        assert "../shared" not in text and "shared/" not in text.replace("docs/", ""), page
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path in anchors and anchor not in anchors[path]:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken

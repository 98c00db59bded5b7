"""The generated references in docs/: docs/cli.md from every command's --help, docs/config.md
from the config fields' metadata (engine.config.reference_markdown). tests/test_docs.py fails
when either file differs from what this writes, so they cannot drift: after adding a command,
an option or a config key, run this and commit the two files.

Run as: python -m app.docs            (rewrite docs/cli.md and docs/config.md)
        python -m app.docs --check    (exit 1, naming the stale files, when one is out of date)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: the width --help is rendered at, so the reference does not depend on the terminal (click's
#: own limit: a wider terminal prints --help at 80 columns too)
WIDTH = 80
REGENERATE = "python -m app.docs"


def commands(ctx: click.Context) -> list[tuple[str, click.Context]]:
    """Every command under the group of `ctx` as (its full name, its context: the one
    `ftstudio ... --help` builds, so inherited settings such as -h apply), groups before their
    subcommands, in alphabetical order."""
    out = []
    for name, cmd in sorted(ctx.command.commands.items()):
        sub = click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
        out.append((sub.command_path, sub))
        if isinstance(cmd, click.Group):
            out.extend(commands(sub))
    return out


def help_text(ctx: click.Context) -> str:
    """The command's --help as `ftstudio ... --help` prints it, at WIDTH columns. Click keeps
    the help option it made first on the command: one made while the command ran alone (a test
    invoking it without the `ftstudio` group) lacks the group's -h, so it is made anew here."""
    if getattr(ctx.command, "_help_option", None) is not None:
        ctx.command._help_option = None
    return ctx.command.get_help(ctx)


def cli_markdown() -> str:
    """docs/cli.md: every command's --help, each under its own heading."""
    from app.cli import cli

    top = click.Context(cli, info_name="ftstudio", terminal_width=WIDTH,
                        max_content_width=WIDTH, **cli.context_settings)
    every = commands(top)
    out = ["# Command-line reference", "",
           f"<!-- Generated from the commands' --help by `{REGENERATE}`: do not edit by hand. "
           "-->", "",
           "Every command is a thin wrapper over one library function (`engine/` or `jobs/`); "
           "`ftstudio COMMAND --help` prints the same text as below. Config keys for `--set` "
           "are in [config.md](config.md), environment settings in "
           "[settings.md](settings.md).", ""]
    out += [f"- [`{path}`](#{path.replace(' ', '-')}): {ctx.command.get_short_help_str(80)}"
            for path, ctx in every]
    out += ["", "## ftstudio", "", "```text", help_text(top).rstrip(), "```"]
    for path, ctx in every:
        out += ["", f"## {path}", "", "```text", help_text(ctx).rstrip(), "```"]
    return "\n".join(out) + "\n"


def generated() -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    from engine.config import reference_markdown

    return {DOCS / "cli.md": cli_markdown(), DOCS / "config.md": reference_markdown()}


def main(argv: list[str]) -> int:
    stale = [path for path, text in generated().items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(DOCS.parent)} is stale: regenerate it with "
                  f"`{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`ftstudio rewards add|ls`: GRPO's reward functions, each command a thin wrapper over one engine
function (engine.training.rewards); registered on the `ftstudio` group in app/cli.py.

Run as: ftstudio rewards add math_rewards.py      (an admin, on the machine with FTSTUDIO_HOME)
        ftstudio rewards ls [--json]

A custom reward is code the workers run, so only someone who can write to FTSTUDIO_HOME (an
admin at the server's shell) installs one; users pick them by name in train.rewards.
"""

from __future__ import annotations

import json

import click

from app.cli_common import clean_errors


@click.group("rewards")
def rewards_group() -> None:
    """GRPO reward functions: install a custom one (admins), list what is available."""


@rewards_group.command("add")
@click.argument("file", metavar="FILE.py", type=click.Path(dir_okay=False, exists=True))
def rewards_add(file: str) -> None:
    """Install FILE.py into FTSTUDIO_HOME/rewards: each public function becomes a reward named
    FILE.FUNCTION, with TRL's signature f(prompts, completions, **columns) -> list[float]."""
    from engine.training.rewards import install, rewards_dir

    with clean_errors():           # a RewardError (a ValueError) says what is wrong
        names = install(file)
    click.echo(f"installed into {rewards_dir()}: {', '.join(names)}\n"
               f"use one with: train.rewards: [{{name: {names[0]}}}]")


@rewards_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the reward functions as JSON.")
def rewards_ls(as_json: bool) -> None:
    """List the built-in reward functions and the custom ones installed (read, not run)."""
    from engine.training.rewards import BUILTINS, installed, rewards_dir

    rows = [{"name": n, "kind": "built-in", "args": list(b.args),
             "example": {"name": n, "args": b.example}} for n, b in BUILTINS.items()]
    rows += [{"name": n, "kind": "custom", "doc": doc} for n, doc in installed().items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        extra = (f"args: {', '.join(r['args'])}" if r["kind"] == "built-in" else r["doc"])
        click.echo(f"{r['name']:<28} {r['kind']:<9} {extra}")
    if not any(r["kind"] == "custom" for r in rows):
        click.echo(f"(no custom rewards in {rewards_dir()}; an admin adds one with `ftstudio "
                   "rewards add FILE.py`)")

"""`ftstudio user add|remove|passwd|ls`: accounts of a team server (jobs/users.py), each a thin
wrapper over one function (registered on the `ftstudio` group in app/cli.py).

Run as: ftstudio user add alice --admin        (asks for the password twice, hidden)
        printf '%s\\n' "$PASS" | ftstudio user add bob --password-stdin
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from app.cli_common import clean_errors


def _password(password_stdin: bool) -> str:
    """From one line of stdin (scripts), or a hidden prompt asked twice. Never a plain flag:
    flags end up in shell history and in `ps`."""
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.group("user")
def user_group() -> None:
    """Accounts for `ftstudio serve --auth`: add, remove, change a password, list."""


@user_group.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin sees and manages everyone's jobs.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from one line of standard input (for scripts).")
def user_add(name: str, admin: bool, password_stdin: bool) -> None:
    """Create the account NAME (the password is asked for, hidden, twice)."""
    from jobs import users

    password = _password(password_stdin)
    with clean_errors():
        user = users.add_user(name, password, is_admin=admin)
    click.echo(f"user {user['username']} added" + (" (admin)" if user["is_admin"] else ""))


@user_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def user_remove(name: str, yes: bool) -> None:
    """Delete the account NAME (its jobs and files stay; admins still see them)."""
    from jobs import users

    if not yes:
        click.confirm(f"Remove user {name}?", abort=True)
    with clean_errors():
        users.remove_user(name)
    click.echo(f"user {name} removed")


@user_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the new password from one line of standard input (for scripts).")
def user_passwd(name: str, password_stdin: bool) -> None:
    """Set a new password for NAME."""
    from jobs import users

    if users.get_user(name) is None:  # before asking for a password it would throw away
        raise click.ClickException(f"no user {name!r}; add it with `ftstudio user add {name}`")
    password = _password(password_stdin)
    with clean_errors():
        users.set_password(name, password)
    click.echo(f"password of {name} changed")


@user_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
def user_ls(as_json: bool) -> None:
    """List the accounts."""
    from jobs import users

    rows = users.list_users()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no users; add the first admin with `ftstudio user add NAME --admin`")
        return
    for u in rows:
        flags = ", ".join(f for f, on in (("admin", u["is_admin"]),
                                          ("disabled", u["disabled"])) if on)
        created = datetime.fromtimestamp(u["created_at"]).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{u['username']:24} {created}  {flags}".rstrip())

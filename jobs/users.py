"""Accounts of a team server: usernames with argon2 password hashes in studio.db (users table).

Use from Python:
    from jobs import users
    users.add_user("alice", "s3cret-pass", is_admin=True)
    user = users.verify("alice", "s3cret-pass")   # {"username", "is_admin", ...} or None
    jobs.api.list_jobs(actor=user)                # what alice may see

A user dict (`actor` in jobs.api) is {"username", "is_admin", "created_at", "disabled"}, never
the hash. `None` as an actor means local mode (no auth): no restriction. The CLI is
`ftstudio user add|remove|passwd|ls` (app/cli_users.py); `ftstudio serve --auth` checks logins
with verify() behind the rate limits of jobs/logins.py.
"""

from __future__ import annotations

import re
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from jobs import store
from jobs.store import JobError

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_PASSWORD = 8
#: reserved owner names of local mode and the CLI
RESERVED = ("local",)
_hasher = PasswordHasher()
#: verify() of an unknown user checks against this, so it takes as long as a wrong password
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class UserError(JobError):
    """A user request that cannot be done; the message says why and what to do."""


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {"username": row["username"], "is_admin": bool(row["is_admin"]),
            "created_at": row["created_at"], "disabled": bool(row["disabled"])}


def _check_name(username: str) -> str:
    if not USERNAME.fullmatch(username or ""):
        raise UserError(f"{username!r} is not a valid username: use 1-64 letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit")
    if username in RESERVED:
        raise UserError(f"{username!r} is reserved for local mode; pick another name")
    return username


def _check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise UserError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    return password


def _row(db, username: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM users WHERE username = ?", [username]))
    return rows[0] if rows else None


def add_user(username: str, password: str, is_admin: bool = False) -> dict[str, Any]:
    """Create an account; refused (UserError) for a taken or invalid name or a short password."""
    _check_name(username)
    digest = _hasher.hash(_check_password(password))
    with store.connect() as db, store.transaction(db):
        if _row(db, username):
            raise UserError(f"user {username!r} exists; change the password with "
                            f"`ftstudio user passwd {username}`")
        db["users"].insert({"username": username, "password_hash": digest,
                            "is_admin": int(bool(is_admin)), "created_at": store.now(),
                            "disabled": 0})
        return _public(_row(db, username))


def remove_user(username: str) -> None:
    """Delete an account (its jobs stay, owned by that name; an admin still sees them)."""
    with store.connect() as db, store.transaction(db):
        if db.execute("DELETE FROM users WHERE username = ?", [username]).rowcount != 1:
            raise UserError(f"no user {username!r}; `ftstudio user ls` lists them")


def set_password(username: str, password: str) -> None:
    digest = _hasher.hash(_check_password(password))
    with store.connect() as db, store.transaction(db):
        if db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                      [digest, username]).rowcount != 1:
            raise UserError(f"no user {username!r}; add it with `ftstudio user add {username}`")


def set_disabled(username: str, disabled: bool = True) -> None:
    """A disabled account cannot log in; its jobs and files stay."""
    with store.connect() as db, store.transaction(db):
        if db.execute("UPDATE users SET disabled = ? WHERE username = ?",
                      [int(bool(disabled)), username]).rowcount != 1:
            raise UserError(f"no user {username!r}")


def verify(username: str, password: str) -> dict[str, Any] | None:
    """The user when the password is right and the account enabled, else None. An unknown
    user costs one argon2 verify too (no timing difference to probe names with); an old hash is
    upgraded to the current parameters on a successful login."""
    with store.connect() as db:
        row = _row(db, username or "")
    digest = row["password_hash"] if row else _DUMMY_HASH
    try:
        _hasher.verify(digest, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row["disabled"]:
        return None
    if _hasher.check_needs_rehash(digest):
        with store.connect() as db, store.transaction(db):
            db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                       [_hasher.hash(password), username])
    return _public(row)


def get_user(username: str) -> dict[str, Any] | None:
    with store.connect() as db:
        row = _row(db, username)
    return _public(row) if row else None


def list_users() -> list[dict[str, Any]]:
    with store.connect() as db:
        return [_public(r) for r in db.query("SELECT * FROM users ORDER BY username")]


def count_users() -> int:
    with store.connect() as db:
        return db["users"].count


def is_admin(actor: dict[str, Any] | None) -> bool:
    """True for an admin user dict, and for None (local mode: the person at the machine)."""
    return actor is None or bool(actor.get("is_admin"))

"""Accounts (jobs/users.py) and `ftstudio user add|remove|passwd|ls` through the real CLI."""

from __future__ import annotations

import json

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from app.cli import cli
from sqlite_utils import Database

from jobs import store, users


def test_add_verify_and_change_a_password(home):
    user = users.add_user("alice", "correct horse", is_admin=True)
    assert user == {"username": "alice", "is_admin": True, "created_at": user["created_at"],
                    "disabled": False}
    assert users.verify("alice", "correct horse") == user
    assert users.verify("alice", "wrong horse") is None
    assert users.verify("nobody", "correct horse") is None
    assert users.verify("alice", "") is None
    users.set_password("alice", "battery staple")
    assert users.verify("alice", "correct horse") is None
    assert users.verify("alice", "battery staple")["username"] == "alice"
    users.set_disabled("alice")
    assert users.verify("alice", "battery staple") is None
    with store.connect() as db:  # only the argon2 hash is stored
        row = next(db.query("SELECT * FROM users"))
    assert row["password_hash"].startswith("$argon2id$") and "staple" not in row["password_hash"]


def test_bad_names_short_passwords_and_duplicates_are_refused(home):
    users.add_user("bob", "long enough")
    for name in ("", "local", "-x", "a b", "../x", "x" * 65):
        with pytest.raises(users.UserError, match="username|reserved"):
            users.add_user(name, "long enough")
    with pytest.raises(users.UserError, match="at least 8"):
        users.add_user("carol", "short")
    with pytest.raises(users.UserError, match="exists.*ftstudio user passwd bob"):
        users.add_user("bob", "long enough")
    with pytest.raises(users.UserError, match="no user 'zed'"):
        users.remove_user("zed")
    assert [u["username"] for u in users.list_users()] == ["bob"]
    assert not users.is_admin(users.get_user("bob")) and users.is_admin(None)


def test_an_old_hash_is_upgraded_on_login(home):
    users.add_user("dora", "a password")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("a password")
    with store.connect() as db:
        db.execute("UPDATE users SET password_hash = ? WHERE username = 'dora'", [weak])
        db.conn.commit()
    assert users.verify("dora", "a password")
    with store.connect() as db:
        assert next(db.query("SELECT password_hash FROM users"))["password_hash"] != weak


def test_the_user_commands(home):
    run = CliRunner().invoke
    r = run(cli, ["user", "add", "alice", "--admin"], input="pw-alice-1\npw-alice-1\n")
    assert r.exit_code == 0 and "user alice added (admin)" in r.output, r.output
    assert "pw-alice-1" not in r.output  # the prompt is hidden
    r = run(cli, ["user", "add", "bob"], input="one-password\nother-password\n"
                                                 "bob-password\nbob-password\n")
    assert r.exit_code == 0 and "do not match" in r.output.lower()
    r = run(cli, ["user", "add", "carl", "--password-stdin"], input="carl-password\n")
    assert r.exit_code == 0 and users.verify("carl", "carl-password")
    r = run(cli, ["user", "add", "dan", "--password", "x"])
    assert r.exit_code == 2 and "No such option" in r.output  # never a plain flag
    r = run(cli, ["user", "passwd", "bob", "--password-stdin"], input="new-bob-pass\n")
    assert r.exit_code == 0 and users.verify("bob", "new-bob-pass")
    r = run(cli, ["user", "passwd", "zed", "--password-stdin"], input="whatever-pass\n")
    assert r.exit_code == 1 and "no user 'zed'" in r.output
    r = run(cli, ["user", "ls", "--json"])
    assert [(u["username"], u["is_admin"]) for u in json.loads(r.output)] == \
        [("alice", True), ("bob", False), ("carl", False)]
    assert "admin" in run(cli, ["user", "ls"]).output
    r = run(cli, ["user", "remove", "carl", "--yes"])
    assert r.exit_code == 0 and users.get_user("carl") is None
    r = run(cli, ["user", "add", "eve", "--password-stdin"], input="short\n")
    assert r.exit_code == 1 and "at least 8 characters" in r.output


def test_the_users_migration_applies_once_over_an_existing_database(tmp_path):
    db = Database(tmp_path / "studio.db")
    store.MIGRATIONS.apply(db, stop_before="m003_users_datasets")
    db["jobs"].insert({"id": "j1", "status": "completed", "kind": "train", "owner": "local"})
    assert store.migrate(db)[:1] == ["m003_users_datasets"]  # later migrations follow it
    assert store.migrate(db) == []
    assert set(db["users"].columns_dict) == {"username", "password_hash", "is_admin",
                                             "created_at", "disabled"}
    assert {"owner", "path", "sha256"} <= set(db["datasets"].columns_dict)
    assert db["jobs"].count == 1

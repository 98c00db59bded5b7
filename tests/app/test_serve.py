"""Safe defaults of `ftstudio serve`: without logins only loopback; logins need an account."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.cli_serve import BindRefused, auth_enabled, check_binding, gradio_auth, is_loopback
from jobs import users
from tests_paths import ROOT


@pytest.mark.parametrize("host,auth,insecure,outcome", [
    ("127.0.0.1", False, False, None),
    ("localhost", False, False, None),
    ("::1", False, False, None),
    ("[::1]", False, False, None),
    ("127.0.0.2", False, False, None),
    ("0.0.0.0", False, False, "refuse"),
    ("::", False, False, "refuse"),
    ("192.168.1.20", False, False, "refuse"),
    ("studio.example.com", False, False, "refuse"),
    ("", False, False, "refuse"),
    ("0.0.0.0", True, False, None),
    ("10.0.0.5", True, False, None),
    ("0.0.0.0", False, True, "warn"),
    ("127.0.0.1", False, True, None),
])
def test_the_binding_rule(host, auth, insecure, outcome):
    if outcome == "refuse":
        with pytest.raises(BindRefused, match="without authentication.*--auth.*"
                                              "--insecure-no-auth"):
            check_binding(host, auth, insecure)
        return
    warning = check_binding(host, auth, insecure)
    assert (warning is not None) == (outcome == "warn")
    if warning:
        assert "WITHOUT authentication" in warning
    assert is_loopback(host) or auth or insecure


def test_auth_is_on_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv("FTSTUDIO_AUTH", raising=False)
    assert not auth_enabled(False) and auth_enabled(True)
    for value, on in (("on", True), ("1", True), ("true", True), ("off", False), ("0", False)):
        monkeypatch.setenv("FTSTUDIO_AUTH", value)
        assert auth_enabled(False) is on


@pytest.fixture()
def fresh_logins(monkeypatch):
    """The process's login limiter, rebuilt from the environment on its next use."""
    from jobs import logins

    monkeypatch.setattr(logins, "_default", None)
    for name in ("FTSTUDIO_LOGIN_MAX_FAILURES", "FTSTUDIO_LOGIN_LOCKOUT_S",
                 "FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_gradio_login_checks_the_accounts(home, fresh_logins):
    users.add_user("alice", "alice-password")
    assert gradio_auth("alice", "alice-password")
    assert not gradio_auth("alice", "nope-nope") and not gradio_auth("mallory", "alice-password")


def test_the_gradio_login_is_rate_limited(home, fresh_logins):
    from jobs import logins

    fresh_logins.setenv("FTSTUDIO_LOGIN_MAX_FAILURES", "2")
    users.add_user("alice", "alice-password")
    assert not gradio_auth("alice", "nope-nope") and not gradio_auth("alice", "nope-nope")
    assert not gradio_auth("alice", "alice-password")     # locked: the right one is refused
    assert not gradio_auth("bob", "x") and not gradio_auth("bob", "y")
    assert logins.default().locked("bob")                  # unknown names count the same way


def test_serve_refuses_a_bad_login_setting_before_starting(home, fresh_logins):
    from click.testing import CliRunner

    from app.cli import cli

    users.add_user("alice", "alice-password")
    fresh_logins.setenv("FTSTUDIO_LOGIN_LOCKOUT_S", "five minutes")
    done = CliRunner().invoke(cli, ["serve", "--auth", "--no-worker", "--home", str(home)])
    assert done.exit_code == 1, done.output
    assert "FTSTUDIO_LOGIN_LOCKOUT_S='five minutes' is not valid" in done.output
    assert not (home / "models").exists()


def _serve(home, *args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("FTSTUDIO_AUTH", "FTSTUDIO_HOST")}
    full.update(FTSTUDIO_HOME=str(home), **env)
    return subprocess.run([sys.executable, "-m", "app.cli", "serve", "--no-worker", *args],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def test_a_real_serve_refuses_a_public_host_without_auth_and_auth_without_users(tmp_path):
    home = tmp_path / "home"
    done = _serve(home, "--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert not (home / "models").exists()  # refused before doing anything
    done = _serve(home, "--host", "0.0.0.0", "--port", "1", FTSTUDIO_AUTH="on")
    assert done.returncode == 1
    assert "no users yet" in done.stderr and "ftstudio user add NAME --admin" in done.stderr

"""Every FTSTUDIO_* setting is read in engine/settings.py, at call time, with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import settings
from tests_paths import ROOT


def test_defaults_and_values(monkeypatch):
    for name in ("FTSTUDIO_HOME", "FTSTUDIO_CANCEL_GRACE", "FTSTUDIO_AUTH",
                 "FTSTUDIO_MAX_UPLOAD_MB", "FTSTUDIO_AUTO_RESUME", "FTSTUDIO_JOB_ATTEMPT"):
        monkeypatch.delenv(name, raising=False)
    assert settings.home() == Path("studio-data") and settings.cancel_grace_s() == 30.0
    assert not settings.auth() and settings.max_upload_mb() == 200.0
    assert settings.auto_resume() and settings.job_attempt() is None
    monkeypatch.setenv("FTSTUDIO_HOME", "~/elsewhere")
    monkeypatch.setenv("FTSTUDIO_CANCEL_GRACE", "2.5")
    monkeypatch.setenv("FTSTUDIO_AUTH", "On")
    monkeypatch.setenv("FTSTUDIO_AUTO_RESUME", "0")
    monkeypatch.setenv("FTSTUDIO_JOB_ATTEMPT", "3")
    monkeypatch.setenv("FTSTUDIO_MAX_UPLOAD_MB", "lots")           # unparsable: the default
    assert settings.home() == Path.home() / "elsewhere" and settings.cancel_grace_s() == 2.5
    assert settings.auth() and not settings.auto_resume() and settings.job_attempt() == 3
    assert settings.max_upload_mb() == 200.0


def test_a_bad_login_limit_names_its_variable(monkeypatch):
    monkeypatch.setenv("FTSTUDIO_LOGIN_LOCKOUT_S", "-4")
    with pytest.raises(ValueError, match="FTSTUDIO_LOGIN_LOCKOUT_S='-4' is not valid"):
        settings.login_lockout_s(300.0)
    monkeypatch.setenv("FTSTUDIO_LOGIN_MAX_FAILURES", "five")
    with pytest.raises(ValueError, match="FTSTUDIO_LOGIN_MAX_FAILURES='five'"):
        settings.login_max_failures(5)


def test_no_other_module_reads_an_ftstudio_variable():
    reads = re.compile(r"(environ\.get|getenv)\(\s*[\"']FTSTUDIO_|environ\[\s*[\"']FTSTUDIO_"
                       r"[A-Z_]+[\"']\s*\](?!\s*=)")
    found = [f"{p.relative_to(ROOT)}:{n}" for pkg in ("engine", "jobs", "app")
             for p in sorted((ROOT / pkg).rglob("*.py")) if p.name != "settings.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if reads.search(line)]
    assert not found, found

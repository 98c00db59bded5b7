"""Every FTSTUDIO_* setting is read in a settings module (jobs/settings.py, engine/settings.py for
the engine's own), at call time, with its default; the engine reads only what it uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs import settings
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


def test_the_engine_settings_module_holds_only_what_the_engine_reads():
    import ast
    tree = ast.parse((ROOT / "engine" / "settings.py").read_text(encoding="utf-8"))
    readers = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    engine_code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "engine").rglob("*.py")
                            if p.name != "settings.py")
    jobs_only = [name for name in readers
                 if name not in ("text", "number") and not re.search(rf"\b{name}\(", engine_code)]
    assert not jobs_only, f"engine/settings.py reads what the engine never uses: {jobs_only}"

"""Login throttling (jobs/logins.py) over real accounts: lockouts per username, the global limit,
exact counts under threads. A settable clock stands in for waiting."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from jobs import logins, users


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counted:
    """users.verify, counting the password checks it was asked for."""

    def __init__(self, verify=users.verify, delay: float = 0.0) -> None:
        self.verify, self.delay, self.calls = verify, delay, 0
        self._lock = threading.Lock()

    def __call__(self, username, password):
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)  # widens the window in which threads overlap
        return self.verify(username, password)


@pytest.fixture()
def alice(home):
    return users.add_user("alice", "alice-password")


def _limiter(clock, **kw) -> logins.LoginLimiter:
    kw = {"max_failures": 3, "lockout_s": 300, "max_failures_per_minute": 0, **kw}
    return logins.LoginLimiter(clock=clock, **kw)


def _lock_out(limiter, verify, name: str) -> list:
    """Three wrong passwords, then the right one: what each attempt returned."""
    return [limiter.check(name, pw, verify)
            for pw in ("wrong-1", "wrong-2", "wrong-3", "alice-password")]


def test_a_lockout_refuses_even_the_right_password_until_it_ends(alice, caplog):
    clock, verify = Clock(), Counted()
    limiter = _limiter(clock)
    with caplog.at_level(logging.WARNING, logger="ftstudio.logins"):
        assert _lock_out(limiter, verify, "alice") == [None] * 4
        assert verify.calls == 3                       # the 4th was refused unchecked
        clock.now += 299
        assert limiter.check("alice", "alice-password", verify) is None
        assert limiter.locked("alice") and verify.calls == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'alice'" in lines[0] and "3 failed" in lines[0]
    assert not any("wrong" in line or "alice-password" in line for line in lines)
    clock.now += 1
    assert not limiter.locked("alice")
    assert limiter.check("alice", "alice-password", verify) == alice
    # the lockout is over and forgotten: three more wrong ones to lock it again
    assert [limiter.check("alice", "nope-nope", verify) for _ in range(3)] == [None] * 3
    assert limiter.locked("alice") and verify.calls == 7


def test_a_success_forgets_the_failures(alice):
    clock, verify = Clock(), Counted()
    limiter = _limiter(clock)
    for _ in range(2):
        assert limiter.check("alice", "wrong-1", verify) is None
        assert limiter.check("alice", "wrong-2", verify) is None
        assert limiter.check("alice", "alice-password", verify) == alice
    assert verify.calls == 6 and not limiter.locked("alice")


def test_old_failures_are_forgotten(alice):
    clock, verify = Clock(), Counted()
    limiter = _limiter(clock)
    for _ in range(2):
        limiter.check("alice", "wrong-1", verify)
        limiter.check("alice", "wrong-2", verify)
        clock.now += 300
    assert limiter.check("alice", "alice-password", verify) == alice


def test_an_unknown_username_is_treated_like_a_real_one(alice):
    seen = {}
    for name in ("alice", "mallory"):
        clock, verify = Clock(), Counted()
        limiter = _limiter(clock)
        results = _lock_out(limiter, verify, name)
        clock.now += 300
        after = limiter.check(name, "wrong-4", verify)
        seen[name] = ([r is None for r in results], verify.calls, after)
    assert seen["alice"] == seen["mallory"] == ([True] * 4, 4, None)
    # another name is not affected by alice's lockout
    limiter = _limiter(Clock())
    _lock_out(limiter, lambda username, password: None, "alice")
    assert not limiter.locked("bob") and not limiter.locked("mallory")


def test_the_global_limit_slows_guessing_over_many_names(alice, caplog):
    clock, verify = Clock(), Counted()
    limiter = _limiter(clock, max_failures_per_minute=4)
    with caplog.at_level(logging.WARNING, logger="ftstudio.logins"):
        for name in ("bob", "carol", "dave", "erin"):
            assert limiter.check(name, "password1", verify) is None
        assert verify.calls == 4
        assert limiter.check("alice", "alice-password", verify) is None
        assert limiter.check("frank", "password1", verify) is None
        assert verify.calls == 4 and limiter.locked("alice")
        clock.now += 59
        assert limiter.check("alice", "alice-password", verify) is None
    assert len(caplog.records) == 1 and "4 failed logins" in caplog.records[0].getMessage()
    clock.now += 1
    assert limiter.check("alice", "alice-password", verify) == alice


def test_threads_hammering_it_get_exactly_the_allowed_checks():
    names = ["alice", "bob", "carol", "mallory"]
    verify = Counted(lambda username, password: None, delay=0.002)
    per_name: dict[str, int] = dict.fromkeys(names, 0)
    count_lock = threading.Lock()

    def counting(username, password):
        with count_lock:
            per_name[username] += 1
        return verify(username, password)

    limiter = _limiter(Clock(), max_failures=5)
    start = threading.Barrier(16)

    def hammer(i):
        start.wait()
        for j in range(25):
            assert limiter.check(names[(i + j) % 4], "guess", counting) is None

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert per_name == dict.fromkeys(names, 5) and verify.calls == 20
    assert all(limiter.locked(n) for n in names)
    assert limiter._pending == 0 and all(e.pending == 0 for e in limiter._names.values())

    # the global limit alone, as exact
    verify = Counted(lambda username, password: None, delay=0.002)
    limiter = _limiter(Clock(), max_failures=0, max_failures_per_minute=7)
    start = threading.Barrier(16)
    threads = [threading.Thread(target=lambda i=i: [
        start.wait(), *(limiter.check(f"user{i}-{j}", "guess", verify) for j in range(10))])
        for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify.calls == 7 and len(limiter._recent) == 7


def test_an_error_while_checking_is_not_counted():
    def broken(username, password):
        raise RuntimeError("database is locked")

    limiter = _limiter(Clock(), max_failures=1)
    with pytest.raises(RuntimeError):
        limiter.check("alice", "guess", broken)
    assert not limiter.locked("alice") and limiter._pending == 0 and not limiter._names


def test_unknown_names_do_not_pile_up_in_memory():
    clock = Clock()
    limiter = _limiter(clock, max_failures=5, max_failures_per_minute=0)
    for i in range(50):
        limiter.check(f"nobody{i}", "guess", lambda u, p: None)
    assert len(limiter._names) == 50
    clock.now += 300
    assert not limiter.locked("nobody0") and not limiter._names


def test_settings_come_from_the_environment(monkeypatch):
    for name in ("FTSTUDIO_LOGIN_MAX_FAILURES", "FTSTUDIO_LOGIN_LOCKOUT_S",
                 "FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    limiter = logins.LoginLimiter.from_env()
    assert (limiter.max_failures, limiter.lockout_s, limiter.max_failures_per_minute) == \
        (5, 300, 60)
    monkeypatch.setenv("FTSTUDIO_LOGIN_MAX_FAILURES", "2")
    monkeypatch.setenv("FTSTUDIO_LOGIN_LOCKOUT_S", "1.5")
    monkeypatch.setenv("FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE", "0")
    limiter = logins.LoginLimiter.from_env()
    assert (limiter.max_failures, limiter.lockout_s, limiter.max_failures_per_minute) == \
        (2, 1.5, 0)
    for bad in ("-1", "five", "2.5"):
        monkeypatch.setenv("FTSTUDIO_LOGIN_MAX_FAILURES", bad)
        with pytest.raises(ValueError, match="FTSTUDIO_LOGIN_MAX_FAILURES=.*whole number.*"
                                             "default 5"):
            logins.LoginLimiter.from_env()

"""Login throttling of a team server: wrong passwords lock a username for a while.

Use from Python (`ftstudio serve --auth` does this in app/cli_serve.py gradio_auth):
    from jobs import logins
    user = logins.login("alice", "s3cret-pass")   # jobs.users.verify behind the limiter
    limiter = logins.LoginLimiter(max_failures=3, clock=fake_clock)   # tests: own rules, no sleep
    limiter.check("alice", "s3cret-pass", users.verify)

The rules (each 0 turns that limit off):
    FTSTUDIO_LOGIN_MAX_FAILURES (5) wrong logins for one username within
    FTSTUDIO_LOGIN_LOCKOUT_S (300) seconds lock it for FTSTUDIO_LOGIN_LOCKOUT_S seconds: every
        attempt is refused without checking the password, the right one too; after that the
        username starts afresh. A successful login forgets the username's failures. An unknown
        username is counted the same way, so a refusal tells nothing about which accounts exist.
    FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE (60) wrong logins across all usernames within 60 s
        refuse every login until the oldest of them is a minute old (slows password spraying,
        one guess for each of many names).
Attempts refused by a limit are not counted: they checked nothing. Counts are exact under
concurrent attempts: a check in flight holds its place, so N threads guessing at once still get
at most N password checks. Each lockout, and each time the global limit is reached, is logged
once (logger "ftstudio.logins", a warning on stderr) with the username, never a password.

Limited per username and globally, not per client address: Gradio's auth= callable is given only
the username and password. The price: anyone can lock a named account (and, past the global
limit, every account) for a while by guessing on purpose; the log shows it happening.

The state lives in this process's memory behind one lock: the web process is the only one that
checks logins, and a restart forgets it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobs import settings
from jobs import users

DEFAULT_MAX_FAILURES = 5
DEFAULT_LOCKOUT_S = 300.0
DEFAULT_MAX_FAILURES_PER_MINUTE = 60
#: a username is counted by its first this many characters (valid ones are at most 64)
KEY_CHARS = 64
GLOBAL_WINDOW_S = 60.0

log = logging.getLogger("ftstudio.logins")
T = TypeVar("T")


@dataclass
class _Name:
    """What is known of one username: recent failure times, checks in flight, a lockout."""
    failures: deque[float] = field(default_factory=deque)
    pending: int = 0
    locked_until: float | None = None


class LoginLimiter:
    """The rules of the module docstring for one process; thread-safe."""

    def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES,
                 lockout_s: float = DEFAULT_LOCKOUT_S,
                 max_failures_per_minute: int = DEFAULT_MAX_FAILURES_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_failures_per_minute = max_failures_per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._names: dict[str, _Name] = {}
        self._recent: deque[float] = deque()   # failure times of every username, last minute
        self._pending = 0                       # checks in flight, every username
        self._throttled = False                 # the global limit is reached (logged once)
        self._pruned = clock()

    @classmethod
    def from_env(cls, clock: Callable[[], float] = time.monotonic) -> LoginLimiter:
        """The limits set in the environment (see above); a bad value is a ValueError naming
        its variable."""
        return cls(
            max_failures=settings.login_max_failures(DEFAULT_MAX_FAILURES),
            lockout_s=settings.login_lockout_s(DEFAULT_LOCKOUT_S),
            max_failures_per_minute=settings.login_max_failures_per_minute(
                DEFAULT_MAX_FAILURES_PER_MINUTE),
            clock=clock)

    def check(self, username: str, password: str,
              verify: Callable[[str, str], T | None]) -> T | None:
        """verify(username, password) unless a limit refuses the attempt (then None without
        calling it). verify's None counts as a failure, anything else as a success; an
        exception from it counts as neither and goes to the caller."""
        key = (username or "")[:KEY_CHARS]
        if not self._reserve(key):
            return None
        outcome = None
        try:
            user = verify(username, password)
            outcome = user is not None
            return user
        finally:
            self._settle(key, outcome)

    def locked(self, username: str) -> bool:
        """True while attempts for this username are refused (its own lockout or the global
        limit)."""
        key = (username or "")[:KEY_CHARS]
        with self._lock:
            now = self.clock()
            self._forget_old(now)
            entry = self._names.get(key)
            return self._global_full() or (
                entry is not None and entry.locked_until is not None and now < entry.locked_until)

    # everything below runs under self._lock

    def _reserve(self, key: str) -> bool:
        """Take a place for one password check, or False when a limit refuses the attempt."""
        with self._lock:
            now = self.clock()
            self._forget_old(now)
            entry = self._names.get(key)
            if entry is not None:
                if entry.locked_until is not None:
                    if now < entry.locked_until:
                        return False
                    entry.locked_until = None      # the lockout is over: start afresh
                    entry.failures.clear()
                self._expire(entry, now)
                if self.max_failures and \
                        len(entry.failures) + entry.pending >= self.max_failures:
                    return False
            if self._global_full():
                return False
            entry = self._names.setdefault(key, _Name())
            entry.pending += 1
            self._pending += 1
            return True

    def _settle(self, key: str, outcome: bool | None) -> None:
        """Release the place of a finished check and count its outcome (None: not counted)."""
        with self._lock:
            now = self.clock()
            entry = self._names[key]
            entry.pending -= 1
            self._pending -= 1
            if outcome is True:
                entry.failures.clear()
            elif outcome is False:
                self._expire(entry, now)
                entry.failures.append(now)
                self._recent.append(now)
                if self.max_failures and len(entry.failures) >= self.max_failures \
                        and entry.locked_until is None:
                    entry.locked_until = now + self.lockout_s
                    log.warning("ftstudio: logins for %r refused for %g s after %d failed "
                                "attempts (FTSTUDIO_LOGIN_MAX_FAILURES, FTSTUDIO_LOGIN_LOCKOUT_S)",
                                key, self.lockout_s, len(entry.failures))
                if self.max_failures_per_minute and not self._throttled \
                        and len(self._recent) >= self.max_failures_per_minute:
                    self._throttled = True
                    log.warning("ftstudio: %d failed logins in the last minute, the last for %r: "
                                "every login is refused until they age "
                                "(FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE)", len(self._recent), key)
            if not entry.pending and not entry.failures and entry.locked_until is None:
                del self._names[key]

    def _global_full(self) -> bool:
        return bool(self.max_failures_per_minute) and \
            len(self._recent) + self._pending >= self.max_failures_per_minute

    def _expire(self, entry: _Name, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.lockout_s:
            entry.failures.popleft()

    def _forget_old(self, now: float) -> None:
        """Drop global failures older than a minute; now and then, usernames with nothing left
        to remember (unknown names must not pile up in memory)."""
        while self._recent and self._recent[0] <= now - GLOBAL_WINDOW_S:
            self._recent.popleft()
        if self._throttled and len(self._recent) < self.max_failures_per_minute:
            self._throttled = False
        if now - self._pruned < max(self.lockout_s, GLOBAL_WINDOW_S):
            return
        self._pruned = now
        for key, entry in list(self._names.items()):
            self._expire(entry, now)
            over = entry.locked_until is None or now >= entry.locked_until
            if not entry.pending and not entry.failures and over:
                del self._names[key]


_default: LoginLimiter | None = None
_default_lock = threading.Lock()


def default() -> LoginLimiter:
    """The process's limiter, built from the environment on first use (ValueError naming the
    variable for a bad setting: `ftstudio serve --auth` calls this before it starts)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LoginLimiter.from_env()
        return _default


def login(username: str, password: str) -> dict[str, Any] | None:
    """jobs.users.verify behind the process's limiter: the user dict, or None (wrong password,
    unknown or disabled user, or refused by a limit; the caller cannot tell which)."""
    return default().check(username, password, users.verify)

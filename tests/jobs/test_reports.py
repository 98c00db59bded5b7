"""The data reports the studio keeps (jobs/reports.py): bounded, safe to share between
sessions, made once when several ask at once."""

from __future__ import annotations

import threading
import time

from jobs.reports import ReportCache


def test_reports_asked_for_at_once_are_made_once_and_each_caller_gets_a_copy():
    cache, made, results = ReportCache(size=2), [], []

    def make():
        made.append(1)
        time.sleep(0.05)          # long enough for the other callers to be waiting
        return {"used": 3, "notes": []}

    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make(("a",), make)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(results) == 8
    results[0]["notes"].append("changed by one session")
    assert cache.get(("a",)) == {"used": 3, "notes": []}
    assert cache._making == {}                # no lock is kept once a report is made


def test_the_cache_keeps_the_latest_reports_used():
    cache = ReportCache(size=2)
    for key in ("a", "b"):
        cache.get_or_make((key,), lambda key=key: {"file": key})
    assert cache.get(("a",)) == {"file": "a"}  # used: b is now the oldest
    cache.get_or_make(("c",), lambda: {"file": "c"})
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) == {"file": "a"} and cache.get(("c",)) == {"file": "c"}

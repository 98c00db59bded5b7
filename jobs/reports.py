"""The data reports the studio shows, kept, and the time per epoch one gives with the speed a
finished run measured.

A data report tokenizes its whole file (engine.data.data_report), so the web process keeps the
latest REPORTS_KEPT, shared by every session: by file (path, mtime, size), model and data
settings. One lock guards the cache, and one lock per report being made, so two sessions (the
data panel and the Train tab's defaults) asking for the same report at once tokenize the file
once. Each caller gets its own copy.

Use from Python (jobs.api exposes these):
    report = api.report_for(cfg, tokenizer)   # DataReport.to_dict(), made once and kept
    api.kept_report(cfg)                       # the kept one, or None (never makes one)
    api.measured_throughput(model, "lora")     # tokens/s of a finished run, or None
    api.time_estimate(cfg, actor)              # the time per epoch, from the kept report
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from engine.config import TrainConfig
from jobs import access, store

REPORTS_KEPT = 8


class ReportCache:
    """At most `size` reports by key, the least recently used dropped first; thread-safe."""

    def __init__(self, size: int = REPORTS_KEPT):
        self.size = size
        self._kept: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._making: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict[str, Any] | None:
        with self._lock:
            report = self._kept.get(key)
            if report is not None:
                self._kept.move_to_end(key)
        return copy.deepcopy(report)

    def get_or_make(self, key: tuple, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        try:
            with making:
                found = self.get(key)
                if found is not None:
                    return found
                report = make()
                with self._lock:
                    self._kept[key] = report
                    self._kept.move_to_end(key)
                    while len(self._kept) > self.size:
                        self._kept.popitem(last=False)
                return copy.deepcopy(report)
        finally:
            with self._lock:        # only reports being made keep a lock
                if self._making.get(key) is making and not making.locked():
                    del self._making[key]


_reports = ReportCache()


def report_key(cfg: TrainConfig) -> tuple | None:
    """What a report depends on: the file (path, mtime, size), the model and the data
    settings; None when the file cannot be read."""
    try:
        st = Path(cfg.data.train).stat()
    except (OSError, TypeError):
        return None
    data = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str)
    return (str(Path(cfg.data.train).resolve()), st.st_mtime_ns, st.st_size, cfg.model.name,
            data)


def report_for(cfg: TrainConfig, tokenizer: Any = None, *, apart: bool = False
               ) -> dict[str, Any]:
    """The data report (DataReport.to_dict()) of cfg.data.train with cfg's data settings,
    counted with `tokenizer` (None: words): the kept one when this file, model and settings
    were reported already, else made and kept. Raises what engine.data.data_report raises.

    apart: made in jobs.apart's child process (the web server: tokenizing a big file never
    holds up its requests), counted with cfg.model.name's tokenizer when one loads (words
    otherwise), as the studio's tokenizer_for does; `tokenizer` is then unused."""
    from engine.data import data_report

    def make() -> dict[str, Any]:
        if apart:
            from jobs.apart import run_apart

            return run_apart(report_in_child, cfg.data.train, cfg.model.name,
                             dataclasses.asdict(cfg.data))
        return data_report(cfg.data.train, tokenizer, cfg.data).to_dict()

    key = report_key(cfg)
    return make() if key is None else _reports.get_or_make(key, make)


def report_in_child(path: str, model: str, data: dict[str, Any]) -> dict[str, Any]:
    """report_for's work in jobs.apart's child: the tokenizer of `model` (words when none
    loads), then the report."""
    from engine.config import DataConfig
    from engine.data import data_report
    from engine.models.catalog import tokenizer_if_available

    try:
        tok = tokenizer_if_available(model)
    except Exception:  # noqa: BLE001 - offline hub ids, broken folders: count words instead
        tok = None
    return data_report(path, tok, DataConfig(**data)).to_dict()


def preview_for(cfg: TrainConfig, n: int) -> list[Any]:
    """engine.data.preview of cfg.data.train's first n usable records, with cfg.model.name's
    tokenizer, made in jobs.apart's child (it reads the whole file)."""
    from jobs.apart import run_apart

    return run_apart(preview_in_child, cfg.data.train, cfg.model.name,
                     dataclasses.asdict(cfg.data), n)


def preview_in_child(path: str, model: str, data: dict[str, Any], n: int) -> list[Any]:
    from engine.config import ConfigError, DataConfig
    from engine.data import DataError, preview
    from engine.models.catalog import tokenizer_if_available

    try:
        return preview(path, tokenizer_if_available(model), DataConfig(**data), n=n)
    except ConfigError as exc:   # its problems do not cross a process: its message does
        raise DataError(str(exc)) from None


def kept_report(cfg: TrainConfig) -> dict[str, Any] | None:
    """The kept report of cfg's file, model and data settings, or None; never makes one."""
    key = report_key(cfg)
    return None if key is None else _reports.get(key)


def measured_throughput(model: str, method: str | None = None, actor: dict | None = None
                        ) -> dict[str, Any] | None:
    """What a finished run on `model` trained per second, for a time estimate before Start:
    {job_id, method, tokens_per_s} of the newest completed job the actor can see (one with the
    same method preferred), or None."""
    with store.connect() as db:
        return store.measured_throughput(db, model, method, owner=access.list_owner(actor, None))


def time_estimate(cfg: TrainConfig, actor: dict | None = None) -> dict[str, Any] | None:
    """{seconds_per_epoch, startup_s, epochs, tokens_per_epoch, tokens_per_s, job_id, method,
    same_method} (startup_s: what the measured job spent outside its steps, loading and
    saving, which every job pays again) from the kept data report (trained tokens of the training split) and the
    throughput a finished run of this model measured that the actor can see
    (measured_throughput); or {"missing": why}. None while no report is kept."""
    from engine.models.estimate import estimate_time

    report = kept_report(cfg)
    if not report or not report.get("used"):
        return None
    share = (report.get("train_records") or report["used"]) / report["used"]
    tokens = int(report.get("trained_tokens", 0) * share)
    try:
        measured = measured_throughput(cfg.model.name, cfg.method.kind, actor=actor) \
            if store.db_path().is_file() else None
    except Exception as exc:  # noqa: BLE001 - no store yet, or it is busy: no time shown
        return {"missing": f"no measured speed ({exc})"}
    if measured is None:
        return {"missing": "no finished run of this model here yet: the time per epoch shows "
                           "once one has measured its speed"}
    with store.connect() as db:
        overhead = store.job_overhead(db, measured["job_id"])
    return {"seconds_per_epoch": estimate_time(tokens, measured["tokens_per_s"]),
            "startup_s": overhead or 0.0,
            "epochs": None if cfg.train.max_steps else cfg.train.epochs,
            "tokens_per_epoch": tokens, "same_method": measured["method"] == cfg.method.kind,
            **measured}

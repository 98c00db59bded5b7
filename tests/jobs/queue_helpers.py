"""Helpers for the queue tests (tests/jobs/conftest.py provides the `workers` fixture): a fresh FTSTUDIO_HOME, real worker processes, tiny configs.

Workers are real `python -m jobs.worker` processes (a Huey consumer) on SqliteHuey in the test's
home (or a real redis-server). FTSTUDIO_TEST_FAKE_TRAIN=N[:SECONDS] (tests/jobs/fake_engine.py) lets queue
tests that are about the queue, not training, run many jobs through the real worker and runner in
well under a second each; tests about training use the tiny model and the real engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests_paths import EXAMPLES, ROOT


def train_config(model: Path | str, **train) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128,
                 "val_fraction": 0.05},
        "method": {"kind": "lora", "r": 8, "alpha": 16},
        "train": {"max_steps": 6, "lr": 3e-3, "batch_size": 4, "eval_every": 3,
                  "save_every": 3, "warmup_ratio": 0.0, **train},
    }


def fake_config(**train) -> dict:
    """A valid config for the fake engine (FTSTUDIO_TEST_FAKE_TRAIN, tests/jobs/fake_engine.py): a stand-in model folder
    under FTSTUDIO_HOME passes validation; nothing loads it."""
    from jobs import store

    folder = store.home() / "models" / "fake"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return train_config(folder, **{"max_steps": 2, **train})


def wait_for(predicate: Callable[[], object], timeout: float = 60, every: float = 0.2,
             what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Workers:
    """Starts real worker processes for one test and cleans up after it (runners included)."""

    def __init__(self, home: Path, log_dir: Path):
        self.home, self.log_dir = home, log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        full_env = {**os.environ, "FTSTUDIO_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
                    **env}
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "jobs.worker", *args], cwd=ROOT,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def output(self, i: int = -1) -> str:
        logs = sorted(self.log_dir.glob("worker-*.log"))
        return logs[i].read_text(errors="replace") if logs else ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _kill_runners(self.home)


def _kill_runners(home: Path) -> None:
    """No runner child may outlive its test (they run in their own sessions)."""
    if not (home / "studio.db").exists():
        return
    from jobs import store
    from jobs.reporting import pid_alive

    with store.connect(home / "studio.db") as db:
        pids = [r["pid"] for r in db.query("SELECT pid FROM jobs WHERE pid IS NOT NULL")]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        if pid_alive(pid) and cmdline.exists() and b"jobs.runner" in cmdline.read_bytes():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

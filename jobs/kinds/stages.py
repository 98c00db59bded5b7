"""What export and eval jobs share: their progress is the stages they log (each line a step),
and a cancel stops them between two stages.

Use from Python (jobs.kinds.export and jobs.kinds.evaluation):
    result, code = run_stages(job, reporter, work, "export gguf", ExportError, "cannot ...")
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

from jobs import store
from jobs.endings import job_end


class Stopped(Exception):
    """Raised between stages when the job is asked to stop."""


def run_stages(job: dict, reporter, work: Callable, what: str, known: type[Exception],
               error: str, data_file: str | None = None) -> tuple[Any, int]:
    """Run `work(log)` of a job whose progress is its logged stages: each line is a step, and
    a cancel stops it between stages. Returns (result, 0), or (None, exit code) after
    recording how it ended (jobs.endings.job_end): cancelled or interrupted, failed with the
    engine's message (`known`) as its hint, or failed with the explained exception."""
    def log(line: str) -> None:
        reporter.on_log(line)
        reporter.stage_done()
        if reporter.should_stop():
            raise Stopped(reporter.stop_reason)

    try:
        return work(log), 0
    except Stopped:
        reporter.end(job_end(job, "stopped", stop_reason=reporter.stop_reason, stage=what,
                             cancel=reporter.cancel_requested()))
        return None, 0
    except known as exc:
        reporter.on_log(f"{what} failed: {exc}")
        reporter.end(job_end(job, "raised", exc=exc, error=error))
        return None, 1
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded with a hint
        traceback.print_exc()
        sys.stdout.flush()
        reporter.end(job_end(job, "raised", exc=exc, data_file=data_file,
                             log_path=store.folder_of(job) / "log.txt"))
        return None, 1

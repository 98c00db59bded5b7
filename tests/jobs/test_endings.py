"""The one table of how a job ends (jobs/endings.py): every row, and its words."""

from __future__ import annotations

import signal

import pytest

from jobs.endings import HOW, job_end

TRAIN = {"id": "j1", "kind": "train"}
EXPORT = {"id": "e1", "kind": "export"}


@pytest.mark.parametrize("how, kw, status, resume_on_start", [
    ("finished", {}, "completed", 0),
    ("paused", {"step": 4}, "interrupted", 0),
    ("stopped", {"step": 4, "stop_reason": "cancel"}, "cancelled", 0),
    ("stopped", {"step": 4, "cancel": True, "stop_reason": "terminated"}, "cancelled", 0),
    ("stopped", {"step": 4, "stop_reason": "terminated"}, "interrupted", 1),
    ("stopped", {"step": 4, "stop_reason": "orphaned"}, "interrupted", 1),
    ("stopped", {"step": 4, "stopping": True}, "interrupted", 1),
    ("stopped", {"step": 4, "stop_reason": None}, "cancelled", 0),
    ("raised", {"exc": ValueError("bad")}, "failed", 0),
    ("raised", {"exc": ValueError("bad"), "cancel": True, "stopping": True}, "failed", 0),
    ("exited", {"code": -9, "cancel": True}, "cancelled", 0),
    ("exited", {"code": -15, "cancel": True, "stopping": True}, "cancelled", 0),
    ("exited", {"code": -15, "stopping": True}, "interrupted", 1),
    ("exited", {"code": 1}, "failed", 0),
    ("lost", {"reason": "its worker is gone", "cancel": True}, "cancelled", 0),
    ("lost", {"reason": "its worker is gone"}, "interrupted", 1),
])
def test_every_row_of_the_table(how, kw, status, resume_on_start):
    end = job_end(TRAIN, how, **kw)
    assert (end.status, end.resume_on_start) == (status, resume_on_start)
    assert end.fields()["resume_on_start"] == resume_on_start
    assert ("error" in end.fields()) == (status == "failed")
    assert (end.hint is None) == (status == "completed")


def test_the_hints_say_where_it_stopped_and_how_to_go_on():
    assert job_end(TRAIN, "stopped", step=7, stop_reason="cancel").hint == \
        "stopped at step 7; `ftstudio jobs resume j1` continues from the last checkpoint"
    assert job_end(TRAIN, "stopped", step=7, stop_reason="orphaned").hint.startswith(
        "its worker died at step 7; it resumes when a worker starts")
    assert job_end(TRAIN, "paused", step=6).hint.startswith(
        "paused at step 6 for the sweep's successive halving")
    # an export or an eval runs again from the start, and names its stage, not a step
    stage = job_end(EXPORT, "stopped", stage="export gguf", stop_reason="terminated")
    assert stage.hint == ("its worker stopped during export gguf; it runs again when a worker "
                          "starts, or `ftstudio jobs resume e1` runs it again")
    assert job_end(EXPORT, "stopped", stage="export gguf", stop_reason="cancel").hint == \
        "export gguf stopped before it finished; `ftstudio jobs resume e1` runs it again"
    assert "stopped by force" in job_end(TRAIN, "exited", code=-9, cancel=True).hint
    assert job_end(TRAIN, "lost", reason="no heartbeat from b for 200s").hint.startswith(
        "no heartbeat from b for 200s; it resumes from its last checkpoint")
    assert job_end(TRAIN, "lost", reason="r", cancel=True).hint == "r after the cancel request"


def test_failures_are_explained():
    oom = job_end(TRAIN, "raised", exc=RuntimeError("CUDA out of memory. Tried to allocate"))
    assert oom.hint.startswith("out of memory: lower train.batch_size") and oom.error
    engine_error = job_end(EXPORT, "raised", exc=ValueError("GGUF export supports llama"),
                           error="cannot export job p as gguf")
    assert (engine_error.error, engine_error.hint) == ("cannot export job p as gguf",
                                                       "GGUF export supports llama")
    killed = job_end(TRAIN, "exited", code=-signal.SIGKILL)
    assert killed.status == "failed" and "out of memory" in killed.hint
    died = job_end(EXPORT, "exited", code=1)
    assert "the export process" in died.error + died.hint


def test_an_unknown_end_is_refused():
    with pytest.raises(ValueError, match="use one of: " + ", ".join(HOW)):
        job_end(TRAIN, "vanished")

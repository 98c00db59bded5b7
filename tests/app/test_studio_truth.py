"""The pure parts behind issue 25's screens (the browser checks are in
tests/e2e/test_browser_truth.py): one ETA from the job's own steps, evaluation verdicts that
need enough records, the job buttons by state, the studio's words for a job's hint."""

from __future__ import annotations

from app.studio import eval_panel, jobview


def _running(step: int, total: int, started: float) -> dict:
    return {"status": "running", "step": step, "total_steps": total, "started_at": started}


def test_the_eta_comes_from_the_jobs_own_pace_not_its_start_up():
    # 60 s loading the model, then 1 s per step: at step 11 of 100, 89 steps are left
    times = {"first_step": 1, "first_time": 1060.0, "last_step": 11, "last_time": 1070.0}
    job = _running(11, 100, started=1000.0)
    assert jobview.eta_of(job, times, now=1070.0) == 89.0
    assert jobview.eta_of(job, times, now=1070.5) == 88.5        # the step under way
    # before PACE_STEPS steps were timed: from the start, as before
    few = {**times, "last_step": 2, "last_time": 1061.0}
    assert jobview.eta_of(_running(2, 100, 1000.0), few, now=1061.0) == 61.0 / 2 * 98
    assert jobview.eta_of({**job, "status": "completed"}, times) is None


def test_a_tile_is_green_only_with_enough_records_and_an_interval_above_zero():
    up = {"delta": 0.2, "delta_ci": [0.05, 0.3]}
    assert eval_panel.tile_tone(up, 60) == "good"
    assert eval_panel.tile_tone(up, 12) == ""                     # too few to tell
    assert eval_panel.tile_tone({"delta": 0.1, "delta_ci": [-0.1, 0.3]}, 60) == ""
    assert eval_panel.tile_tone({"delta": -0.2, "delta_ci": [-0.3, -0.1]}, 60) == "bad"
    assert eval_panel.tile_tone({"delta": None, "delta_ci": None}, 60) == ""


def test_the_card_says_when_it_cannot_tell_and_what_to_do():
    few = {"n": 4, "metrics": {"exact_match": {"delta": 0.0, "delta_ci": [0.0, 0.0]}}}
    text = eval_panel.verdict_html(few)
    assert "Too few records to tell" in text and "data.val_fraction" in text
    covers = {"n": 80, "metrics": {"exact_match": {"delta": 0.02, "delta_ci": [-0.05, 0.1]}}}
    assert "covers zero" in eval_panel.verdict_html(covers)
    clear = {"n": 80, "metrics": {"exact_match": {"delta": 0.3, "delta_ci": [0.2, 0.4]}}}
    assert eval_panel.verdict_html(clear) == ""
    assert eval_panel.answer_text("  ") == eval_panel.answer_text("") == "(empty answer)"
    assert eval_panel.answer_text("Paris") == "Paris"


def test_job_buttons_and_hints_follow_the_state():
    assert jobview.actions({"status": "running"}) == {"cancel": True, "resume": False,
                                                      "delete": False}
    assert jobview.actions({"status": "completed"}) == {"cancel": False, "resume": False,
                                                        "delete": True}
    assert jobview.actions({"status": "cancelled"})["resume"]
    assert jobview.actions(None) == {"cancel": False, "resume": False, "delete": False}
    hint = "stopped at step 5; `ftstudio jobs resume ab12` continues from the checkpoint"
    assert "ftstudio" not in jobview.studio_hint(hint) and "Resume" in jobview.studio_hint(hint)


def test_each_series_gets_its_own_colour():
    frame = jobview.frame([{"step": 1, "value": 1.0, "series": s}
                           for s in ("raw", "smoothed", "eval", "#1 a", "#2 b")],
                          {**jobview.STEP_VALUE, "series": "str"})
    colors = jobview.color_map(frame, "series")
    assert list(colors) == ["raw", "smoothed", "eval", "#1 a", "#2 b"]
    assert len(set(colors.values())) == 5

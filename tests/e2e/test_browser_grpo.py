"""GRPO in a real browser: the Train form's Objective section shows only GRPO's settings when
grpo is chosen and starts a GRPO job whose page charts its reward (total and per function), its
spread, KL and clip ratio and completion length, and lists the sampled completions with each
function's reward.

Run as: pytest -m e2e tests/e2e/test_browser_grpo.py   (needs /usr/bin/chromium, like
        tests/e2e/test_browser.py, whose `studio` and `browser` fixtures this reuses)
"""

from __future__ import annotations

import json

import pytest

from test_browser import (ARTIFACTS, _line_points, browser, pick_model, studio,  # noqa: F401
                          upload_data)
from test_browser_preference import _pick, _visible, _wait_status

pytestmark = pytest.mark.e2e


def test_a_grpo_job_started_from_the_form_charts_its_reward(studio, browser, tmp_path):  # noqa: F811
    data = tmp_path / "questions.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"instruction": f"Say the number {i}.", "output": str(i)}) + "\n")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=120_000)
    pick_model(page, studio["model"])
    upload_data(page, data, "alpaca")

    page.locator("#objective-box").get_by_text("Objective: SFT").click()
    assert not _visible(page, "#f-train-rewards")
    _pick(page, "#f-train-objective", "grpo")
    page.wait_for_selector("#f-train-rewards", state="visible", timeout=90_000)
    assert _visible(page, "#f-train-num-generations") and _visible(page, "#f-train-beta")
    assert not _visible(page, "#f-train-dpo-loss-type")
    page.locator("#f-train-rewards input").fill(
        '[{name: length_penalty, args: {target: 4}}, {name: contains, weight: 0.5, '
        'args: {text: "a"}}]')
    page.locator("#f-train-max-completion-len input").fill("12")
    page.locator("#f-train-max-steps input").fill("6")
    page.locator("#f-train-batch-size input").fill("8")
    page.locator("#job-name input").fill("e2e-grpo")
    page.wait_for_timeout(500)
    page.locator("#start-btn").click()
    page.wait_for_selector("#job-header .fs-job-name", timeout=120_000)
    assert "e2e-grpo" in page.locator("#job-header").inner_text()
    status = _wait_status(page, 900)
    assert status == "completed", page.locator("#log-tail textarea").input_value()[-3000:]
    page.wait_for_selector("#grpo-section", state="visible", timeout=120_000)
    page.wait_for_timeout(2500)
    assert _line_points(page, "#grpo-reward-plot") >= 6
    assert _line_points(page, "#grpo-stats-plot") >= 6
    assert _line_points(page, "#grpo-length-plot") >= 6
    legend = page.locator("#grpo-reward-plot").inner_text()
    assert "mean reward" in legend and "length_penalty" in legend and "contains" in legend
    table = page.locator("#grpo-samples").inner_text()
    assert "Say the number" in table and "length_penalty" in table
    assert not _visible(page, "#reward-row")               # the preference charts stay hidden
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#grpo-section").screenshot(path=str(ARTIFACTS / "grpo-job.png"))
    assert not errors, errors

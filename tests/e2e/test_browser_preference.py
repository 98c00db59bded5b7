"""Preference tuning in a real browser: the Train form's Objective section shows only the chosen
objective's settings and starts a DPO job whose page draws its rewards and reward accuracy; and
a finished SFT job's "Continue with preference tuning" section queues the second stage, which
trains from the SFT model.

Run as: pytest -m e2e tests/e2e/test_browser_preference.py   (needs /usr/bin/chromium, like
        tests/e2e/test_browser.py, whose `studio` and `browser` fixtures this reuses)
"""

from __future__ import annotations

import time

import pytest

from test_browser import (ARTIFACTS, _line_points, browser, cli, pick_model,  # noqa: F401
                          studio, upload_data, wait_job)
from tests_paths import EXAMPLES

pytestmark = pytest.mark.e2e
DONE = ("completed", "failed", "cancelled")


def _visible(page, selector: str) -> bool:
    return page.locator(selector).first.is_visible()


def _wait_status(page, timeout_s: float = 300) -> str:
    status, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline and status not in DONE:
        page.wait_for_timeout(500)
        status = page.locator("#job-header .fs-badge").inner_text().split()[-1]
    return status


def _pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option).first.click()


def test_the_objective_section_starts_a_dpo_job_that_charts_its_rewards(studio, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    pick_model(page, studio["model"])
    upload_data(page, EXAMPLES / "preference.jsonl", "preference")

    page.locator("#objective-box").get_by_text("Objective: SFT").click()
    _pick(page, "#f-train-objective", "dpo")
    page.wait_for_selector("#f-train-dpo-loss-type", state="visible", timeout=15_000)
    assert _visible(page, "#f-train-beta") and not _visible(page, "#f-train-simpo-gamma")
    _pick(page, "#f-train-objective", "simpo")
    page.wait_for_selector("#f-train-simpo-gamma", state="visible", timeout=15_000)
    assert not _visible(page, "#f-train-dpo-loss-type")
    _pick(page, "#f-train-objective", "dpo")
    page.wait_for_selector("#f-train-dpo-loss-type", state="visible", timeout=15_000)

    page.locator("#f-train-max-steps input").fill("8")
    page.locator("#f-train-batch-size input").fill("4")
    page.locator("#job-name input").fill("e2e-dpo")
    page.wait_for_timeout(500)
    page.locator("#start-btn").click()
    page.wait_for_selector("#job-header .fs-job-name", timeout=30_000)
    assert "e2e-dpo" in page.locator("#job-header").inner_text()
    status = _wait_status(page)
    assert status == "completed", page.locator("#log-tail textarea").input_value()[-3000:]
    page.wait_for_selector("#reward-row", state="visible", timeout=30_000)
    page.wait_for_timeout(2500)
    assert _line_points(page, "#reward-plot") >= 8
    assert _line_points(page, "#reward-accuracy-plot") >= 2
    assert "loss: dpo" in page.locator("#log-tail textarea").input_value()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#reward-row").screenshot(path=str(ARTIFACTS / "preference-rewards.png"))
    assert not _visible(page, "#continue-panel")          # a DPO job does not continue
    assert not errors, errors


def test_a_finished_sft_job_continues_with_preference_tuning(studio, browser, tmp_path):  # noqa: F811
    config = tmp_path / "sft.yaml"
    config.write_text(f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES}/chat.jsonl"
                      "\n  max_seq_len: 128\ntrain:\n  max_steps: 4\n  batch_size: 4\n"
                      "  eval_every: 0\n  eval_generate: 'off'\n", encoding="utf-8")
    sft = cli(studio, "submit", str(config), "--name", "e2e-sft").split()[2]
    assert wait_job(studio, sft)["status"] == "completed"

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    _pick(page, "#job-picker", f"#{sft} · e2e-sft")
    page.wait_for_selector("#continue-panel", state="visible", timeout=30_000)
    page.locator("#continue-panel").get_by_text("Continue with preference tuning").click()
    _pick(page, "#continue-data", "preference (jsonl)")
    page.locator("#continue-start").click()
    page.wait_for_function("() => document.querySelector('#continue-message')?.innerText"
                           ".includes('Queued job')", timeout=30_000)
    message = page.locator("#continue-message").inner_text()
    child = message.split("Queued job ")[1].split()[0]
    job = wait_job(studio, child)
    assert job["status"] == "completed", job
    assert job["parent"] == sft and job["config"]["train"]["objective"] == "dpo"
    logs = cli(studio, "jobs", "logs", child)
    assert f"merging the adapter of job {sft}" in logs

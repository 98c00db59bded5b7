"""The Export section in a real browser: a job trained through the queue, exported from its page,
and the export's verification line seen there ("verified: N/N same answers, ...").

Run as: pytest -m e2e tests/e2e/test_browser_export.py   (needs /usr/bin/chromium, like
        tests/e2e/test_browser.py, whose `studio` and `browser` fixtures this reuses)
"""

from __future__ import annotations

import pytest

from test_browser import ARTIFACTS, browser, cli, studio, wait_job  # noqa: F401 - shared
from tests_paths import EXAMPLES

pytestmark = pytest.mark.e2e


def test_an_export_shows_its_verification_line(studio, browser, tmp_path):  # noqa: F811
    config = tmp_path / "job.yaml"
    config.write_text(f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES}/chat.jsonl"
                      "\n  max_seq_len: 128\ntrain:\n  max_steps: 4\n  batch_size: 4\n"
                      "  eval_every: 0\n", encoding="utf-8")
    job_id = cli(studio, "submit", str(config)).split()[2]   # "queued job ID (name); ..."
    job = wait_job(studio, job_id)
    assert job["status"] == "completed", job

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    page.wait_for_function(f"() => document.querySelector('#job-header')?.innerText"
                           f".includes('{job['name']}')", timeout=60_000)
    page.locator("#export-merged").click()
    line = page.locator("#export-jobs [data-format=merged] .fs-verify")
    line.wait_for(timeout=240_000)
    text = line.inner_text()
    assert line.get_attribute("data-status") == "verified", text
    assert text.startswith("verified: ") and "same answers" in text and "logits r=" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#export-panel").screenshot(path=str(ARTIFACTS / "export-verified.png"))

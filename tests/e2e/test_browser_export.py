"""The Export section in a real browser: a job trained through the queue, exported from its page,
and the export's verification line seen there ("verified: N/N same answers, ...").

Run as: pytest -m e2e tests/e2e/test_browser_export.py   (needs /usr/bin/chromium, like
        tests/e2e/test_browser.py, whose `studio` and `browser` fixtures this reuses)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from test_browser import ARTIFACTS, browser, studio  # noqa: F401 - the shared fixtures
from tests_paths import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e


def _cli(studio, *args: str) -> str:
    env = {**os.environ, "FTSTUDIO_HOME": str(studio["home"]), "PYTHONUNBUFFERED": "1"}
    env.pop("FTSTUDIO_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_an_export_shows_its_verification_line(studio, browser, tmp_path):  # noqa: F811
    config = tmp_path / "job.yaml"
    config.write_text(f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES}/chat.jsonl"
                      "\n  max_seq_len: 128\ntrain:\n  max_steps: 4\n  batch_size: 4\n"
                      "  eval_every: 0\n", encoding="utf-8")
    out = _cli(studio, "submit", str(config))
    job_id = out.split()[2]   # "queued job ID (name); follow it with ..."
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = json.loads(_cli(studio, "jobs", "show", job_id, "--json"))
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(1)
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

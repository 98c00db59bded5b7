"""Make it smaller in a real browser: the Train form's objective section offers distillation with
its settings, and a finished job's "Make it smaller" section queues a prune job whose model is
healed by a distillation job evaluated teacher vs student.

Run as: pytest -m e2e tests/e2e/test_browser_shrink.py   (needs /usr/bin/chromium, like
        tests/e2e/test_browser.py, whose `studio` and `browser` fixtures this reuses)
"""

from __future__ import annotations

import json

import pytest

from test_browser import ARTIFACTS, browser, cli, pick_model, studio, wait_job  # noqa: F401
from tests_paths import EXAMPLES

pytestmark = pytest.mark.e2e


def _pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option).first.click()


def test_distillation_settings_show_for_the_distill_objective(studio, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    pick_model(page, studio["model"])
    page.locator("#objective-box").get_by_text("Objective: SFT").click()
    assert not page.locator("#f-train-teacher").first.is_visible()
    _pick(page, "#f-train-objective", "distill")
    page.wait_for_selector("#f-train-teacher", state="visible", timeout=15_000)
    for key in ("distill-loss", "distill-temperature", "distill-alpha", "teacher-topk-cache"):
        page.wait_for_selector(f"#f-train-{key}", state="visible", timeout=15_000)
    assert "Teacher model" in page.locator("#f-train-teacher").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#objective-box").screenshot(path=str(ARTIFACTS / "distill-settings.png"))
    assert not errors, errors


def test_make_a_finished_job_smaller_from_its_page(studio, browser, tmp_path):  # noqa: F811
    config = tmp_path / "sft.yaml"
    config.write_text(f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES}/alpaca.json"
                      "\n  max_seq_len: 96\ntrain:\n  max_steps: 4\n  batch_size: 4\n"
                      "  eval_every: 0\n  eval_generate: 'off'\n", encoding="utf-8")
    sft = cli(studio, "submit", str(config), "--name", "e2e-big").split()[2]
    assert wait_job(studio, sft)["status"] == "completed"

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    _pick(page, "#job-picker", f"#{sft} · e2e-big")
    page.wait_for_selector("#shrink-panel", state="visible", timeout=30_000)
    page.locator("#shrink-panel").get_by_text("Make it smaller").first.click()
    page.locator("#shrink-value input, #shrink-value textarea").first.fill("1")
    page.locator("#shrink-heal input").fill("2")
    page.wait_for_timeout(300)
    page.locator("#shrink-start").click()
    page.wait_for_function("() => document.querySelector('#shrink-message')?.innerText"
                           ".includes('Queued prune job')", timeout=30_000)
    message = page.locator("#shrink-message").inner_text()
    prune_id = message.split("Queued prune job ")[1].split(":")[0]
    page.wait_for_function(f"() => document.querySelector('#shrink-jobs')?.innerText"
                           f".includes('{prune_id}')", timeout=30_000)
    pruned = wait_job(studio, prune_id)
    assert pruned["status"] == "completed", pruned
    assert pruned["result"]["layers"] == [2, 1]
    page.locator("#shrink-refresh").click()
    page.wait_for_function("() => document.querySelector('#shrink-jobs')?.innerText"
                           ".includes('healing job')", timeout=30_000)
    listed = page.locator("#shrink-jobs").inner_text()
    assert "completed" in listed and "e2e-big-pruned" in listed
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#shrink-panel").screenshot(path=str(ARTIFACTS / "make-it-smaller.png"))
    heal = wait_job(studio, pruned["result"]["heal_job"])
    assert heal["status"] == "completed", heal
    record = json.loads((studio["home"] / "jobs" / heal["id"] / "eval.json").read_text()) \
        if (studio["home"] / "jobs" / heal["id"] / "eval.json").is_file() else None
    assert record is None or record["baseline"] == "teacher"
    assert (studio["home"] / "jobs" / heal["id"] / "distill.md").is_file()

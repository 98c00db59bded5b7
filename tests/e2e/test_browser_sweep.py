"""A sweep end to end in a real browser: the Sweep toggle next to Start, two number fields
given two values each, the card counting 4 jobs, Start, and the group's page filling its
leaderboard as the embedded worker trains the tiny model; then the named API's /submit_sweep.

Run as: pytest -m e2e tests/e2e/test_browser_sweep.py   (needs /usr/bin/chromium). A
screenshot of the group page lands in test-artifacts/e2e/sweep.png.
"""

from __future__ import annotations

import re
import time

import pytest

from test_browser import ARTIFACTS, _shot, browser, pick_model, studio  # noqa: F401 - the fixtures
from tests_paths import EXAMPLES

pytestmark = pytest.mark.e2e


def _board(page) -> str:
    return page.locator("#sweep-board").inner_text()


def test_a_2x2_sweep_from_the_train_form_fills_its_leaderboard(studio, browser, monkeypatch):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    page.wait_for_selector("#estimate .fs-estimate", timeout=60_000)
    pick_model(page, studio["model"])
    page.wait_for_function(
        "() => document.querySelector('#estimate').innerText.includes('32.8K')", timeout=30_000)
    page.locator("#f-train-max-steps input").fill("4")
    page.locator("#f-train-max-steps input").press("Tab")
    page.locator("#job-name input").fill("e2e-sweep")

    # Sweep on: number fields become lists; max steps keeps its value
    page.locator("#sweep-toggle input[type=checkbox]").check()
    page.locator("#s-train-lr input").wait_for(timeout=15_000)
    assert page.locator("#s-train-max-steps input").input_value() == "4"
    assert not page.locator("#f-train-lr").is_visible()
    assert "Start sweep" in page.locator("#start-btn").inner_text()
    page.locator("#s-train-lr input").fill("1e-3, 3e-3")
    page.locator("#s-method-r input").fill("4..8 step 4")
    page.locator("#s-method-r input").press("Tab")
    page.wait_for_function("() => document.querySelector('#sweep-card')?.innerText"
                           ".includes('4 jobs')", timeout=30_000)
    page.locator("#start-btn").click()

    # the Sweeps tab opens on the group; its leaderboard fills as the jobs finish
    page.wait_for_function("() => document.querySelector('#sweep-header')?.innerText"
                           ".includes('e2e-sweep')", timeout=30_000)
    header = page.locator("#sweep-header").inner_text()
    assert "4 jobs" in header and "varies method.r, train.lr" in header   # form order
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and _board(page).count("completed") < 4:
        assert "failed" not in _board(page), _board(page)
        page.wait_for_timeout(1000)
    page.wait_for_timeout(2 * 2000)          # a tick after the last one ended
    text = _board(page)
    assert text.count("completed") == 4, text
    assert all(f"e2e-sweep-{i}" in text for i in range(1, 5))
    assert "eval_loss" in text

    # the page shows the store's ranking: best eval loss first, each with its settings
    monkeypatch.setenv("FTSTUDIO_HOME", str(studio["home"]))
    from jobs import sweeps

    sweep_id = sweeps.list_sweeps()[0]["id"]
    board = sweeps.leaderboard(sweep_id)["rows"]
    values = [r["value"] for r in board]
    assert None not in values and values == sorted(values)
    assert {(r["train.lr"], r["method.r"]) for r in board} == {
        ("1e-3", "4"), ("1e-3", "8"), ("3e-3", "4"), ("3e-3", "8")}
    where = [text.index(r["job_id"]) for r in board]
    assert where == sorted(where), (text, board)
    assert page.locator("#sweep-loss g.mark-line path").count() >= 4   # one curve per job
    page.locator("#sweep-board").scroll_into_view_if_needed()
    _shot(page, "sweep")

    # clone the best into Train: the form gets its settings
    page.locator("#sweep-clone").click()
    page.wait_for_function("() => document.querySelector('#job-name input')?.value"
                           ".endsWith('-copy')", timeout=30_000)
    best = board[0]
    assert page.locator("#job-name input").input_value() == f"{best['name']}-copy"
    page.wait_for_function("() => !document.querySelector('#sweep-toggle input').checked",
                           timeout=30_000)      # a single job's form again
    assert float(page.locator("#f-train-lr input").input_value()) == float(best["train.lr"])
    assert not errors, errors


def test_gradio_client_submits_a_sweep_and_reads_its_leaderboard(studio):
    from gradio_client import Client

    client = Client(studio["url"], verbose=False)
    config = (f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES / 'alpaca.json'}\n"
              f"  max_seq_len: 128\ntrain:\n  max_steps: 2\n  batch_size: 4\n")
    bad = client.predict(config, "train.lr=1e-3,-1\ntrain.batch_size=0,2", "", 0, "",
                         api_name="/submit_sweep")
    assert bad["sweep_id"] is None
    assert any(re.match(r"point 3 of 4 \(train.lr=-1, train.batch_size=0\)", p["message"])
               for p in bad["problems"]), bad
    sw = client.predict(config, "train.lr=1e-3,2e-3", "api-sweep", 0, "",
                        api_name="/submit_sweep")
    assert sw["problems"] == [] and len(sw["job_ids"]) == 2
    board = client.predict(sw["sweep_id"], "eval_loss", api_name="/sweep_leaderboard")
    assert {r["job_id"] for r in board["rows"]} == set(sw["job_ids"])
    assert board["keys"] == ["train.lr"]

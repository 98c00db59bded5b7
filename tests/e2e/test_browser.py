"""The studio end to end in a real browser: `ftstudio serve` in a subprocess, driven by
Playwright over Debian's Chromium (never a downloaded browser), plus the named API through
gradio_client.

Run as: pytest -m e2e tests/e2e/test_browser.py      (needs /usr/bin/chromium: apt-get install
        chromium). Screenshots of each tab (and of the Export section) land in
        test-artifacts/e2e/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests_paths import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("FTSTUDIO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
STEPS = 60                     # long enough that the chart is seen filling while it runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ftstudio serve exited ({proc.returncode}):\n"
                                 + log.read_text(errors="replace")[-4000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("ftstudio serve did not answer:\n" + log.read_text()[-4000:])


@pytest.fixture(scope="module")
def studio(tiny_model, tmp_path_factory):
    """A running `ftstudio serve` in a fresh FTSTUDIO_HOME holding the tiny test model."""
    home = tmp_path_factory.mktemp("studio") / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny")
    port = _free_port()
    exe = Path(sys.executable).parent / "ftstudio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "FTSTUDIO_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           # this checkout's code, not the editable install the `ftstudio` script points at
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    env.pop("FTSTUDIO_REDIS_URL", None)
    log = home.parent / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd + ["serve", "--port", str(port), "--home", str(home)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log)
        yield {"url": url, "home": home, "model": home / "models" / "tiny", "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.copy(log, ARTIFACTS / "serve.log") if ARTIFACTS.is_dir() else None


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def pick_model(page, model) -> None:
    """Type a model folder into the Train form's picker."""
    box = page.locator("#f-model-name input")
    box.click()
    box.fill(str(model))
    box.press("Enter")


def upload_data(page, path, kind: str) -> None:
    """Upload a data file in the Train form and wait for its report to name `kind`."""
    with page.expect_file_chooser() as chooser:
        page.locator("#upload-data").click()
    chooser.value.set_files(str(path))
    page.wait_for_function(
        f"() => document.querySelector('#data-report').innerText.includes('{kind}')",
        timeout=60_000)


def cli(studio, *args: str) -> str:
    """`ftstudio ARGS` against the studio's home; its stdout (the test fails on an error)."""
    env = {**os.environ, "FTSTUDIO_HOME": str(studio["home"]), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    env.pop("FTSTUDIO_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_job(studio, job_id: str, timeout: float = 300) -> dict:
    """The job (`ftstudio jobs show --json`) once it has ended."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        job = json.loads(cli(studio, "jobs", "show", job_id, "--json"))
        if job["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(1)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")   # the sticky side panel where it belongs
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _line_points(page, selector: str) -> int:
    """How many points the Vega line marks of a chart draw (in a visible colour)."""
    return page.evaluate("""(sel) => {
        let n = 0;
        for (const p of document.querySelectorAll(sel + ' g.mark-line path')) {
            const d = p.getAttribute('d') || '';
            if (!p.getAttribute('stroke') || p.getAttribute('stroke') === 'null') continue;
            n = Math.max(n, (d.match(/[ML]/g) || []).length);
        }
        return n; }""", selector)


def test_train_watch_download_and_chat_in_the_browser(studio, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    page.wait_for_selector("#estimate .fs-estimate", timeout=60_000)

    # the tiny model from FTSTUDIO_HOME/models, typed into the picker
    pick_model(page, studio["model"])
    page.wait_for_function(                                 # LoRA r=16 on the tiny model
        "() => document.querySelector('#estimate').innerText.includes('32.8K')", timeout=30_000)

    # upload a bundled example: the report and the loss-marked preview appear
    upload_data(page, EXAMPLES / "chat.jsonl", "chat")
    assert "datasets" in page.locator("#f-data-train input").input_value()
    page.wait_for_selector(".fs-preview .token.highlighted", timeout=30_000)   # carry loss
    assert page.locator(".fs-preview .text.unlabeled").count() > 0               # masked

    page.locator("#f-train-max-steps input").fill(str(STEPS))
    page.locator("#f-train-batch-size input").fill("4")
    page.locator("#job-name input").fill("e2e-lora")
    page.wait_for_timeout(500)
    _shot(page, "train")
    page.locator("#start-btn").click()

    # the Jobs tab opens on the new job; the loss chart fills; the job completes
    page.wait_for_selector("#job-header .fs-job-name", timeout=30_000)
    assert "e2e-lora" in page.locator("#job-header").inner_text()
    seen_points, status = 0, ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and status not in ("completed", "failed", "cancelled"):
        page.wait_for_timeout(300)      # often: on a busy machine the run is over in seconds
        status = page.locator("#job-header .fs-badge").inner_text().split()[-1]
        if status == "running":
            seen_points = max(seen_points, _line_points(page, "#loss-plot"))
    assert status == "completed", page.locator("#log-tail textarea").input_value()[-3000:]
    page.wait_for_timeout(2500)                               # the last tick draws every step
    assert _line_points(page, "#loss-plot") >= STEPS
    assert seen_points >= 1 or STEPS <= 2, "no loss point was drawn while the job ran"
    assert "100%" in page.locator("#job-progress").inner_text()
    _shot(page, "jobs")

    # training ended with a generation evaluation: the card, then the answers, filterable
    page.wait_for_selector("#eval-card", timeout=60_000)
    card = page.locator("#eval-card").inner_text()
    assert re.search(r"exact match \d+% → \d+% \([+-]\d+ points, 95% CI", card), card
    assert "held-out records" in card and "at the end of training" in card
    page.locator("#eval-rows").scroll_into_view_if_needed()
    page.locator("#eval-rows [role=gridcell]").first.wait_for(timeout=30_000)
    page.locator("#eval-filter label").filter(has_text="still wrong").click()
    page.wait_for_timeout(1000)
    # queue another evaluation, on a bundled file, from the button: its card replaces the first
    page.locator("#eval-data input").click()
    page.get_by_role("option", name="alpaca (json)").click()
    page.locator("#eval-max-new-tokens input").fill("8")
    page.locator("#eval-start").click()
    page.wait_for_function("() => document.querySelector('#eval-message')?.innerText"
                           ".includes('queued as job')", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#eval-card')?.innerText"
                           ".includes('by an eval job')", timeout=180_000)
    assert "alpaca.json (alpaca)" in page.locator("#eval-card").inner_text()
    page.locator("#eval-panel").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#eval-panel").screenshot(path=str(ARTIFACTS / "eval.png"))
    page.locator("#dl-eval-csv").click()
    link = page.locator("#eval-download a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    answers = tmp_path / "answers.csv"
    download.value.save_as(answers)
    assert answers.read_text(encoding="utf-8").startswith("where,prompt,reference,base,tuned")

    # download the adapter and load it with peft
    page.locator("#dl-adapter").click()
    link = page.locator("#downloads a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    target = tmp_path / "adapter.zip"
    download.value.save_as(target)
    with zipfile.ZipFile(target) as zf:
        zf.extractall(tmp_path / "unzipped")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(studio["model"])
    tuned = PeftModel.from_pretrained(base, tmp_path / "unzipped" / "adapter")
    assert sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n) == 32768

    # export the adapter: a job on the queue; its files are listed with sizes and download
    page.locator("#export-adapter").click()
    page.wait_for_function("() => document.querySelector('#export-message')?.innerText"
                           ".includes('queued as job')", timeout=30_000)
    page.wait_for_selector("#export-jobs [data-format=adapter] .fs-badge.fs-completed",
                           timeout=180_000)
    page.locator("#export-files").scroll_into_view_if_needed()   # rows render when in view
    cell = page.locator("#export-files [role=gridcell]").filter(
        has_text="tiny-ft-adapter.zip").first
    cell.wait_for(timeout=30_000)
    row = page.locator("#export-files [role=row]").filter(has_text="tiny-ft-adapter.zip").first
    assert re.search(r"Adapter\s+tiny-ft-adapter\.zip\s+\d+\.\d KB", row.inner_text()), \
        row.inner_text()
    cell.click()
    link = page.locator("#export-download a").first
    link.wait_for(timeout=30_000)
    page.locator("#export-panel").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#export-panel").screenshot(path=str(ARTIFACTS / "export.png"))
    with page.expect_download() as download:
        link.click()
    exported = tmp_path / "exported.zip"
    download.value.save_as(exported)
    with zipfile.ZipFile(exported) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= \
            set(zf.namelist())

    # the playground answers with the tuned model beside the base model
    page.get_by_role("tab", name="Playground").click()
    page.wait_for_function(
        "() => document.querySelector('#play-job input')?.value.includes('e2e-lora')",
        timeout=30_000)
    page.locator("#play-prompt textarea").fill("Reverse the order of the words.\nred blue")
    page.locator("#play-send").click()
    page.wait_for_selector("#chat-base .bot", timeout=120_000)
    page.wait_for_timeout(1000)
    _shot(page, "playground")

    # reopening the page re-attaches to the job that was watched
    page.reload()
    page.get_by_role("tab", name="Jobs").click()
    page.wait_for_function("() => document.querySelector('#job-header')?.innerText"
                           ".includes('e2e-lora')", timeout=30_000)
    assert not errors, errors
    page.close()


def test_gradio_client_submits_a_job_and_reads_its_metrics(studio):
    from gradio_client import Client

    client = Client(studio["url"], verbose=False)
    bad = client.predict("train:\n  lr: -1\n", "", 0, api_name="/submit_job")
    assert bad["job_id"] is None and "train.lr" in {p["key"] for p in bad["problems"]}
    config = (f"model:\n  name: {studio['model']}\ndata:\n  train: {EXAMPLES / 'alpaca.json'}\n"
              f"  max_seq_len: 128\ntrain:\n  max_steps: 3\n  batch_size: 4\n")
    assert client.predict(config, api_name="/validate_config") == []
    job = client.predict(config, "api-job", 0, api_name="/submit_job")
    job_id = job["job_id"]
    assert job_id and job["problems"] == []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(1)
    assert status["status"] == "completed", status
    rows = client.predict(job_id, -1, api_name="/job_metrics")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert client.predict(job_id, 2, api_name="/job_metrics")[0]["step"] == 3
    listed = client.predict("completed", api_name="/list_jobs")
    assert job_id in {j["id"] for j in listed}

    # the job ended with an evaluation of its validation split; another one is queued by name
    found = client.predict(job_id, "all", api_name="/job_eval")
    assert found["eval"]["kind"] == "end" and len(found["rows"]) == found["eval"]["n"] > 0
    assert found["eval"]["card"].startswith("exact match ")
    ev = client.predict(job_id, str(EXAMPLES / "chat.jsonl"), 8, api_name="/eval_job")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = client.predict(ev["eval_job_id"], api_name="/job_status")
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(1)
    assert status["status"] == "completed", status
    newest = client.predict(job_id, "all", api_name="/job_eval")["eval"]
    assert newest["kind"] == "job" and newest["source"] == "chat.jsonl (chat)"

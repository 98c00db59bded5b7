"""The Parallelism section, the per-GPU advice, and the GPUs a job holds, in a real browser.

Run as: pytest -m e2e tests/e2e/test_browser_parallel.py   (screenshots in test-artifacts/e2e/)

The studio is told its workers have four 24 GB GPUs (FTSTUDIO_WORKER_GPUS=4x24, what a team
server whose web container sees no GPU sets); a worker with a pool of two GPU numbers runs the
job (its steps faked: this is about what the pages show, not about training).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_browser import CHROMIUM_ARGS, _free_port, _shot, _wait_http, browser  # noqa: F401
from tests_paths import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def studio(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("studio") / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny")
    port = _free_port()
    env = {**os.environ, "FTSTUDIO_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "FTSTUDIO_WORKER_GPUS": "4x24", "FTSTUDIO_TEST_FAKE_TRAIN": "3:0.5"}
    env.pop("FTSTUDIO_REDIS_URL", None)
    log = home.parent / "serve.log"
    procs = []
    with open(log, "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port),
             "--home", str(home)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, procs[0], log)
        with open(home.parent / "worker.log", "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "jobs.worker", "--gpus", "0,1"],
                                          cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        yield {"url": url, "home": home, "model": home / "models" / "tiny", "env": env}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option).first.click()


def _estimate_says(page, text: str) -> None:
    page.wait_for_function(
        f"() => (document.querySelector('#parallel-advice')?.innerText || '').includes({text!r})",
        timeout=30_000)


def test_parallelism_section_advice_and_the_gpus_a_job_holds(studio, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    assert page.locator("#parallel-box").is_visible()
    assert "4 GPU(s) of 24 GB GPU" in page.locator("#parallel-box").inner_text()

    box = page.locator("#f-model-name input")
    box.click()
    box.fill("meta-llama/Llama-3.1-8B-Instruct")
    box.press("Enter")
    _estimate_says(page, "Fits on 1 GPU")               # LoRA of an 8B model on 24 GB
    page.get_by_role("radio", name="Full fine-tuning").click()
    _estimate_says(page, "per GPU with 1 GPU")
    page.locator("#f-train-batch-size input").fill("1")   # a typed value keeps over defaults
    page.locator("#f-train-batch-size input").press("Tab")
    _estimate_says(page, "Needs offload")   # 4 x 24 GB: even sharded 4 ways it is over
    advice = page.locator("#parallel-advice").inner_text()
    assert "per GPU with 1 GPU: DDP" in advice and "FSDP + offload" in advice
    page.locator("#f-parallel-gpus input").fill("4")
    page.locator("#f-parallel-gpus input").press("Tab")
    page.wait_for_function("() => document.querySelector('#parallel-advice')"
                           ".innerText.includes('with 4 GPUs')", timeout=30_000)
    _pick(page, "#f-parallel-strategy", "fsdp")
    page.locator("#parallel-box").scroll_into_view_if_needed()
    _shot(page, "train-parallel")

    # a 2-GPU job on the worker's pool: the queue shows what it holds, the job page too
    config = {"model": {"name": str(studio["model"])},
              "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128},
              "train": {"max_steps": 3, "eval_generate": "off"},
              "parallel": {"gpus": 2}}
    env = {**os.environ, **studio["env"]}
    path = studio["home"].parent / "two-gpus.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "app.cli", "submit", str(path), "--name",
                           "two-gpus"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    page.get_by_role("tab", name="Jobs").first.click()
    page.wait_for_function("() => document.body.innerText.includes('two-gpus')",
                           timeout=60_000)
    try:
        page.wait_for_function("() => document.querySelector('#jobs-table').innerText"
                               ".includes('0,1')", timeout=90_000)
    finally:
        _shot(page, "jobs-parallel")
    page.locator("#job-picker input").click()
    page.get_by_role("option").filter(has_text="two-gpus").first.click()
    page.wait_for_function("() => (document.querySelector('#job-header')?.innerText || '')"
                           ".includes('on GPU 0,1')", timeout=60_000)
    _shot(page, "jobs-parallel")
    assert not errors, errors

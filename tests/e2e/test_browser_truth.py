"""The studio tells the truth on every screen (issue 25), checked in a real browser as a person
would: the series each chart draws (counted in its SVG), which buttons are enabled, what the
texts say. One studio and one set of finished runs (two jobs and a 2-job sweep, trained by the
embedded worker) serve every test; the empty states are looked at before any job exists.

Run as: pytest -m e2e tests/e2e/test_browser_truth.py   (needs /usr/bin/chromium). Screenshots
of the job page, Compare, Sweeps and the evaluation card land in test-artifacts/e2e/truth-*.png
(and in $FTSTUDIO_SHOTS when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_browser import (ARTIFACTS, _free_port, _wait_http, browser, cli,  # noqa: F401
                          pick_model, upload_data, wait_job)
from tests_paths import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e

#: the runs' settings: a few steps on the tiny model, an end-of-run evaluation of 12 held-out
#: records (too few to tell anything, as the card must say)
RUN = ("data:\n  train: {examples}/alpaca.json\n  max_seq_len: 96\n  val_fraction: 0.05\n"
       "train:\n  max_steps: 6\n  batch_size: 4\n  eval_every: 2\n"
       "  eval_generate_max_new_tokens: 6\n")


@pytest.fixture(scope="module")
def studio(tiny_model, tmp_path_factory):
    """`ftstudio serve` of THIS checkout (python -m app.cli from the repo root, not an
    installed entry point) in a fresh home holding the tiny test model."""
    home = tmp_path_factory.mktemp("truth") / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny")
    port = _free_port()
    env = {**os.environ, "FTSTUDIO_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("FTSTUDIO_REDIS_URL", None)
    log = home.parent / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                                 "--home", str(home)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
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
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "truth-serve.log")


@pytest.fixture(scope="module")
def runs(studio, tmp_path_factory):
    """Two finished jobs (a, b) and a finished 2-job sweep, trained through the queue."""
    config = tmp_path_factory.mktemp("runs") / "run.yaml"
    config.write_text(f"model:\n  name: {studio['model']}\n" + RUN.format(examples=EXAMPLES),
                      encoding="utf-8")
    a = cli(studio, "submit", str(config), "--name", "truth-a").split()[2]
    b = cli(studio, "submit", str(config), "--name", "truth-b", "--set",
            "train.lr=1e-3").split()[2]
    sweep = json.loads(cli(studio, "sweep", str(config), "--grid", "train.lr=1e-3,3e-3",
                           "--name", "truth-sweep", "--json"))
    jobs = {"a": wait_job(studio, a), "b": wait_job(studio, b)}
    for job in sweep["jobs"]:
        jobs[job["name"]] = wait_job(studio, job["id"])
    assert {j["status"] for j in jobs.values()} == {"completed"}, jobs
    return {"jobs": jobs, "sweep": sweep["id"]}


def _page(studio, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page.goto(studio["url"])
    page.wait_for_selector("#start-btn", timeout=60_000)
    return page


def _shot(page, name: str, selector: str | None = None) -> None:
    """A screenshot (of one element, or the page) into the artifacts, and $FTSTUDIO_SHOTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"truth-{name}.png"
    if selector:
        page.locator(selector).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FTSTUDIO_SHOTS"):
        Path(os.environ["FTSTUDIO_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["FTSTUDIO_SHOTS"]) / path.name)


def series(page, selector: str) -> dict:
    """What a Vega chart draws, as a person sees it: the colours of its lines (of 2+ points)
    and of its points, and its legend's labels with whether each is inside the chart's box."""
    return page.evaluate("""(sel) => {
        const root = document.querySelector(sel);
        if (!root) return {lines: [], points: [], legend: [], clipped: []};
        const box = root.getBoundingClientRect();
        const lines = new Set(), points = new Set();
        for (const p of root.querySelectorAll('g.mark-line path')) {
            const s = p.getAttribute('stroke'), d = p.getAttribute('d') || '';
            if (s && s !== 'null' && s !== 'transparent' && (d.match(/L/g) || []).length >= 1)
                lines.add(s);
        }
        const none = (c) => !c || c === 'null' || c === 'transparent' || c === 'none';
        for (const p of root.querySelectorAll('g.mark-symbol path')) {
            const fill = p.getAttribute('fill'), c = none(fill) ? p.getAttribute('stroke') : fill;
            const o = parseFloat(p.getAttribute('opacity') ?? '1');
            if (!none(c) && o > 0) points.add(c);
        }
        const legend = [], clipped = [];
        for (const t of root.querySelectorAll('g.role-legend-label text')) {
            legend.push(t.textContent);
            const r = t.getBoundingClientRect();
            if (r.right > box.right + 1 || r.bottom > box.bottom + 1 || r.left < box.left - 1
                || t.textContent.endsWith('…')) clipped.push(t.textContent);
        }
        return {lines: [...lines], points: [...points], legend, clipped}; }""", selector)


def _open_job(page, job: dict) -> None:
    page.get_by_role("tab", name="Jobs").click()
    page.locator("#job-picker input").click()
    page.locator("#job-picker input").fill(job["name"])
    page.get_by_role("option", name=re.compile(re.escape(job["name"]) + r" ·")).first.click()
    page.wait_for_function(f"() => document.querySelector('#job-header')?.innerText"
                           f".includes('{job['name']}')", timeout=30_000)


def _enabled(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id}").is_enabled()


# --------------------------------------------------------------------------- before any job


def test_the_sweeps_tab_before_any_sweep_says_how_to_start_one(studio, browser):
    page = _page(studio, browser)
    page.get_by_role("tab", name="Sweeps").click()
    page.wait_for_selector("#sweep-empty", timeout=30_000)
    text = page.locator("#sweep-header").inner_text()
    assert "No sweep yet" in text and "Sweep" in text and "Train tab" in text
    assert "Sweep" in page.locator("#sweep-picker").inner_text()   # a labelled picker
    for button in ("sweep-cancel", "sweep-resume", "sweep-clone", "sweep-tb"):
        assert not _enabled(page, button), button
    assert not page.locator("#sweep-board").is_visible()          # no "1 2 3" headers
    assert not page.locator("#sweep-loss").is_visible()           # no blank charts
    page.close()


def test_a_refused_upload_clears_the_data_and_offers_a_column_mapping(studio, browser,
                                                                       tmp_path):
    page = _page(studio, browser)
    pick_model(page, studio["model"])
    upload_data(page, EXAMPLES / "alpaca.json", "alpaca")
    page.wait_for_function("() => document.querySelector('#data-report').innerText"
                           ".includes('240')", timeout=60_000)
    odd = tmp_path / "odd.csv"
    odd.write_text("question,answer\n" + "".join(f"What is {i} + 1?,{i + 1}\n"
                                                 for i in range(30)), encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.locator("#upload-data").click()
    chooser.value.set_files(str(odd))
    page.wait_for_function("() => document.querySelector('#upload-status')?.innerText"
                           ".includes('was not used')", timeout=60_000)
    note = page.locator("#upload-status").inner_text()
    assert "odd.csv was not used" in note and "question, answer" in note
    # the selection is cleared: nothing would train on the earlier file
    assert page.locator("#f-data-train input").input_value() == ""
    page.wait_for_function("() => !document.querySelector('#data-report').innerText"
                           ".includes('240')", timeout=30_000)
    assert "alpaca" not in page.locator("#data-report").inner_text()
    # map the columns: question is the instruction, answer the output
    page.locator("#column-shape").wait_for(timeout=10_000)
    assert page.locator("#column-0 input").input_value() == "question"
    assert page.locator("#column-2 input").input_value() == "answer"
    page.locator("#column-use").click()
    page.wait_for_function("() => document.querySelector('#upload-status')?.innerText"
                           ".includes('Using odd.csv')", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#data-report').innerText"
                           ".includes('alpaca')", timeout=60_000)
    page.get_by_text("More data settings").click()
    assert page.locator("#f-data-columns input, #f-data-columns textarea").first.input_value() \
        == "instruction=question, output=answer"
    assert "30" in page.locator("#data-report").inner_text()
    page.get_by_text("Settings as YAML").click()
    page.wait_for_function("() => document.querySelector('#command')?.innerText"
                           ".includes('data.columns=instruction=question,output=answer')",
                           timeout=15_000)                 # the CLI speaks it too
    assert not page.locator("#column-shape").is_visible()
    page.close()


def test_the_train_form_gives_advice_that_fits_the_machine_and_the_model(studio, browser):
    page = _page(studio, browser)
    pick_model(page, studio["model"])
    page.wait_for_selector("#estimate .fs-estimate", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#data-report').innerText"
                           ".includes('alpaca')", timeout=60_000)
    page.locator("#estimate details.fs-breakdown summary").click()
    assert "CUDA" not in page.locator("#estimate").inner_text()      # a CPU machine here
    lr = page.locator("#f-train-lr input")
    assert "suggested" not in page.locator("#estimate").inner_text(), lr.input_value()
    lr.fill("0.5")
    lr.press("Tab")
    page.wait_for_function("() => document.querySelector('#estimate').innerText"
                           ".includes('suggested')", timeout=30_000)
    text = page.locator("#estimate").inner_text()
    assert "5e-1" in text and "3e-3 suggested for lora" in text     # the demo model's recipe
    # a plain SFT file's preview has no "rejected" in its legend
    legend = page.locator(".fs-preview").first.inner_text()
    assert "trained" in legend and "rejected" not in legend
    page.close()


# --------------------------------------------------------------------------- finished runs


def test_every_chart_draws_every_series_with_a_readable_legend(studio, browser, runs):
    page = _page(studio, browser)
    a, b = runs["jobs"]["a"], runs["jobs"]["b"]
    _open_job(page, a)
    page.wait_for_function("() => document.querySelectorAll('#loss-plot g.mark-line path')"
                           ".length >= 3", timeout=30_000)
    drawn = series(page, "#loss-plot")
    assert len(drawn["lines"]) == 3, drawn                 # raw, smoothed, eval
    assert set(drawn["legend"]) == {"raw", "smoothed", "eval"} and not drawn["clipped"], drawn
    log = page.locator("#log-tail textarea")               # the log pane shows its tail
    page.wait_for_function("() => { const t = document.querySelector('#log-tail textarea');"
                           " return t && t.scrollHeight > t.clientHeight &&"
                           " t.scrollTop + t.clientHeight >= t.scrollHeight - 4; }",
                           timeout=10_000)
    assert "liger-kernel is not installed" not in log.input_value()   # no GPU advice on CPU
    _shot(page, "job-page", "#job-page")

    # Compare: the second job picked shows at once, each with its eval twin
    page.locator("#compare").get_by_text("Compare jobs").click()
    picker = page.locator("#compare-picker input")
    for job in (a, b):
        picker.click()
        picker.fill(job["name"])
        page.get_by_role("option", name=re.compile(re.escape(job["name"]) + r" ·")).first.click()
        page.wait_for_timeout(500)
    page.keyboard.press("Escape")
    page.wait_for_function("() => new Set([...document.querySelectorAll("
                           "'#compare-plot g.mark-line path')].map(p => p.getAttribute('stroke')"
                           ")).size >= 4", timeout=15_000)
    drawn = series(page, "#compare-plot")
    assert len(drawn["lines"]) == 4 and len(drawn["legend"]) == 4, drawn
    assert not drawn["clipped"], drawn
    page.locator("#compare").scroll_into_view_if_needed()
    _shot(page, "compare", "#compare")

    # Sweeps: both jobs' losses and the ranked metric (one eval value per job: points)
    page.get_by_role("tab", name="Sweeps").click()
    page.wait_for_function("() => document.querySelector('#sweep-header')?.innerText"
                           ".includes('truth-sweep')", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#sweep-curves g.mark-symbol "
                           "path').length >= 2", timeout=10_000)
    loss, ranked = series(page, "#sweep-loss"), series(page, "#sweep-curves")
    assert len(loss["lines"]) == 2 and not loss["clipped"], loss
    assert len(ranked["points"]) == 2 and set(ranked["legend"]) == set(loss["legend"]), ranked
    assert "6.000000" not in page.locator("#sweep-curves").inner_text()
    assert _enabled(page, "sweep-clone") and not _enabled(page, "sweep-cancel")
    assert not _enabled(page, "sweep-resume")              # nothing failed
    _shot(page, "sweeps")
    page.close()


def test_an_evaluation_of_few_records_says_it_cannot_tell(studio, browser, runs):
    page = _page(studio, browser)
    _open_job(page, runs["jobs"]["a"])
    page.locator("#eval-card").wait_for(timeout=30_000)
    card = page.locator("#eval-card")
    text = card.inner_text()
    assert "Too few records to tell" in text and "12 held-out records" in text, text
    assert "validation" in text and "Evaluate" in text                # what to do about it
    assert card.locator(".fs-tile.good").count() == 0                 # no green verdict
    page.locator("#eval-rows").scroll_into_view_if_needed()      # rows render when in view
    page.wait_for_function("() => document.querySelector('#eval-rows')?.innerText"
                           ".includes('still wrong')", timeout=30_000)   # the 12 answers
    card.scroll_into_view_if_needed()
    _shot(page, "eval-card", "#eval-panel")
    page.close()


def test_controls_times_and_messages_follow_the_jobs_state(studio, browser, runs):
    page = _page(studio, browser)
    a = runs["jobs"]["a"]
    _open_job(page, a)                                      # a finished job
    assert not _enabled(page, "cancel-job") and not _enabled(page, "resume-job")
    assert _enabled(page, "delete-job")

    # a long job started from the Train tab: its page opens at once, its controls fit it
    page.get_by_role("tab", name="Train").click()
    pick_model(page, studio["model"])
    page.wait_for_function("() => document.querySelector('#data-report').innerText"
                           ".includes('alpaca')", timeout=60_000)
    page.locator("#f-train-max-steps input").fill("400")
    page.locator("#f-train-max-steps input").press("Tab")
    page.locator("#job-name input").fill("truth-long")
    page.locator("#start-btn").click()
    page.locator("#job-page").wait_for(state="visible", timeout=60_000)
    seen = []                      # what the job panel shows from the moment it is in view
    for _ in range(100):
        seen.append(page.locator("#job-header").inner_text())
        if "truth-long" in seen[-1]:
            break
        page.wait_for_timeout(100)
    # the started job within a moment of the page showing (it used to stay on the old job for
    # seconds); a loaded browser may still paint the old header for one frame before it
    assert "truth-long" in seen[-1] and len(seen) <= 10, seen
    # then it stays: a poll of the old job already in flight when Start was pressed may paint
    # it once more (for one tick, TICK s), never longer
    held, stale = 0, []
    for _ in range(60):
        page.wait_for_timeout(100)
        shown = page.locator("#job-header").inner_text()
        held = held + 1 if "truth-long" in shown else 0
        stale += [shown] if "truth-a" in shown else []
        if held >= 15:
            break
    assert held >= 15 and len(stale) <= 20, stale     # at most one tick (TICK = 1.5 s)
    header = page.locator("#job-header").inner_text()
    job_id = re.search(r"#(\w+) truth-long", header).group(1)
    assert not _enabled(page, "resume-job")
    assert "waiting for" in page.locator("#loss-plot").inner_text()   # not a blank box
    page.wait_for_function("() => document.querySelector('#job-header')?.innerText"
                           ".includes('running')", timeout=60_000)
    assert _enabled(page, "cancel-job") and not _enabled(page, "delete-job")

    # one ETA: the table and the progress bar agree, measured from the job's own steps
    def etas():
        table = page.locator("#jobs-table").inner_text()
        row = re.search(r"truth-long.*?\d+/\d+\s+((?:\d+[hms]\s*)+)", table, re.S)
        return (row.group(1).strip() if row else "",
                re.search(r"ETA ([\dhms ]+)", page.locator("#job-progress").inner_text()))

    def seconds(text: str) -> int:
        return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in
                   re.findall(r"(\d+)([hms])", text))

    page.wait_for_function("() => /step (1[0-9]|[2-9][0-9])/.test("
                           "document.querySelector('#job-progress')?.innerText)",
                           timeout=120_000)
    page.wait_for_timeout(4_500)                            # a table refresh after that
    table_eta, bar = etas()
    assert bar and table_eta, (table_eta, page.locator("#job-progress").inner_text())
    assert abs(seconds(table_eta) - seconds(bar.group(1))) <= 6, (table_eta, bar.group(1))

    # cancel it: the buttons, the banner and the Train tab's note follow
    page.locator("#cancel-job").click()
    page.wait_for_function("() => document.querySelector('#job-header')?.innerText"
                           ".includes('cancelled')", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#resume-job').disabled",
                           timeout=10_000)
    assert _enabled(page, "resume-job") and not _enabled(page, "cancel-job")
    assert "ftstudio jobs resume" not in page.locator("#job-header").inner_text()
    assert "Resume" in page.locator("#job-header").inner_text()
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function(f"() => document.querySelector('#start-status')?.innerText"
                           f".includes('Job {job_id} was cancelled')", timeout=15_000)
    assert "queued" not in page.locator("#start-status").inner_text()
    page.close()


def test_downloads_take_one_click(studio, browser, runs):
    page = _page(studio, browser)
    _open_job(page, runs["jobs"]["b"])
    page.wait_for_function("() => document.querySelector('#job-progress')?.innerText"
                           ".includes('step')", timeout=30_000)
    fetched = []
    page.on("download", lambda d: fetched.append(d.suggested_filename))
    page.locator("#dl-csv").click()                          # one click, nothing more
    page.wait_for_selector("#downloads a[download]", timeout=90_000)
    page.wait_for_function("() => true", timeout=1_000)
    for _ in range(50):
        if fetched:
            break
        page.wait_for_timeout(200)
    assert fetched and fetched[0].endswith("-metrics.csv"), fetched
    button = page.locator("#export-adapter")
    assert button.inner_text().startswith("⇩")             # reads as a download, not upload
    button.click()
    page.locator("#export-files").scroll_into_view_if_needed()
    cell = page.locator("#export-files [role=gridcell], #export-files td").filter(
        has_text=".zip").first
    cell.wait_for(timeout=120_000)
    with page.expect_download(timeout=90_000) as got:
        cell.click()
    assert got.value.suggested_filename.endswith(".zip")
    page.close()

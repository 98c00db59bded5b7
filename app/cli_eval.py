"""`ftstudio eval`: queue a generation evaluation of a finished job (jobs.api.evaluate), follow
it, and print what it found: base vs tuned, per metric, with 95% intervals.

Run as: ftstudio eval JOB [--data FILE] [--max-new-tokens N] [--max-records N] [--json]
        ftstudio eval JOB --no-wait      (print the eval job's id and return)
"""

from __future__ import annotations

import json
import sys

import click

from app.cli_common import clean_errors


@click.command("eval")
@click.argument("job")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Evaluate on this file (.json, .jsonl, .csv, .parquet in any supported "
                   "format) instead of the job's validation split.")
@click.option("--max-new-tokens", type=int, default=None,
              help="Longest answer in tokens (default: 1.25 x the longest reference + 16, at "
                   "most 256).")
@click.option("--max-records", type=int, default=None,
              help="Answer at most this many records (default: the job's "
                   "train.eval_generate_max, 100).")
@click.option("--no-wait", is_flag=True, help="Queue it, print the eval job's id and return.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the evaluation (summary and rows) as JSON instead of a table.")
def evaluate(job: str, data: str | None, max_new_tokens: int | None, max_records: int | None,
             no_wait: bool, as_json: bool) -> None:
    """Answer JOB's held-out prompts with the base and the tuned model and score both.

    A worker runs it (`ftstudio worker`, or the one inside `ftstudio serve`); the result is
    stored with JOB and shown on its page in the studio."""
    from app.cli_export import _follow
    from jobs import api

    with clean_errors():
        ev = api.evaluate(job, data=data, max_new_tokens=max_new_tokens,
                          max_records=max_records)
    if no_wait:
        click.echo(json.dumps(ev, default=str) if as_json else
                   f"queued eval job {ev['id']} of job {job}; follow it with "
                   f"`ftstudio jobs logs {ev['id']} --follow`")
        return
    if not as_json:
        click.echo(f"queued eval job {ev['id']} of job {job}; waiting for a worker")
    done = _follow(ev["id"]) if not as_json else _wait(ev["id"])
    if done["status"] != "completed":
        click.echo(f"eval job {ev['id']} {done['status']}: {done.get('error') or ''}".rstrip(),
                   err=as_json)
        if done.get("hint"):
            click.echo(f"hint: {done['hint']}", err=as_json)
        sys.exit(1)
    eval_id = (done.get("result") or {}).get("eval_id")
    with clean_errors():
        found = api.job_eval(job, eval_id)
    if as_json:
        click.echo(json.dumps(found, default=str, ensure_ascii=False))
        return
    click.echo("")
    click.echo(table(found["eval"]))


def _wait(job_id: str, every_s: float = 1.0) -> dict:
    import time

    from app.cli_export import FINISHED
    from jobs import api

    while True:
        job = api.get(job_id)
        if job["status"] in FINISHED:
            return job
        time.sleep(every_s)


def table(record: dict) -> str:
    """The evaluation as a few lines: the card, then each metric base -> tuned with intervals."""
    from engine.evaluation.evaluate import card_line
    from engine.evaluation.metrics import METRIC_INFO, metric_info  # noqa: F401

    def show(name: str, value) -> str:
        if value is None:
            return "-"
        return f"{value * 100:.1f}%" if metric_info(name)["scale"] == "share" else f"{value:.1f}"

    def span(name: str, ci) -> str:
        return f"[{show(name, ci[0])}, {show(name, ci[1])}]" if ci else ""

    lines = [card_line(record), f"source: {record.get('source')}", "",
             f"{'metric':<12} {'base':>8} {'tuned':>8} {'change':>8}  95% CI of the change"]
    for name, m in record["metrics"].items():
        delta = m.get("delta")
        change = "-" if delta is None else (f"{delta * 100:+.1f}" if metric_info(name)[
            "scale"] == "share" else f"{delta:+.1f}")
        lines.append(f"{metric_info(name)['label']:<12} {show(name, m.get('base')):>8} "
                     f"{show(name, m['tuned']):>8} {change:>8}  "
                     f"{span(name, m.get('delta_ci')) if delta is not None else ''}")
    return "\n".join(lines)

"""`ftstudio export`: a thin command over engine.export.export, run here or queued as a job.

Run as: ftstudio export JOB --format gguf-q8_0 [--out PATH] [--no-verify]   (JOB: id or folder)
        ftstudio export JOB --format gguf-q8_0 --queue [--wait]  (a worker runs it: jobs.api.export)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from app.cli_common import clean_errors
from engine.export import FORMATS

from jobs.api import FINISHED  # noqa: E402 - the one list of a finished job's statuses


def _run_dir(job: str) -> Path:
    """JOB as a run folder: a path, or a job id whose output folder the queue knows."""
    path = Path(job)
    if path.is_dir():
        return path
    from jobs import api

    try:
        record = api.get(job)
    except api.JobError as exc:
        raise click.ClickException(f"{job} is neither a run folder nor a job: {exc}") from None
    if not record.get("output_dir"):
        raise click.ClickException(f"job {job} has no output folder yet (status: "
                                   f"{record.get('status', 'unknown')})")
    return Path(record["output_dir"])


@click.command("export")
@click.argument("job")
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)),
              help="adapter (PEFT folder + zip), merged (safetensors), bnb4/bnb8 "
                   "(bitsandbytes-quantized), gguf-f16/gguf-q8_0/gguf-q4_0 (llama.cpp, Ollama).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the run folder's exports/FORMAT).")
@click.option("--queue", "queued", is_flag=True,
              help="Queue it as an export job of JOB (a job id) for a worker, print the export "
                   "job's id, and record the files on JOB's page. Not with --out.")
@click.option("--wait", is_flag=True,
              help="With --queue: print the export job's log until it ends (exit 0 only when "
                   "it completed), then its files.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Skip the check of the written files against the tuned model (loading them "
                   "in their runtime and comparing answers, logits, tokens and templates); the "
                   "export's record says it was not verified.")
def export(job: str, fmt: str, out: str | None, queued: bool, wait: bool,
           no_verify: bool) -> None:
    """Export a finished run (a run folder, or a job id) for use in other tools, then verify
    the files in the runtime they are for."""
    if queued:
        _queue(job, fmt, out, wait, verify=not no_verify)
        return
    if wait:
        raise click.UsageError("--wait follows a queued export; add --queue")
    from engine.export import ExportError, export as run_export

    with clean_errors(ExportError):
        result = run_export(_run_dir(job), fmt, out, log=click.echo, verify=not no_verify)
    for artifact in result.artifacts:
        click.echo(f"{artifact.bytes:>14,}  {artifact.path}")
    _echo_verification(result.verification)


def _echo_verification(record: dict | None) -> None:
    from engine.export import verification_line

    click.echo(verification_line(record))
    record = record or {}
    for check in record.get("checks") or record.get("failed") or []:
        if not check.get("ok"):
            click.echo(f"  {check['runtime']} · {check['name']}: {check['detail']}")


def _queue(job: str, fmt: str, out: str | None, wait: bool, verify: bool = True) -> None:
    from jobs import api

    if out is not None:
        raise click.UsageError("--out is for an export run here; a queued export goes into "
                               "the job's exports/FORMAT folder")
    with clean_errors():
        exp = api.export(job, fmt, verify=verify)
    click.echo(f"queued export job {exp['id']} ({fmt} of job {job}); follow it with "
               f"`ftstudio jobs logs {exp['id']} --follow`")
    if not wait:
        return
    done = _follow(exp["id"])
    if done["status"] != "completed":
        click.echo(f"export job {exp['id']} {done['status']}: {done.get('error') or ''}".rstrip())
        if done.get("hint"):
            click.echo(f"hint: {done['hint']}")
        sys.exit(1)
    for artifact in api.artifacts(job):
        if artifact["kind"] == "export" and artifact["meta"].get("export_job") == exp["id"]:
            click.echo(f"{artifact['size']:>14,}  {api.artifact_path(job, artifact['path'])}")
    _echo_verification((done.get("result") or {}).get("verification"))


def _follow(job_id: str, every_s: float = 1.0) -> dict:
    """Print a job's log lines until it has finished and they are all printed; the job."""
    from jobs import api

    since = 0
    while True:
        job = api.get(job_id)  # read before the lines: none written before the end is missed
        for event in api.logs(job_id, since):
            since = event["id"]
            click.echo(("* " if event["level"] == "status" else "") + event["line"])
        if job["status"] in FINISHED:
            return job
        time.sleep(every_s)

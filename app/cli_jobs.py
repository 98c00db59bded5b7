"""The queue's commands: `ftstudio worker`, `ftstudio submit`, `ftstudio jobs ...`; each a thin
wrapper over one jobs function (registered on the `ftstudio` group in app/cli.py).

Run as: ftstudio worker --help · ftstudio submit --help · ftstudio jobs --help
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

import click

from app.cli_common import clean_errors

from jobs.api import FINISHED, STATUSES  # noqa: E402 - the job statuses, defined once
from jobs.bundles import KINDS as BUNDLES  # the job page's downloads, by name


def _echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _progress(job: dict) -> str:
    if job.get("total_steps"):
        return f"{job['step']}/{job['total_steps']} ({job['progress'] * 100:.0f}%)"
    return f"{job['step']}" if job.get("step") else "-"


# --------------------------------------------------------------------------- worker, submit


@click.command()
@click.option("--gpus", default=None, metavar="0,1",
              help="GPUs this worker owns; a job gets them all (accelerate launch over several), "
                   "or they are split between --workers. Default: leave devices alone.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Jobs this worker runs at once.")
@click.option("--no-resume", is_flag=True,
              help="Do not resume jobs that a crash or shutdown interrupted (also: "
                   "FTSTUDIO_AUTO_RESUME=0).")
@click.option("--remote", is_flag=True,
              help="A worker on another machine than the studio's: needs only "
                   "FTSTUDIO_REDIS_URL and the shared files (FTSTUDIO_HOME), reports through "
                   "Redis and never opens studio.db (docs/deploy.md, Several machines).")
def worker(gpus: str | None, workers: int, no_resume: bool, remote: bool) -> None:
    """Run a worker for the job queue (SQLite under FTSTUDIO_HOME, or FTSTUDIO_REDIS_URL).
    Ctrl-C lets running jobs checkpoint; they resume when a worker starts again."""
    from jobs.worker import parse_gpus, run_worker

    with clean_errors():
        run_worker(parse_gpus(gpus), workers, auto_resume=not no_resume, remote=remote)


@click.command()
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.lr=1e-4.")
@click.option("--priority", default=0, show_default=True, type=int,
              help="Higher starts first among queued jobs.")
@click.option("--name", default=None, help="A name to find the job by (default: its id).")
@click.option("--owner", default="local", show_default=True, help="Who the job belongs to.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def submit(config_path: str, overrides: tuple[str, ...], priority: int, name: str | None,
           owner: str, as_json: bool) -> None:
    """Queue a training job for a worker; prints its id. output_dir is set by the queue."""
    from engine.config import load_config
    from jobs import api

    with clean_errors():
        job = api.submit(load_config(config_path, list(overrides)), owner=owner,
                         priority=priority, name=name)
    if as_json:
        _echo_json(job)
    else:
        click.echo(f"queued job {job['id']} ({job['name']}); follow it with "
                   f"`ftstudio jobs logs {job['id']} --follow`")


# --------------------------------------------------------------------------- jobs


@click.group("jobs")
def jobs_group() -> None:
    """List, inspect, follow, cancel and resume queued jobs."""


@jobs_group.command("ls")
@click.option("--status", default=None, help="Only jobs with this status.",
              type=click.Choice(STATUSES))
@click.option("--owner", default=None, help="Only this owner's jobs.")
@click.option("--limit", default=50, show_default=True, type=int, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def jobs_ls(status: str | None, owner: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    from jobs import api

    with clean_errors():
        jobs = api.list_jobs(owner=owner, status=status, limit=limit)
    if as_json:
        _echo_json(jobs)
        return
    if not jobs:
        click.echo("no jobs; queue one with `ftstudio submit CONFIG.yaml`")
        return
    rows = [("ID", "NAME", "STATUS", "STEP", "PRIO", "OWNER", "CREATED")] + [
        (j["id"], j["name"][:24], j["status"], _progress(j), str(j["priority"]), j["owner"],
         _when(j["created_at"])) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def jobs_show(job_id: str, as_json: bool) -> None:
    """Show one job: status, progress, error and hint, outputs, last metrics."""
    from jobs import api

    with clean_errors():
        job = api.get(job_id)
        last = api.metrics(job_id)[-3:]
    if as_json:
        _echo_json({**job, "last_metrics": last})
        return
    for key in ("id", "name", "owner", "status", "priority", "attempt"):
        click.echo(f"{key + ':':12} {job[key]}")
    click.echo(f"{'progress:':12} {_progress(job)}")
    for key in ("created_at", "started_at", "finished_at"):
        click.echo(f"{key.removesuffix('_at') + ':':12} {_when(job[key])}")
    parallel = (job.get("config") or {}).get("parallel") or {}
    if job["kind"] == "train" and (job.get("gpus") or int(parallel.get("gpus") or 1) > 1):
        click.echo(f"{'gpus:':12} {job.get('gpus') or 'waits for ' + str(parallel['gpus'])} "
                   f"({parallel.get('strategy', 'auto')})")
    if job.get("parent") and job["kind"] == "train":
        click.echo(f"{'continues:':12} job {job['parent']} (its adapter merged into the start)")
    for key in ("error", "hint", "output_dir", "adapter_dir"):
        if job.get(key):
            click.echo(f"{key + ':':12} {job[key]}")
    verification = (job.get("result") or {}).get("verification")
    if verification:   # an export job: whether its files behave like the tuned model
        click.echo(f"{'verified:':12} {verification.get('line')}")
        for check in verification.get("failed") or []:
            click.echo(f"{'':12}   {check['runtime']} · {check['name']}: {check['detail']}")
    if job.get("result"):
        click.echo(f"{'result:':12} {json.dumps(job['result'])}")
    for rec in last:
        click.echo("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in rec.items()))


@jobs_group.command("bundle")
@click.argument("job_id")
@click.argument("kind", type=click.Choice(list(BUNDLES)))
@click.option("--which", default="all", show_default=True,
              help="answers: which rows of the newest evaluation (all, changed, still wrong, "
                   "got worse).")
def jobs_bundle(job_id: str, kind: str, which: str) -> None:
    """Write one of the job page's downloads into the job's exports/ folder and print its path:
    adapter (zip), run (config, run.json, metrics, log as a zip), metrics (CSV), answers (the
    newest evaluation as CSV). The studio's download buttons write the same files."""
    from jobs import bundles

    with clean_errors(FileNotFoundError):
        click.echo(bundles.make(job_id, kind, which=which))


@jobs_group.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until it ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs_logs(job_id: str, follow: bool, as_json: bool) -> None:
    """Print a job's log lines and status changes."""
    from jobs import api

    since = 0
    with clean_errors():
        while True:
            for ev in api.logs(job_id, since):
                since = ev["id"]
                click.echo(json.dumps(ev) if as_json else
                           f"{_when(ev['time'])}  {'* ' if ev['level'] == 'status' else ''}"
                           f"{ev['line']}")
            if not follow:
                return
            job = api.get(job_id)
            if job["status"] in FINISHED:
                if not api.logs(job_id, since):
                    if job.get("hint") and not as_json:
                        click.echo(f"hint: {job['hint']}")
                    sys.exit(0 if job["status"] == "completed" else 1)
                continue
            time.sleep(1)


@jobs_group.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one never starts; a running one checkpoints and stops."""
    from jobs import api

    with clean_errors():
        job = api.cancel(job_id)
    if as_json:
        _echo_json(job)
    elif job["status"] == "running":
        click.echo(f"cancel requested: job {job_id} saves a checkpoint and stops at its next "
                   "step")
    else:
        click.echo(f"job {job_id} cancelled")


@jobs_group.command("resume")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def jobs_resume(job_id: str, as_json: bool) -> None:
    """Queue an interrupted, failed or cancelled job again; it continues from its last
    checkpoint."""
    from jobs import api

    with clean_errors():
        job = api.resume(job_id)
    if as_json:
        _echo_json(job)
    elif job["kind"] != "train":     # an export or eval job has no checkpoints: it runs again
        click.echo(f"{job['kind']} job {job_id} queued again (it starts over)")
    else:
        resume = job["config"]["train"].get("resume_from")
        click.echo(f"job {job_id} queued again" + (" from its last checkpoint" if resume
                                                   else " (no checkpoint: starting over)"))


@jobs_group.command("delete")
@click.argument("job_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def jobs_delete(job_id: str, yes: bool) -> None:
    """Delete a job that is not running: its rows and its folder (checkpoints, adapter)."""
    from jobs import api

    if not yes:
        click.confirm(f"Delete job {job_id} and all its files?", abort=True)
    with clean_errors():
        api.delete(job_id)
    click.echo(f"job {job_id} deleted")


@jobs_group.command("continue")
@click.argument("job_id")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Preference data: prompt/chosen/rejected records (prompt/completion/label "
                   "for kto; prompts for grpo).")
@click.option("--objective", default="dpo", show_default=True,
              type=click.Choice(["dpo", "orpo", "simpo", "kto", "grpo"]),
              help="train.objective (grpo needs --set train.rewards=[...]).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key of the new job, e.g. --set train.beta=0.2.")
@click.option("--name", default=None, help="The new job's name (default: SFT name-objective).")
@click.option("--json", "as_json", is_flag=True, help="Print the new job as JSON.")
def jobs_continue(job_id: str, data: str, objective: str, overrides: tuple[str, ...],
                  name: str | None, as_json: bool) -> None:
    """Continue a finished SFT job with preference tuning: a new job that trains a fresh
    adapter on the SFT model (the SFT adapter merged into its base, which is also the
    reference), with the SFT job's settings and a tenth of its lr."""
    from jobs.continuation import continue_with_preference

    with clean_errors():
        job = continue_with_preference(job_id, data, objective, name=name,
                                       overrides=list(overrides))
    if as_json:
        _echo_json(job)
    else:
        click.echo(f"queued job {job['id']} ({job['name']}): {objective} from job {job_id}'s "
                   f"model; follow it with `ftstudio jobs logs {job['id']} --follow`")

"""`ftstudio prune`: make a model smaller (jobs.prune_job.submit_prune): drop the layers that
change the hidden state least, or narrow the MLPs, then optionally heal it by distillation from
the original in a training job of its own.

Run as: ftstudio prune SOURCE --drop-layers N | --param-budget X [--by layers|mlp]
                       [--data FILE] [--name NAME] [--heal-steps N] [--no-wait] [--json]
SOURCE: a finished training job's id (its merged model), a model folder, or a hub id.
"""

from __future__ import annotations

import json
import sys

import click

from app.cli_common import clean_errors


@click.command("prune")
@click.argument("source")
@click.option("--drop-layers", type=int, default=None,
              help="Remove this many consecutive decoder layers: the block whose output "
                   "differs least from its input on the calibration data.")
@click.option("--param-budget", default=None,
              help="Prune until the model has at most this many parameters: a count (100M, "
                   "1.5B) or a share of it (0.75, 75%).")
@click.option("--by", type=click.Choice(["layers", "mlp"]), default="layers",
              help="With --param-budget: drop layers (default) or narrow every MLP.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Calibration (and healing) data in any training format; default: the "
                   "bundled example for calibration, the source job's data for healing.")
@click.option("--name", default=None,
              help="Folder name of the pruned model under FTSTUDIO_HOME/models "
                   "(default: SOURCE-pruned).")
@click.option("--heal-steps", type=int, default=None,
              help="Then heal it: a training job distills the pruned model from the original "
                   "for this many steps, evaluated teacher vs student.")
@click.option("--no-wait", is_flag=True, help="Queue it, print the job's id and return.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON.")
def prune(source: str, drop_layers: int | None, param_budget: str | None, by: str,
          data: str | None, name: str | None, heal_steps: int | None, no_wait: bool,
          as_json: bool) -> None:
    """Make SOURCE smaller: a pruned model folder usable as a base, with a card of what was
    removed; with --heal-steps, a healing distillation job follows.

    A worker runs it (`ftstudio worker`, or the one inside `ftstudio serve`)."""
    from app.cli_eval import _wait
    from jobs.prune_job import submit_prune

    with clean_errors():
        job = submit_prune(source, drop_layers=drop_layers, param_budget=param_budget, by=by,
                           data=data, name=name,
                           heal={"steps": heal_steps} if heal_steps else None)
    if no_wait:
        click.echo(json.dumps(job, default=str) if as_json else
                   f"queued prune job {job['id']}; follow it with `ftstudio jobs logs "
                   f"{job['id']} --follow`")
        return
    if not as_json:
        click.echo(f"queued prune job {job['id']}; waiting for a worker")
    done = _wait(job["id"])
    if as_json:
        click.echo(json.dumps(done, default=str))
    if done["status"] != "completed":
        click.echo(f"prune job {job['id']} {done['status']}: {done.get('error') or ''}".rstrip(),
                   err=True)
        if done.get("hint"):
            click.echo(f"hint: {done['hint']}", err=True)
        sys.exit(1)
    if not as_json:
        r = done["result"]
        click.echo(f"pruned: {r['folder']} ({r['params_before']:,} -> {r['params_after']:,} "
                   "parameters); use it as model.name")
        if r.get("heal_job"):
            click.echo(f"healing: job {r['heal_job']} (`ftstudio jobs logs {r['heal_job']} "
                       "--follow`, then `ftstudio eval`/`ftstudio export` it)")

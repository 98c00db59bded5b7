"""Sweeps from the command line: `ftstudio sweep` queues one job per point as a group,
`ftstudio sweeps ls|show|cancel|resume` follow and steer groups; thin wrappers over jobs.sweeps
(registered on the `ftstudio` group in app/cli.py).

Run as: ftstudio sweep CONFIG.yaml --grid train.lr=1e-4,2e-4 --grid method.r=8,16
        ftstudio sweeps show SWEEP_ID [--metric eval_loss]
"""

from __future__ import annotations

import json

import click

from app.cli_common import clean_errors


def _steps(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give whole steps such as 20,40",
                                 param_hint="--halving-steps") from None


@click.command()
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--grid", "grid", multiple=True, metavar="KEY=VALUES", required=True,
              help="A setting to vary and its values: a list (train.lr=1e-4,2e-4), or a range "
                   "(method.r=8..32 step 8, train.lr=1e-5..1e-3 log 3). Repeat for more "
                   "settings; every combination is a job.")
@click.option("--random", "random_n", type=int, default=None, metavar="N",
              help="Queue N points drawn at random from the grid instead of all of them.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of --random.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key for every job, as for `ftstudio submit`.")
@click.option("--priority", default=0, show_default=True, type=int,
              help="Priority of the sweep's jobs; the k-th is queued a fraction lower, so a "
                   "single job of the same priority does not wait behind the sweep.")
@click.option("--name", default=None, help="The group's name (jobs are NAME-1, NAME-2, ...).")
@click.option("--halving-steps", default=None, metavar="20,40",
              help="Successive halving: at each step, stop the worse half of the jobs still "
                   "running by eval loss (each step a multiple of train.eval_every). Off by "
                   "default.")
@click.option("--owner", default="local", show_default=True, help="Who the sweep belongs to.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
def sweep(config_path: str, grid: tuple[str, ...], random_n: int | None, seed: int,
          overrides: tuple[str, ...], priority: int, name: str | None,
          halving_steps: str | None, owner: str, as_json: bool) -> None:
    """Queue one training job per point of a grid as a sweep group; every point is checked
    before any job is queued, and every problem is listed at once."""
    from engine.config import load_config
    from jobs import sweeps

    steps = _steps(halving_steps)
    with clean_errors():
        group = sweeps.submit(load_config(config_path, list(overrides)), list(grid),
                              random=random_n, seed=seed, priority=priority, name=name,
                              halving_steps=steps, owner=owner)
    if as_json:
        click.echo(json.dumps(group, indent=2, default=str))
        return
    click.echo(f"queued sweep {group['id']} ({group['name']}): {len(group['jobs'])} jobs")
    for job in group["jobs"]:
        click.echo(f"  {job['id']}  {job['name']}  " + ", ".join(
            f"{k}={v}" for k, v in job["sweep_point"].items()))
    click.echo(f"follow it with `ftstudio sweeps show {group['id']}`")


@click.group("sweeps")
def sweeps_group() -> None:
    """List sweep groups, show a leaderboard, cancel the rest, resume the failed."""


@sweeps_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the sweeps as JSON.")
def sweeps_ls(as_json: bool) -> None:
    """List sweep groups, newest first."""
    from jobs import sweeps

    with clean_errors():
        found = sweeps.list_sweeps()
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if not found:
        click.echo("no sweeps; queue one with `ftstudio sweep CONFIG.yaml --grid KEY=V1,V2`")
    for s in found:
        click.echo(f"{s['id']}  {s['name']}  {s['jobs']} jobs  {s['owner']}  "
                   f"varies {', '.join(s['keys'])}")


@sweeps_group.command("show")
@click.argument("sweep_id")
@click.option("--metric", default="eval_loss", show_default=True,
              help="Rank by this metric (eval_loss, eval_token_accuracy, gen_exact_match ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
def sweeps_show(sweep_id: str, metric: str, as_json: bool) -> None:
    """The leaderboard: the group's jobs best first, with their varied settings."""
    from jobs import sweeps

    with clean_errors():
        board = sweeps.leaderboard(sweep_id, metric)
    if as_json:
        click.echo(json.dumps(board, indent=2, default=str))
        return
    keys = board["keys"]
    rows = [("#", "JOB", "STATUS", "STEP", metric.upper(), *keys)] + [
        (str(r["rank"] or "-"), r["job_id"], r["status"] + (f" (cut at {r['cut_at']})"
                                                           if r["cut_at"] else ""),
         f"{r['step']}/{r['total_steps'] or '?'}",
         "-" if r["value"] is None else f"{r['value']:.4g}", *(str(r[k]) for k in keys))
        for r in board["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"sweep {board['sweep']['id']} ({board['sweep']['name']}), by {metric}")
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@sweeps_group.command("cancel")
@click.argument("sweep_id")
def sweeps_cancel(sweep_id: str) -> None:
    """Cancel every job of the group that has not ended."""
    from jobs import sweeps

    with clean_errors():
        done = sweeps.cancel_rest(sweep_id)
    click.echo(f"cancelled {len(done)} job(s) of sweep {sweep_id}")


@sweeps_group.command("resume")
@click.argument("sweep_id")
def sweeps_resume(sweep_id: str) -> None:
    """Queue the group's failed (and interrupted) jobs again, from their checkpoints."""
    from jobs import sweeps

    with clean_errors():
        again = sweeps.resume_failed(sweep_id)
    click.echo(f"queued {len(again)} job(s) of sweep {sweep_id} again")

"""The `ftstudio` command line: each command a thin wrapper over one engine or jobs function.

Run as: ftstudio --help      (installed by `pip install -e .`; or python -m app.cli --help)
"""

from __future__ import annotations

import json
import sys

import click

from app.cli_common import clean_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ftstudio")
def cli() -> None:
    """ftstudio: fine-tune language models with LoRA, DoRA, QLoRA, prompt/prefix tuning, IA3 or
    full fine-tuning, from the command line or the browser studio."""


# --------------------------------------------------------------------------- train


@cli.command()
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.lr=1e-4 --set method.kind=qlora.")
def train(config_path: str, overrides: tuple[str, ...]) -> None:
    """Train in this process with a progress bar. Ctrl-C saves a checkpoint and says how to
    resume."""
    from app.progress import ConsoleReporter
    from engine.config import check, load_config
    from engine.data import DataError
    from engine.training.loop import run

    with clean_errors():
        cfg = check(load_config(config_path, list(overrides)), require_output_dir=True)
    reporter = ConsoleReporter()
    try:
        with clean_errors(DataError):
            result = run(cfg, reporter)
    finally:
        reporter.close()
    if result.cancelled:
        click.echo(f"Stopped at step {result.steps}; checkpoint saved. Resume with:\n"
                   f"  ftstudio train {config_path} "
                   + " ".join(f"--set {o}" for o in overrides if not o.startswith("train.resume_from"))
                   + " --set train.resume_from=latest")
        sys.exit(130)
    click.echo(f"Done: {result.steps} steps. Adapter: {result.adapter_dir}")
    if result.metrics:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
        click.echo("Final metrics: " + json.dumps(shown))


# --------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Inspect datasets before training on them."""


@data.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", default=None,
              help="Count tokens with this model's tokenizer (hub id or local folder); without "
                   "it, words are counted.")
@click.option("--format", "fmt", default=None,
              help="Record format: auto, alpaca, chat, sharegpt, completion, text, preference "
                   "or kto "
                   "(default: auto, or the --config's data.format).")
@click.option("--max-seq-len", default=None, type=int,
              help="Token limit used to count truncated records (default: 512, or the "
                   "--config's data.max_seq_len).")
@click.option("--on-bad-record", type=click.Choice(["error", "skip"]), default=None,
              help="What a malformed record does to a training (data.on_bad_record): error, "
                   "the default, exits 1 naming each bad line; skip reports them, exits 0.")
@click.option("--config", "config_path", metavar="CONFIG.yaml", default=None,
              type=click.Path(dir_okay=False),
              help="Check with this config's data settings (the options above override them).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(file: str, model_name: str | None, fmt: str | None, max_seq_len: int | None,
               on_bad_record: str | None, config_path: str | None, as_json: bool) -> None:
    """The dataset report: format, counts, token lengths, duplicates, problems with line
    numbers. Exits 1 when no record is usable, or when a record is bad and
    data.on_bad_record is error (a training would stop at it)."""
    import dataclasses

    from engine.config import DataConfig, load_config
    from engine.data import DataError, data_report, format_report

    given = {"format": fmt, "max_seq_len": max_seq_len, "on_bad_record": on_bad_record}
    with clean_errors():
        settings = load_config(config_path).data if config_path else DataConfig()
        settings = dataclasses.replace(settings, train=file,
                                       **{k: v for k, v in given.items() if v is not None})
    tokenizer = None
    if model_name:
        from engine.models.load import load_tokenizer

        with clean_errors(OSError):
            tokenizer = load_tokenizer(model_name)
    with clean_errors(DataError):
        report = data_report(file, tokenizer, settings)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if report.used == 0:
        sys.exit(1)
    if report.skipped_bad and settings.on_bad_record == "error":
        raise click.ClickException(_bad_records(file, report))


def _bad_records(file: str, report) -> str:
    """Why `data check` fails a file whose bad records would stop a training: each bad line."""
    places = [m.removeprefix(f"{file} ").split(": ", 1)[0] for m in report.bad_examples]
    more = report.skipped_bad - len(places)
    n = report.skipped_bad
    return (f"{n} bad record{'s' if n != 1 else ''} would stop a training with "
            f"data.on_bad_record: error: {', '.join(places)}"
            + (f" and {more} more" if more > 0 else "")
            + "; fix them, or leave them out with --on-bad-record skip "
              "(data.on_bad_record: skip)")


# --------------------------------------------------------------------------- models and config


@cli.command("demo-model")
@click.argument("directory", default="studio-data/models/demo", required=False)
@click.option("--size", type=click.Choice(["demo", "tiny"]), default="demo", show_default=True,
              help="demo: 3M parameters, trains visibly on a laptop; tiny: for tests.")
def demo_model(directory: str, size: str) -> None:
    """Build the small offline demo model (random weights, Llama architecture) in DIRECTORY."""
    from engine.models.demo import DEMO_LABEL, build_demo_model

    out = build_demo_model(directory, size=size)
    click.echo(f"{DEMO_LABEL} written to {out}")


@cli.command("config")
@click.argument("config_path", metavar="[CONFIG.yaml]", required=False,
                type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key.")
@click.option("--keys", is_flag=True, help="List every key with its default and help text.")
@click.option("--check", "do_check", is_flag=True, help="Validate and list every problem.")
def config_cmd(config_path: str | None, overrides: tuple[str, ...], keys: bool,
               do_check: bool) -> None:
    """Print the resolved config as YAML (defaults when no file is given), list every key, or
    validate it."""
    from engine.config import all_keys, check, default_for, help_for, load_config, to_yaml

    if keys:
        for key in all_keys():
            click.echo(f"{key} = {default_for(key)!r}\n    {help_for(key)}")
        return
    with clean_errors():
        cfg = load_config(config_path, list(overrides))
        if do_check:
            check(cfg)
            click.echo("config OK")
            return
    click.echo(to_yaml(cfg), nl=False)


from app.cli_serve import serve  # noqa: E402
cli.add_command(serve)
from app.cli_jobs import jobs_group, submit, worker  # noqa: E402
cli.add_command(worker)
cli.add_command(submit)
cli.add_command(jobs_group)
from app.cli_export import export  # noqa: E402
cli.add_command(export)
from app.cli_eval import evaluate  # noqa: E402
cli.add_command(evaluate)
from app.cli_prune import prune  # noqa: E402
cli.add_command(prune)
from app.cli_sweep import sweep, sweeps_group  # noqa: E402
cli.add_command(sweep)
cli.add_command(sweeps_group)
from app.cli_users import user_group  # noqa: E402
cli.add_command(user_group)
from app.cli_models import models_group  # noqa: E402
cli.add_command(models_group)
from app.cli_rewards import rewards_group  # noqa: E402
cli.add_command(rewards_group)


def main() -> None:
    cli(prog_name="ftstudio")


if __name__ == "__main__":
    main()

"""The `ftstudio` command line: each command a thin wrapper over one engine or jobs function.

Run as: ftstudio --help      (installed by `pip install -e .`; or python -m app.cli --help)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from engine.config import ConfigError


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


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
    from engine.train import run

    try:
        cfg = check(load_config(config_path, list(overrides)), require_output_dir=True)
    except ConfigError as exc:
        raise _fail(exc) from None
    reporter = ConsoleReporter()
    try:
        result = run(cfg, reporter)
    except (ConfigError, DataError) as exc:
        raise _fail(exc) from None
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
@click.option("--format", "fmt", default="auto", show_default=True,
              help="Record format: auto, alpaca, chat, sharegpt, completion or text.")
@click.option("--max-seq-len", default=512, show_default=True, type=int,
              help="Token limit used to count truncated records.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(file: str, model_name: str | None, fmt: str, max_seq_len: int,
               as_json: bool) -> None:
    """The dataset report: format, counts, token lengths, duplicates, problems with line
    numbers."""
    from engine.config import DataConfig
    from engine.data import DataError, data_report
    from engine.data_report import format_report

    tokenizer = None
    if model_name:
        from engine.model import load_tokenizer

        try:
            tokenizer = load_tokenizer(model_name)
        except (OSError, ValueError) as exc:
            raise _fail(exc) from None
    try:
        report = data_report(file, tokenizer,
                             DataConfig(train=file, format=fmt, max_seq_len=max_seq_len))
    except (DataError, ConfigError) as exc:
        raise _fail(exc) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if report.used == 0:
        sys.exit(1)


# --------------------------------------------------------------------------- models and config


@cli.command("demo-model")
@click.argument("directory", default="studio-data/models/demo", required=False)
@click.option("--size", type=click.Choice(["demo", "tiny"]), default="demo", show_default=True,
              help="demo: 3M parameters, trains visibly on a laptop; tiny: for tests.")
def demo_model(directory: str, size: str) -> None:
    """Build the small offline demo model (random weights, Llama architecture) in DIRECTORY."""
    from engine.demo import DEMO_LABEL, build_demo_model

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
    from engine.config import all_keys, default_for, help_for, load_config, to_yaml, validate

    if keys:
        for key in all_keys():
            click.echo(f"{key} = {default_for(key)!r}\n    {help_for(key)}")
        return
    try:
        cfg = load_config(config_path, list(overrides))
    except ConfigError as exc:
        raise _fail(exc) from None
    if do_check:
        problems = validate(cfg)
        if problems:
            raise _fail(ConfigError(problems))
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
from app.cli_users import user_group  # noqa: E402
cli.add_command(user_group)
from app.cli_models import models_group  # noqa: E402
cli.add_command(models_group)


def main() -> None:
    cli(prog_name="ftstudio")


if __name__ == "__main__":
    main()

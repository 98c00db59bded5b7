"""`ftstudio export`: a thin command over engine.export.export.

Run as: ftstudio export JOB --format gguf-q8_0 [--out PATH]     (JOB: a job id or a run folder)
"""

from __future__ import annotations

from pathlib import Path

import click

from engine.export import FORMATS


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
def export(job: str, fmt: str, out: str | None) -> None:
    """Export a finished run (a run folder, or a job id) for use in other tools."""
    from engine.export import ExportError, export as run_export

    try:
        result = run_export(_run_dir(job), fmt, out, log=click.echo)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    for artifact in result.artifacts:
        click.echo(f"{artifact.bytes:>14,}  {artifact.path}")

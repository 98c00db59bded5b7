"""`ftstudio models import|ls`: the base models under FTSTUDIO_HOME/models, each command a thin
wrapper over one function (jobs.models.import_model: the import rule the studio's upload follows
too; engine.models.catalog); registered on the `ftstudio` group in app/cli.py.

Run as: ftstudio models import SmolLM2-135M-Instruct.Q4_1.gguf [--name smollm2] [--force]
        ftstudio models ls [--json]
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from app.cli_common import clean_errors


@click.group("models")
def models_group() -> None:
    """Base models under FTSTUDIO_HOME/models: import a GGUF file, list them."""


@models_group.command("import")
@click.argument("file", metavar="FILE.gguf")
@click.option("--name", default=None,
              help="Folder name under FTSTUDIO_HOME/models (default: the file name, slugged; "
                   "NAME-2, NAME-3 ... when another model has it).")
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
def models_import(file: str, name: str | None, force: bool) -> None:
    """Dequantize a GGUF file (llama.cpp, Ollama) into a safetensors model folder that every
    method can fine-tune; its README.md says where it came from. The same file imported before
    is reused, not imported twice."""
    from jobs.models import import_model

    with clean_errors(OSError):
        done = import_model(file, name, force=force, log=click.echo)
    m = done.imported
    if done.reused:
        click.echo(f"{Path(file).name} was imported before as {done.name}: nothing to do "
                   "(--force imports it again).")
    else:
        click.echo(f"Imported {m.name}: {m.model_type}, {m.params:,} parameters, "
                   f"{'/'.join(m.quantization)} in the file, {m.seconds:.1f} s.")
    click.echo(f"Train on it with --set model.name={done.folder}")


@models_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
def models_ls(as_json: bool) -> None:
    """List the model folders under FTSTUDIO_HOME/models (the demo, imported GGUF files, copied
    folders)."""
    from engine.models.catalog import describe, human_count, imported_from, local_models, models_dir

    rows = []
    for folder in local_models():
        info = describe(str(folder))
        gguf = imported_from(folder)
        rows.append({"name": str(folder.relative_to(models_dir())), "folder": str(folder),
                     "source": "gguf" if gguf else info.source, "model_type": info.model_type,
                     "architecture": info.architecture, "params": info.params,
                     "gguf": gguf})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models in {models_dir()}; build the demo with `ftstudio demo-model` or "
                   "import one with `ftstudio models import FILE.gguf`")
        return
    for r in rows:
        where = (f"from GGUF {r['gguf'].get('file')} ({r['gguf'].get('main_quantization')})"
                 if r["gguf"] else r["source"])
        click.echo(f"{r['name']:32} {r['model_type'] or '?':10} "
                   f"{human_count(r['params']):>6}  {where}")

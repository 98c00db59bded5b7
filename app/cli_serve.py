"""`ftstudio serve`: the browser studio, with an embedded worker unless --no-worker.

Run as: ftstudio serve [--host 127.0.0.1] [--port 7860] [--home studio-data] [--no-worker]
"""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="FTSTUDIO_HOST",
              help="Address to listen on (0.0.0.0 for every interface). Env: FTSTUDIO_HOST.")
@click.option("--port", default=7860, show_default=True, type=int, envvar="FTSTUDIO_PORT",
              help="Port to listen on. Env: FTSTUDIO_PORT.")
@click.option("--home", default="studio-data", show_default=True, envvar="FTSTUDIO_HOME",
              type=click.Path(file_okay=False),
              help="Studio folder: database, models/, datasets/, jobs/. Env: FTSTUDIO_HOME.")
@click.option("--no-worker", is_flag=True,
              help="Do not run jobs in this process (workers run apart: `ftstudio worker`).")
def serve(host: str, port: int, home: str, no_worker: bool) -> None:
    """Open the studio in the browser: train, watch jobs live, chat with the results."""
    home_path = Path(home).expanduser().resolve()
    os.environ["FTSTUDIO_HOME"] = str(home_path)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (home_path / "jobs").mkdir(parents=True, exist_ok=True)
    demo = home_path / "models" / "demo"
    if not (demo / "config.json").is_file():
        from engine.demo import DEMO_LABEL, build_demo_model

        click.echo(f"Building the {DEMO_LABEL} in {demo} (first start only) ...")
        build_demo_model(demo)

    from app.studio import build_app, launch_kwargs

    worker = None
    if not no_worker:
        from jobs.worker import start_embedded_worker

        worker = start_embedded_worker()
    app = build_app(worker="embedded" if worker else "external")
    click.echo(f"ftstudio: http://{host}:{port}/  (home {home_path}; "
               f"{'embedded worker' if worker else 'no worker: run `ftstudio worker`'})")
    try:
        app.queue(default_concurrency_limit=8).launch(
            server_name=host, server_port=port, allowed_paths=[str(home_path / "jobs")],
            **launch_kwargs())
    finally:
        if worker is not None:
            worker.stop()

"""`ftstudio serve`: the browser studio, with an embedded worker unless --no-worker.

Run as: ftstudio serve [--host 127.0.0.1] [--port 7860] [--home studio-data] [--no-worker]
        ftstudio serve --auth --host 0.0.0.0 --no-worker     (a team server; see docs/deploy.md)

Safe by default: without auth the studio listens only on loopback and refuses any other address
unless --insecure-no-auth is given (with a warning); with auth (--auth or FTSTUDIO_AUTH=on) it
needs at least one account (`ftstudio user add NAME --admin`) and checks logins with
jobs.users.verify behind jobs.logins (wrong passwords lock a username for a while:
FTSTUDIO_LOGIN_MAX_FAILURES, FTSTUDIO_LOGIN_LOCKOUT_S, FTSTUDIO_LOGIN_MAX_FAILURES_PER_MINUTE).
"""

from __future__ import annotations

import ipaddress
import os
import signal
from pathlib import Path

import click



class BindRefused(ValueError):
    """The host/auth combination is unsafe; the message says what to do."""


def is_loopback(host: str) -> bool:
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname that may resolve to anything counts as public


def check_binding(host: str, auth: bool, insecure_no_auth: bool = False) -> str | None:
    """Decide whether the studio may listen on `host`: None (fine), a warning to print, or
    BindRefused. Without auth only loopback is allowed unless insecure_no_auth is set."""
    if auth or is_loopback(host):
        return None
    if insecure_no_auth:
        return (f"WARNING: serving on {host} WITHOUT authentication (--insecure-no-auth): "
                "anyone who can reach this port can read every job and run training on this "
                "machine. Use --auth (and `ftstudio user add NAME --admin`) for a shared server.")
    raise BindRefused(f"refusing to serve on {host} without authentication: anyone on the "
                      "network could use the studio. Turn logins on with --auth (or "
                      "FTSTUDIO_AUTH=on) after `ftstudio user add NAME --admin`, keep the "
                      "default --host 127.0.0.1, or pass --insecure-no-auth if you really mean it")


def auth_enabled(flag: bool) -> bool:
    from jobs.settings import auth

    return flag or auth()


def check_users() -> None:
    """Auth with no account would lock everyone out: refuse, saying how to add one."""
    from jobs.users import count_users

    if count_users() == 0:
        raise BindRefused("authentication is on but there are no users yet; create the first "
                          "admin with `ftstudio user add NAME --admin` (with Docker: `docker "
                          "compose run --rm web user add NAME --admin`), then start again")


def gradio_auth(username: str, password: str) -> bool:
    """Gradio's auth= callable: a login succeeds when jobs.users.verify accepts it and
    jobs.logins does not refuse it (too many failures for that username, or for all of them).
    Gradio passes no client address, so the limits are per username and global."""
    from jobs.logins import login

    return login(username, password) is not None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="FTSTUDIO_HOST",
              help="Address to listen on (0.0.0.0 for every interface; needs --auth, or "
                   "--insecure-no-auth). Env: FTSTUDIO_HOST.")
@click.option("--port", default=7860, show_default=True, type=int, envvar="FTSTUDIO_PORT",
              help="Port to listen on. Env: FTSTUDIO_PORT.")
@click.option("--home", default="studio-data", show_default=True, envvar="FTSTUDIO_HOME",
              type=click.Path(file_okay=False),
              help="Studio folder: database, models/, datasets/, jobs/. Env: FTSTUDIO_HOME.")
@click.option("--no-worker", is_flag=True,
              help="Do not run jobs in this process (workers run apart: `ftstudio worker`).")
@click.option("--auth", "auth_flag", is_flag=True,
              help="Require a login (accounts: `ftstudio user add`). Env: FTSTUDIO_AUTH=on.")
@click.option("--insecure-no-auth", is_flag=True,
              help="Allow a non-loopback --host without logins (anyone on the network can use "
                   "the studio). Prints a warning.")
def serve(host: str, port: int, home: str, no_worker: bool, auth_flag: bool,
          insecure_no_auth: bool) -> None:
    """Open the studio in the browser: train, watch jobs live, chat with the results."""
    home_path = Path(home).expanduser().resolve()
    os.environ["FTSTUDIO_HOME"] = str(home_path)
    from jobs.store import not_writable

    problem = not_writable(home_path / "studio.db")
    if problem:  # e.g. a bind-mounted /data owned by someone else than the image's user
        raise click.ClickException(problem)
    auth = auth_enabled(auth_flag)
    try:
        warning = check_binding(host, auth, insecure_no_auth)
        if auth:
            check_users()
            from jobs.logins import default as login_limiter

            login_limiter()  # a bad login limit setting is refused before starting
    except ValueError as exc:  # BindRefused, or a bad setting
        raise click.ClickException(str(exc)) from None
    if warning:
        click.secho(warning, fg="red", err=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (home_path / "jobs").mkdir(parents=True, exist_ok=True)
    demo = home_path / "models" / "demo"
    if not (demo / "config.json").is_file():
        from engine.models.demo import DEMO_LABEL, build_demo_model

        click.echo(f"Building the {DEMO_LABEL} in {demo} (first start only) ...")
        build_demo_model(demo)

    from app.studio import build_app, launch_kwargs
    from jobs.datasets import max_upload_bytes

    worker = owner = None
    if not no_worker:
        from jobs.worker import start_embedded_worker

        worker = start_embedded_worker()
    elif redis_url():  # remote workers report through Redis: this process persists it
        from jobs.owner import Owner

        owner = Owner().start()
    app = build_app(worker="embedded" if worker else "external")
    click.echo(f"ftstudio: http://{host}:{port}/  (home {home_path}; "
               f"{'embedded worker' if worker else 'no worker: run `ftstudio worker`'}; "
               f"{'logins required' if auth else 'no logins'})")
    extra = dict(auth=gradio_auth, auth_message="ftstudio: log in with your account") \
        if auth else {}
    # `docker stop` sends SIGTERM (PID 1 has no default handler): stop as Ctrl-C does, so
    # the embedded worker lets running jobs checkpoint
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app.queue(default_concurrency_limit=8).launch(
            # no allowed_paths: nothing under FTSTUDIO_HOME/jobs is served by path; downloads
            # are copies a handler made after checking the job is the user's (jobview.served_copy)
            server_name=host, server_port=port,
            max_file_size=max_upload_bytes(),  # Gradio stops bigger uploads mid-transfer
            **extra, **launch_kwargs())
    finally:
        if worker is not None:
            worker.stop()
        if owner is not None:
            owner.stop()


def _interrupt(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def redis_url() -> str:
    from jobs import settings

    return settings.redis_url()

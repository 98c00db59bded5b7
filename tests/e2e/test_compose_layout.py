"""The Docker deployment (Dockerfile, docker-compose.yml, docs/deploy.md) without a Docker engine:
the files must agree with each other (fast), and the SAME commands docker-compose.yml declares
must work as plain processes: a real redis-server, `ftstudio serve` and `ftstudio worker` sharing
one FTSTUDIO_HOME, a tiny-model job submitted, run to completion and the page served (e2e).

Run as: pytest tests/e2e/test_compose_layout.py            (the e2e test needs redis-server)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.cli import cli
from tests_paths import EXAMPLES, ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    """The arguments of every Dockerfile instruction `name` (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.M)]


def _env() -> dict[str, str]:
    pairs = {}
    for line in _instruction("ENV"):
        pairs.update(re.findall(r"(\w+)=(\S+)", line))
    return pairs


def _service_env(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (COMPOSE["services"][name].get("environment") or {}).items()}


def test_the_image_and_compose_declare_the_same_commands():
    assert json.loads(_instruction("ENTRYPOINT")[-1]) == ["ftstudio"]
    cmd = json.loads(_instruction("CMD")[-1])
    web, worker = COMPOSE["services"]["web"], COMPOSE["services"]["worker"]
    assert web["command"] == cmd == ["serve", "--no-worker", "--host", "0.0.0.0", "--auth"]
    assert worker["command"][0] == "worker"
    for command in (web["command"], worker["command"]):  # real commands of the CLI
        assert command[0] in cli.commands
        ctx = cli.commands[command[0]].make_context(command[0], list(command[1:]))
        assert ctx.params is not None
    assert web["image"] == worker["image"] and "build" in web  # one image, both roles


def test_the_data_volume_is_ftstudio_home_and_shared():
    assert _instruction("VOLUME") == ["/data"]
    assert _env()["FTSTUDIO_HOME"] == "/data"
    for name in ("web", "worker"):
        assert _service_env(name)["FTSTUDIO_HOME"] == "/data"
        assert "studio-data:/data" in COMPOSE["services"][name]["volumes"]
        url = _service_env(name)["FTSTUDIO_REDIS_URL"]
        assert url.startswith("redis://redis:")  # the compose service
    redis = COMPOSE["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["command"][-2:] == ["--appendonly", "yes"]
    assert redis["volumes"] == ["redis-data:/data"]
    assert set(COMPOSE["volumes"]) == {"studio-data", "redis-data"}


def test_the_image_runs_as_a_user_with_a_healthcheck_on_the_web_port():
    users = _instruction("USER")
    assert users and users[-1] not in ("root", "0")
    health = _instruction("HEALTHCHECK")
    assert health and "http://127.0.0.1:7860/" in health[0]
    assert _instruction("EXPOSE") == ["7860"]
    assert any(p.endswith(":7860") for p in COMPOSE["services"]["web"]["ports"])
    assert COMPOSE["services"]["worker"]["healthcheck"] == {"disable": True}
    assert _instruction("FROM")[0].startswith("nvidia/cuda:")


def test_workers_reserve_a_gpu_and_web_requires_logins():
    devices = COMPOSE["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--auth" in COMPOSE["services"]["web"]["command"]
    assert _service_env("web")["FTSTUDIO_AUTH"] == "on"


def test_the_build_context_has_what_the_dockerfile_copies():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for line in _instruction("COPY"):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists() and src not in ignored, src
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("docker compose run --rm web user add", "sqlite3", ".backup",
                   "Upgrade", "proxy_set_header Upgrade", "--scale worker="):
        assert needle in docs, needle


def test_a_worker_only_machine_needs_redis_and_the_shared_files_only():
    """docker-compose.worker.yml (docs/deploy.md, Several machines): a remote worker, no
    database; every service stops on SIGTERM through an init process."""
    other = yaml.safe_load((ROOT / "docker-compose.worker.yml").read_text())
    (name, worker), = other["services"].items()
    assert worker["command"] == ["worker", "--remote"]
    ctx = cli.commands["worker"].make_context("worker", worker["command"][1:])
    assert ctx.params["remote"] is True
    env = worker["environment"]
    assert env["FTSTUDIO_HOME"] == "/data" and "FTSTUDIO_REDIS_URL" in env
    assert worker["init"] is True and worker["volumes"][0].endswith(":/data")
    assert worker["image"] == COMPOSE["services"]["worker"]["image"]
    for service in ("web", "worker"):
        assert COMPOSE["services"][service]["init"] is True
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("## Several machines", "docker-compose.worker.yml", "ftstudio worker --remote",
                   "never opened"):
        assert needle in docs, needle
    # `ftstudio submit /app/static/examples/demo.yaml` in the image: its model path resolves
    assert "ln -s /data /app/studio-data" in re.sub(r"\\\n\s*", "", DOCKERFILE)
    demo = yaml.safe_load((EXAMPLES / "demo.yaml").read_text())
    assert demo["model"]["name"].startswith("studio-data/")


# --------------------------------------------------------------------------- as processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(command: list[str], port: int) -> list[str]:
    """A compose command as this test runs it: loopback, no logins, a free port."""
    args = [a for a in command if a != "--auth"]
    if "--host" in args:
        args[args.index("--host") + 1] = "127.0.0.1"
    if args[0] == "serve":
        args += ["--port", str(port)]
    # `python -m app.cli` from the checkout (the `ftstudio` script may run another install)
    return [sys.executable, "-m", "app.cli"] + args


@pytest.mark.e2e
def test_the_compose_commands_run_a_job_as_processes(tmp_path, tiny_model, monkeypatch):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not on PATH in CI")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    home = tmp_path / "data"
    shutil.copytree(tiny_model, home / "models" / "demo")  # serve builds no demo model
    redis_port, web_port = _free_port(), _free_port()
    redis_cmd = COMPOSE["services"]["redis"]["command"]
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if k not in ("FTSTUDIO_AUTH", "FTSTUDIO_HOST")}
    env.update({k: v for k, v in _service_env("web").items() if k not in ("FTSTUDIO_AUTH",)})
    env.update(FTSTUDIO_HOME=str(home), FTSTUDIO_REDIS_URL=url, HF_HOME=str(tmp_path / "hf"),
               PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str], **more: str) -> subprocess.Popen:
        out = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, **more}, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    try:
        start("redis", [server, *redis_cmd[1:], "--port", str(redis_port), "--bind",
                        "127.0.0.1", "--dir", str(tmp_path), "--save", ""])
        web = start("web", _local(COMPOSE["services"]["web"]["command"], web_port))
        start("worker", _local(COMPOSE["services"]["worker"]["command"], web_port))
        page = _wait_http(f"http://127.0.0.1:{web_port}/", web, tmp_path / "web.log")
        assert "gradio" in page.lower()
        monkeypatch.setenv("FTSTUDIO_HOME", str(home))
        monkeypatch.setenv("FTSTUDIO_REDIS_URL", url)
        from jobs import api

        job = api.submit({"model": {"name": str(home / "models" / "demo")},
                          "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128,
                                   "val_fraction": 0.0},
                          "method": {"kind": "lora", "r": 4, "alpha": 8},
                          "train": {"max_steps": 3, "batch_size": 4, "eval_every": 0,
                                    "save_every": 0}}, name="compose")
        end = time.monotonic() + 300
        while api.get(job["id"])["status"] in ("queued", "running"):
            assert time.monotonic() < end, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        done = api.get(job["id"])
        assert done["status"] == "completed", (done, (tmp_path / "worker.log").read_text())
        assert not (home / "queue.db").exists()  # the queue was Redis
        assert list(tmp_path.glob("appendonly*")), "redis ran without --appendonly yes"
        assert _wait_http(f"http://127.0.0.1:{web_port}/", web, tmp_path / "web.log")

        # a worker-only machine (docker-compose.worker.yml): its /data holds the shared files
        # only; the web process persists what it reports
        os.killpg(procs[-1].pid, signal.SIGTERM)
        assert procs[-1].wait(timeout=90) == 0
        elsewhere = tmp_path / "elsewhere"
        for sub in ("jobs", "models", "datasets", "cache"):
            (home / sub).mkdir(exist_ok=True)
            (elsewhere / sub).parent.mkdir(exist_ok=True)
            (elsewhere / sub).symlink_to(home / sub)
        other = yaml.safe_load((ROOT / "docker-compose.worker.yml").read_text())
        start("remote", _local(other["services"]["worker"]["command"], web_port),
              FTSTUDIO_HOME=str(elsewhere))
        again = {k: v for k, v in api.get(job["id"])["config"].items() if k != "output_dir"}
        job = api.submit(again, name="remote")
        end = time.monotonic() + 300
        while api.get(job["id"])["status"] in ("queued", "running"):
            assert time.monotonic() < end, (tmp_path / "remote.log").read_text()[-3000:]
            time.sleep(1)
        done = api.get(job["id"])
        assert done["status"] == "completed", (done, (tmp_path / "remote.log").read_text())
        assert done["worker"].startswith("remote:")
        assert [r["step"] for r in api.metrics(job["id"]) if "loss" in r] == [1, 2, 3]
        assert not (elsewhere / "studio.db").exists()

        # `docker stop` sends SIGTERM: the web stops cleanly, at once
        os.killpg(web.pid, signal.SIGTERM)
        assert web.wait(timeout=30) == 0, (tmp_path / "web.log").read_text()[-3000:]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}):\n" + log.read_text()[-4000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return r.read().decode(errors="replace")
        except OSError:
            time.sleep(0.5)
    raise AssertionError("no answer:\n" + log.read_text(errors="replace")[-4000:])

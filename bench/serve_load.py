"""A team's load on a real studio: N people watching a training job, M submitting jobs.

Run as: python -m bench.serve_load [--pollers 20] [--submitters 2] [--seconds 60]
        [--interval 1.5] [--steps 400] [--upload-mb 0] [--code DIR] [--client gradio]
        [--client-nice 0]
        [--out bench/results]

Starts `ftstudio serve` (embedded worker) in a fresh FTSTUDIO_HOME, submits one training job
of the demo model and waits until it runs. Then, for --seconds, each of N pollers (one
gradio_client each, as one open job page) calls /job_status and /job_metrics (only the rows
after the last step it saw, as the page does) every --interval seconds (the job page's TICK),
M submitters each call /validate_config then /submit_job with a small job every few seconds,
and with --upload-mb a client uploads a generated dataset of that size to the Train tab's data
report once. Every call's latency is measured in the client.

Prints one JSON object: per endpoint {calls, errors, p50_s, p95_s, max_s}, the job's steps
during the run, the CPU seconds the server process and the clients used, the machine and its
load average; also written to bench/results/serve_load-<time>.json.

--client gradio (default) calls through gradio_client, as scripts do; --client http calls
Gradio's REST route (POST /gradio_api/call/NAME, then read the event's answer) with one httpx
connection per client, which costs the clients far less CPU: on a small shared machine the
clients' own work otherwise counts as the server's slowness. --client-nice lowers this
process's priority once the server is up.
--code runs the server of another checkout (an older commit, for a before/after figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, code: Path = ROOT) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "FTSTUDIO_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(code)}
    env.pop("FTSTUDIO_REDIS_URL", None)
    log = open(home.parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                             "--home", str(home)], cwd=code, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ftstudio serve exited:\n{(home.parent / 'serve.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("ftstudio serve did not answer in 10 minutes")


def job_yaml(home: Path, steps: int, name: str = "") -> str:
    return (f"model:\n  name: {home / 'models' / 'demo'}\n"
            f"data:\n  train: {ROOT / 'static' / 'examples' / 'alpaca.json'}\n"
            "  max_seq_len: 128\nmethod:\n  kind: lora\n  r: 8\n"
            f"train:\n  max_steps: {steps}\n  batch_size: 4\n  eval_every: 50\n"
            "  save_every: 0\n  eval_generate: \"off\"\n")


class HttpClient:
    """predict(*args, api_name=...) over Gradio's REST route, like gradio_client's."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url, self.http = url.rstrip("/"), httpx.Client(timeout=120)
        # one session for all of this client's calls, as gradio_client (and a browser page)
        # keeps: without one, Gradio builds a new session state (the whole UI's config) per call
        self.session = os.urandom(8).hex()

    def predict(self, *args, api_name: str):
        name = api_name.strip("/")
        event = self.http.post(f"{self.url}/gradio_api/call/{name}",
                               json={"data": list(args), "session_hash": self.session})
        event.raise_for_status()
        answer = self.http.get(f"{self.url}/gradio_api/call/{name}/{event.json()['event_id']}")
        kind, data = None, None
        for line in answer.text.splitlines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line.split(":", 1)[1].strip()
        if kind != "complete":
            raise RuntimeError(f"{api_name}: {kind}: {data}"[:200])
        return json.loads(data)[0]


def make_client(url: str, kind: str):
    if kind == "http":
        return HttpClient(url)
    from gradio_client import Client

    return Client(url, verbose=False)


class Recorder:
    """Latencies and errors per endpoint, from many threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    def call(self, name: str, fn, *args, **kw):
        start = time.perf_counter()
        try:
            out = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and named
            with self.lock:
                self.errors.setdefault(name, []).append(f"{type(exc).__name__}: {exc}"[:200])
            return None
        finally:
            with self.lock:
                self.times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def summary(self) -> dict:
        out = {}
        for name, times in sorted(self.times.items()):
            times = sorted(times)
            errors = self.errors.get(name, [])
            out[name] = {"calls": len(times), "errors": len(errors),
                         "p50_s": round(statistics.median(times), 3),
                         "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3),
                         "max_s": round(times[-1], 3),
                         "first_errors": sorted(set(errors))[:3]}
        return out


def poller(url: str, job_id: str, stop: threading.Event, rec: Recorder, interval: float,
           offset: float, kind: str) -> None:
    client = make_client(url, kind)
    since = -1
    time.sleep(offset)
    while not stop.is_set():
        began = time.monotonic()
        rec.call("/job_status", client.predict, job_id, api_name="/job_status")
        rows = rec.call("/job_metrics", client.predict, job_id, since, api_name="/job_metrics")
        if rows:
            since = max(since, max(r.get("step", since) for r in rows))
        stop.wait(max(0.0, interval - (time.monotonic() - began)))


def submitter(url: str, home: Path, stop: threading.Event, rec: Recorder, every: float,
              submitted: list[str], kind: str) -> None:
    client = make_client(url, kind)
    while not stop.is_set():
        began = time.monotonic()
        text = job_yaml(home, 5)
        rec.call("/validate_config", client.predict, text, api_name="/validate_config")
        job = rec.call("/submit_job", client.predict, text, "load", 0, api_name="/submit_job")
        if job and job.get("job_id"):
            submitted.append(job["job_id"])
        stop.wait(max(0.0, every - (time.monotonic() - began)))


def big_file(work: Path, mb: float) -> Path:
    """A generated alpaca .jsonl file of about `mb` MB."""
    path = work / "big.jsonl"
    record = {"instruction": "Repeat the words of this sentence backwards, one by one, please.",
              "input": "the quick brown fox jumps over the lazy dog " * 4,
              "output": "dog lazy the over jumps fox brown quick the " * 4}
    line = json.dumps(record) + "\n"
    with open(path, "w") as fh:
        fh.write(line * int(mb * 1024 * 1024 / len(line)))
    return path


def uploader(url: str, path: Path, model: str, rec: Recorder) -> None:
    """One upload of `path` to /data_report (stored, checked and tokenized by the server)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rec.call("/data_report", client.predict, handle_file(str(path)), model,
             api_name="/data_report")


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(pollers: int, submitters: int, seconds: float, interval: float, steps: int,
        upload_mb: float, code: Path = ROOT, client_nice: int = 0, kind: str = "gradio"
        ) -> dict:
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="ftstudio-serve-load-"))
    home = work / "home"
    proc, url = start_server(home, code)
    os.nice(client_nice)
    try:
        client = Client(url, verbose=False)
        job = client.predict(job_yaml(home, steps), "watched", 0, api_name="/submit_job")
        if not job.get("job_id"):
            raise SystemExit(f"the training job was refused: {job}")
        job_id = job["job_id"]
        deadline = time.monotonic() + 300
        while client.predict(job_id, api_name="/job_status")["status"] != "running":
            if time.monotonic() > deadline:
                raise SystemExit("the training job did not start in 5 minutes")
            time.sleep(1)
        step_before = client.predict(job_id, api_name="/job_status").get("step") or 0
        rec, stop, submitted = Recorder(), threading.Event(), []
        threads = [threading.Thread(target=poller, args=(url, job_id, stop, rec, interval,
                                                          interval * i / max(pollers, 1),
                                                          kind))
                   for i in range(pollers)]
        threads += [threading.Thread(target=submitter, args=(url, home, stop, rec, 3.0,
                                                             submitted, kind))
                    for _ in range(submitters)]
        if upload_mb:
            threads.append(threading.Thread(target=uploader, args=(
                url, big_file(work, upload_mb), str(home / "models" / "demo"), rec)))
        load, cpu = os.getloadavg()[0], (_cpu_s(proc.pid), _own_cpu_s())
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        cpu = (round(_cpu_s(proc.pid) - cpu[0], 1), round(_own_cpu_s() - cpu[1], 1))
        status = client.predict(job_id, api_name="/job_status")
        return {"code": str(code), "client": kind, "pollers": pollers, "submitters": submitters, "seconds": seconds,
                "interval_s": interval, "upload_mb": upload_mb,
                "job": {"status": status["status"], "steps_during_run":
                        (status.get("step") or 0) - step_before},
                "submitted_jobs": len(submitted), "endpoints": rec.summary(),
                "cpu_s": {"server": cpu[0], "clients": cpu[1]}, "client_nice": client_nice,
                "load_average": {"start": round(load, 1), "end": round(os.getloadavg()[0], 1)},
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pollers", type=int, default=20)
    ap.add_argument("--submitters", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=1.5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--upload-mb", type=float, default=0)
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose server runs")
    ap.add_argument("--client-nice", type=int, default=0)
    ap.add_argument("--client", choices=("gradio", "http"), default="gradio")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    result = run(a.pollers, a.submitters, a.seconds, a.interval, a.steps, a.upload_mb,
                 Path(a.code).resolve(), a.client_nice, a.client)
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve_load-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()

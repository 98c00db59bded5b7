"""FSDP2 on CPU (gloo), two real processes started with the command every multi-process job is
started with (engine.training.parallel.launch_command, as jobs/tasks.py does), through the
test-only wrapper tests/engine/fsdp_on_cpu.py, which keeps accelerate's FSDP path on CPU.

The global batch is the same (2 processes x 4 rows = 1 process x 8 rows) and dropout is off,
so the sharded run must reproduce the one-process run: losses within 1e-5 (fp32), and the
adapter it writes (gathered from the shards) equals the one-process adapter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.config import TrainConfig, save_config
from engine.training.parallel import launch_command
from tests_paths import EXAMPLES, ROOT

pytestmark = pytest.mark.slow

WRAPPER = Path(__file__).with_name("fsdp_on_cpu.py")
STEPS = 6
#: QLoRA's CPU 4-bit kernels are not promised bit-exact from run to run (measured here: 7e-7)
QLORA_TOLERANCE = 1e-4


def free_port() -> int:
    from jobs.tasks import free_port as port

    return port()


def config(model: Path, out: Path, kind: str, batch_size: int, strategy: str) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(model)
    cfg.data.train = str(EXAMPLES / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.method.kind = kind
    cfg.method.dropout = 0.0
    cfg.train.lr = 1e-3 if kind == "full" else 1e-2
    cfg.train.batch_size = batch_size
    cfg.train.max_steps = STEPS
    cfg.train.eval_every = 3
    cfg.train.save_every = 2
    cfg.train.keep_checkpoints = 3
    cfg.train.eval_generate = "off"
    cfg.parallel.strategy = strategy
    cfg.output_dir = str(out)
    return cfg


def launch(cfg: TrainConfig, *, wrapper: bool = True, wait: bool = True):
    """Two processes of engine.training.loop on cfg (saved beside its output_dir)."""
    path = save_config(cfg, Path(cfg.output_dir).with_suffix(".yaml"))
    target = ([str(WRAPPER), "engine.training.loop", str(path)] if wrapper
              else ["-m", "engine.training.loop", str(path)])
    cmd = launch_command(2, target, port=free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def one_process(cfg: TrainConfig) -> Path:
    from engine.training.loop import run

    run(cfg)
    return Path(cfg.output_dir)


def records(out: Path, key: str) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    files = sorted((out / "adapter").glob("*.safetensors"))
    assert files, f"no safetensors in {out / 'adapter'}"
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=atol, rtol=0), name


@pytest.fixture(scope="module")
def fsdp_lora(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "lora"
    done = launch(config(tiny_model, out, "lora", 4, "fsdp"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.parametrize("kind", ["lora", "dora", "full"])
def test_sharded_training_equals_one_process(kind, tiny_model, fsdp_lora, home, tmp_path):
    if kind == "lora":
        out = fsdp_lora
    else:
        out = tmp_path / "fsdp"
        done = launch(config(tiny_model, out, kind, 4, "fsdp"))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single = one_process(config(tiny_model, tmp_path / "one", kind, 8, "auto"))

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2
    assert info["parallel"] == "fsdp" and info["steps"] == STEPS
    assert records(out, "loss") == pytest.approx(records(single, "loss"), abs=1e-5)
    assert records(out, "eval_loss") == pytest.approx(records(single, "eval_loss"), abs=1e-5)
    step = out / "checkpoints" / f"step-{STEPS}"
    assert (step / "sharded" / ".metadata").is_file() and not (step / "optimizer.pt").exists()
    assert {p.name for p in (step / "sharded").glob("*.distcp")} == {"__0_0.distcp",
                                                                   "__1_0.distcp"}
    # the adapter (the whole model for full) was gathered from the shards: ordinary tensors
    # of their full shapes, equal to the one-process run's
    assert_same_weights(adapter(out), adapter(single), atol=1e-5)


def test_qlora_under_fsdp_matches_one_process(tiny_model, home, tmp_path):
    out = tmp_path / "fsdp"
    done = launch(config(tiny_model, out, "qlora", 4, "fsdp"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4-bit base" in done.stdout and "sharded one by one" in done.stdout
    single = one_process(config(tiny_model, tmp_path / "one", "qlora", 8, "auto"))
    assert records(out, "loss") == pytest.approx(records(single, "loss"), abs=QLORA_TOLERANCE)
    assert_same_weights(adapter(out), adapter(single), atol=QLORA_TOLERANCE)


def test_killed_sharded_run_resumes_like_an_uninterrupted_one(tiny_model, fsdp_lora, home,
                                                               tmp_path):
    import torch.distributed.checkpoint.format_utils as fmt

    cfg = config(tiny_model, tmp_path / "killed", "lora", 4, "fsdp")
    proc = launch(cfg, wait=False)
    first = Path(cfg.output_dir) / "checkpoints" / "step-2" / "state.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)            # every rank, mid-run
    proc.wait(timeout=60)
    assert first.is_file(), proc.stdout.read().decode()[-3000:]
    assert not (Path(cfg.output_dir) / "adapter").exists()  # it did not get to the end

    cfg.train.resume_from = "latest"
    done = launch(cfg)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resume: continuing from" in done.stdout
    out = Path(cfg.output_dir)
    assert records(out, "loss") == pytest.approx(records(fsdp_lora, "loss"), abs=1e-6)
    assert_same_weights(adapter(out), adapter(fsdp_lora), atol=1e-6)

    # the exported adapter is the trained weights gathered from the last sharded checkpoint
    whole = tmp_path / "gathered.pt"
    fmt.dcp_to_torch_save(out / "checkpoints" / f"step-{STEPS}" / "sharded", whole)
    trained = {k.removeprefix("model.").replace(".default.", "."): v
               for k, v in torch.load(whole, weights_only=True)["model"].items()}
    assert_same_weights(adapter(out), trained, atol=0)


def test_fsdp_where_accelerate_cannot_shard_fails_clearly(tiny_model, home, tmp_path):
    """Without the wrapper accelerate would quietly run DDP on CPU: the run must refuse."""
    out = tmp_path / "fallback"
    done = launch(config(tiny_model, out, "lora", 4, "fsdp"), wrapper=False)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "parallel.strategy: fsdp was asked for, but accelerate prepared this run as " \
           "MULTI_CPU" in text and "falls back to DDP" in text
    assert not (out / "checkpoints").exists()

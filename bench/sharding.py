"""Sharding: the same full fine-tune on 2 CPU processes under DDP, FSDP and FSDP with CPU offload.

Run as: python -m bench.sharding [--json] [--steps 4] [--hidden 1024] [--layers 8]

Each side is engine.training.loop on 2 processes started with the command every multi-process job
is started with (engine.training.parallel.launch_command), on a Llama-shaped model with random
weights built here (nothing downloaded), full fine-tuning in fp32 with AdamW: per parameter 4
bytes of weights, 4 of gradients and 8 of optimizer state, which DDP holds whole in every
process and FSDP splits across them. accelerate shards only on GPUs, so the FSDP sides run
through tests/engine/fsdp_on_cpu.py, the launch wrapper the tests use, which keeps accelerate's
own FSDP2 path on CPU (gloo); the DDP side runs without it.

Reported per side: peak_mib, the largest peak resident set (VmHWM) of the two processes, a
Python process with torch imported included; step_s, the median seconds per optimizer step of
the main process; losses, every step's loss (the three sides train the same steps: equal to
about 1e-5). With offload the states sit in CPU memory either way on a CPU machine, so its
figure shows the cost of the offload path, not a saving: on a GPU the saving is in GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "tests" / "engine" / "fsdp_on_cpu.py"
SIDES = {"ddp": ("ddp", False), "fsdp": ("fsdp", False), "fsdp_offload": ("fsdp", True)}


def build_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random Llama of the given width and depth, with the demo model's tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from engine.models.demo import build_demo_model

    build_demo_model(folder, size="demo", max_position_embeddings=512)
    config = AutoConfig.from_pretrained(folder)
    config.hidden_size, config.num_hidden_layers = hidden, layers
    config.intermediate_size = int(hidden * 2.75)
    config.num_attention_heads = config.num_key_value_heads = hidden // 64
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def config_for(model: Path, out: Path, side: str, steps: int):
    from engine.config import TrainConfig

    strategy, offload = SIDES[side]
    cfg = TrainConfig()
    cfg.model.name = str(model)
    cfg.data.train = str(ROOT / "static" / "examples" / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.data.val_fraction = 0
    cfg.method.kind = "full"
    cfg.train.lr = 1e-4
    cfg.train.batch_size = 2
    cfg.train.max_steps = steps
    cfg.train.precision = "fp32"
    cfg.train.eval_every = cfg.train.save_every = 0
    cfg.train.eval_generate = "off"
    cfg.parallel.strategy, cfg.parallel.cpu_offload = strategy, offload
    cfg.output_dir = str(out)
    return cfg


def run_side(model: Path, work: Path, side: str, steps: int) -> dict:
    """One side on two processes; its peak memory, step time and losses."""
    from engine.config import save_config
    from engine.training.parallel import launch_command

    out = work / side
    path = save_config(config_for(model, out, side, steps), work / f"{side}.yaml")
    target = ["-m", "bench.sharding", "--child", str(path)]
    if SIDES[side][0] == "fsdp":
        target = [str(WRAPPER), "bench.sharding", "--child", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(launch_command(2, target, port=free_port()), cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("bench-rank*.json"))]
    main = next(r for r in ranks if r["rank"] == 0)
    return {"peak_mib": max(r["peak_mib"] for r in ranks),
            "peak_mib_per_process": [r["peak_mib"] for r in ranks],
            "step_s": round(statistics.median(main["step_s"]), 3) if main["step_s"] else None,
            "losses": main["losses"]}


def child(config_path: str) -> None:
    """Inside each process: train, then write this rank's peak memory, step times, losses."""
    from engine.config import load_config
    from engine.training.loop import run
    from engine.training.reporter import NullReporter

    class Timed(NullReporter):
        def __init__(self):
            self.times, self.losses = [time.perf_counter()], []

        def on_metrics(self, record):
            if "loss" in record:
                self.times.append(time.perf_counter())
                self.losses.append(record["loss"])

    cfg = load_config(config_path)
    reporter = Timed()
    run(cfg, reporter)
    rank = int(os.environ.get("RANK", "0"))
    steps = [b - a for a, b in zip(reporter.times[1:], reporter.times[2:])]  # after the first
    Path(cfg.output_dir, f"bench-rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "peak_mib": round(vm_hwm_kib() / 1024, 1), "step_s": steps,
         "losses": reporter.losses}))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def machine() -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {__import__('torch').__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model", args.hidden, args.layers)
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model)
        params = c.num_hidden_layers * (4 * c.hidden_size ** 2 + 3 * c.hidden_size
                                        * c.intermediate_size) + 2 * c.vocab_size * c.hidden_size
        result = {side: run_side(model, work, side, args.steps) for side in SIDES}
    result["model"] = {"params": params, "hidden": args.hidden, "layers": args.layers,
                       "method": "full", "precision": "fp32", "optimizer": "adamw",
                       "processes": 2, "steps": args.steps}
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"full fine-tuning, {params / 1e6:.0f}M parameters, 2 CPU processes; {result['machine']}")
    print(f"{'side':<14}{'peak MiB/process':>18}{'s/step':>9}  losses")
    for side in SIDES:
        r = result[side]
        print(f"{side:<14}{r['peak_mib']:>18.0f}{r['step_s'] or 0:>9.2f}  "
              + " ".join(f"{x:.5f}" for x in r["losses"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What train.report_to costs: a real tiny training job without trackers and with each of them.

Run as: python -m bench.trackers [--steps 60] [--repeats 2] [--out bench/results]

Each run is its own child process (imports, the W&B service and MLflow's store count, as they
do in a job), with a fresh FTSTUDIO_HOME (so MLflow creates its SQLite store, as a first job
does) and W&B offline. The runs alternate (none, tensorboard, mlflow, wandb, all, none, ...) so
the noise of a shared machine falls on every side. Reported per side, the median over repeats:

    job_s       engine.training.loop.run from the call to its return (loading, steps, evaluation, saving)
    start_s     the trackers' start at the first record (imports, store, service)
    per_step_ms the trackers' time per record after that, in the training process
    finish_s    the trackers' finish at the end of the run

and the ratio of each side's job_s to none's. The model is the tiny 2-layer demo shape on CPU,
whose steps take tens of milliseconds: a real model's are longer, so per_step_ms weighs less.

Results: bench/results/trackers-<time>.json (and the summary on stdout).
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
SIDES = {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "wandb": ["wandb"],
         "all": ["tensorboard", "mlflow", "wandb"]}


def child(side: str, steps: int, model: str, work: Path) -> dict:
    """One job in this process, its trackers' calls timed."""
    import torch

    from engine.training import trackers
    from engine.config import TrainConfig
    from engine.training.reporter import NullReporter
    from engine.training.loop import run

    torch.set_num_threads(1)
    timed = {"start": 0.0, "steps": 0.0, "records": 0, "finish": 0.0}
    start, log, close = (trackers.TrackingReporter._start, trackers.TrackingReporter._log,
                         trackers.TrackingReporter.close)

    def timing(name, fn):
        def call(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                timed[name] += time.perf_counter() - t
                timed["records"] += name == "steps"
        return call

    trackers.TrackingReporter._start = timing("start", start)
    trackers.TrackingReporter._log = timing("steps", log)
    trackers.TrackingReporter.close = timing("finish", close)
    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = model, str(ROOT / "static" / "examples" / "alpaca.json")
    cfg.data.max_seq_len, cfg.train.batch_size, cfg.train.max_steps = 128, 8, steps
    cfg.train.eval_every, cfg.train.save_every, cfg.train.eval_generate = 20, 0, "off"
    cfg.train.report_to, cfg.output_dir = SIDES[side], str(work / "run")
    t = time.perf_counter()
    run(cfg, NullReporter())
    job = time.perf_counter() - t
    per_tracker = max(len(SIDES[side]), 1)
    records = timed["records"] / per_tracker
    return {"job_s": round(job, 2), "start_s": round(timed["start"], 2),
            "per_step_ms": round(1000 * timed["steps"] / max(records, 1), 3),
            "finish_s": round(timed["finish"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trackers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.model, Path(os.getcwd()))))
        return 0

    from engine.models.demo import build_demo_model

    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_demo_model(Path(tmp) / "tiny", size="tiny", max_position_embeddings=512)
        for repeat in range(args.repeats):
            for side in SIDES:
                work = Path(tmp) / f"{side}-{repeat}"
                work.mkdir()
                env = {**os.environ, "FTSTUDIO_HOME": str(work / "home"), "WANDB_MODE": "offline",
                       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
                env.pop("MLFLOW_TRACKING_URI", None)
                done = subprocess.run([sys.executable, "-m", "bench.trackers", "--child", side,
                                       "--steps", str(args.steps), "--model", str(model)],
                                      cwd=work, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
                    return 1
                results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"{side:12s} repeat {repeat + 1}: {results[side][-1]}", flush=True)
    summary = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
               for side, runs in results.items()}
    base = summary["none"]["job_s"]
    print(f"\n{'side':12s} {'job s':>7s} {'x none':>7s} {'start s':>8s} {'ms/step':>8s} "
          f"{'finish s':>8s}   ({args.steps} steps, median of {args.repeats})")
    for side, s in summary.items():
        print(f"{side:12s} {s['job_s']:7.2f} {s['job_s'] / base:7.2f} {s['start_s']:8.2f} "
              f"{s['per_step_ms']:8.2f} {s['finish_s']:8.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trackers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"steps": args.steps, "runs": results, "summary": summary},
                               indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

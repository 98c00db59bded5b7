"""GRPO step time and peak memory: ftstudio's engine against TRL's GRPOTrainer.

Run as: python -m bench.grpo [--prompts 64] [--steps 10] [--repeats 2] [--completion 32]
                             [--model DIR] [--out bench/results]

Both sides train the same model (by default the demo shape with random weights, built here,
nothing downloaded; --model takes a local folder such as an imported SmolLM2) with the same LoRA
config (r 16, alpha 32, all linear layers, no dropout), on the same conversational prompts (the
bench task's instructions), with the same reward function (the share of vowels among the
completion's letters, from one file: installed as a custom reward for ours, imported for TRL),
the same settings: 4 completions per prompt, 8 completions per optimizer step (one generation
batch per step), at most --completion new tokens, temperature 1.0, top-p 1.0, loss dapo, epsilon
0.2, beta 0 (no reference pass), one iteration per batch, lr 1e-5 constant, float32, seed 42:

    ours   engine.training.loop.run, train.objective grpo (sampling with the KV cache, the
           log-probs of the completions only, the clipped loss)
    trl    trl.GRPOTrainer with a peft_config, generating with transformers (no vLLM)

Each run is its own child process, and the runs alternate (ours, trl, ours, ...) so a shared
machine's noise falls on both. Reported per side: the median seconds per optimizer step (the
first two steps left out), our split of it between sampling and training (TRL does not report
its split), completion tokens per step, the peak resident memory of the training loop (VmHWM
reset as the loop starts) and the mean reward of the last tenth of the steps. Ratios are ours /
trl of the same repeat, median over repeats.

Results: bench/results/grpo-<time>.json (and the summary on stdout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.preference import loop_start, step_seconds
from bench.sides import last_tenth, peak_mib
from bench.throughput import build_model, child, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "trl")
REWARD_FILE = '''
def vowels(prompts, completions, **kwargs):
    """The share of vowels among the completion's letters (0 when it has none)."""
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else str(c)
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="training prompts")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--completion", type=int, default=32, help="max completion tokens")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the two runs")
    parser.add_argument("--model", default=None, help="a local model folder (default: demo)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = run_trl(spec) if args.child == "trl" else run_ours(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    spec = setup(args)
    print(f"bench: {spec['prompts']} prompts, {spec['steps']} steps of {spec['rows']} "
          f"completions ({spec['generations']} per prompt, at most {spec['completion']} "
          f"tokens), model {spec['model']}", flush=True)
    runs = []
    for r in range(args.repeats):
        for side in SIDES:
            result = child(side, spec, Path(spec["work"]) / f"grpo-{side}-{r}",
                           module="bench.grpo")
            runs.append({"repeat": r, **result})
            print(f"  {side:5s} repeat {r}: {result['step_s']:.2f} s/step"
                  + (f" (sampling {result['sample_s']:.2f}, training {result['train_s']:.2f})"
                     if result.get("sample_s") is not None else "")
                  + f", {result['completion_tokens']:.0f} completion tokens/step, peak "
                  f"{result['peak_mib']:,.0f} MiB, reward {result['final_reward']:.3f}",
                  flush=True)
    report = summarize(spec, runs)
    path = write_report(args.out, "grpo", report)
    print(format_summary(report))
    print(f"results: {path}")
    return 0


def setup(args) -> dict:
    from bench.dataset import bench_records

    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_model(work / "models" / "demo", "demo")
    data = work / f"grpo-prompts-{args.prompts}.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content":
                                                    f"{r['instruction']}\n\n{r['input']}"}]})
                            + "\n" for r in bench_records(args.prompts, 0)))
    home = work / "home"
    (home / "rewards").mkdir(parents=True, exist_ok=True)
    (home / "rewards" / "bench_rewards.py").write_text(REWARD_FILE)
    return {"work": str(work), "home": str(home), "model": str(model), "data": str(data),
            "prompts": args.prompts, "steps": args.steps, "completion": args.completion,
            "generations": 4, "rows": 8, "seed": 42, "r": 16, "alpha": 32, "lr": 1e-5,
            "reward_file": str(home / "rewards" / "bench_rewards.py"), "gpu": False}


# --------------------------------------------------------------------------- the children


def run_ours(spec: dict) -> dict:
    import os

    os.environ["FTSTUDIO_HOME"] = spec["home"]
    from engine.config import TrainConfig
    from engine.training.loop import run

    cfg = TrainConfig()
    cfg.model.name, cfg.output_dir = spec["model"], str(Path(spec["folder"]) / "run")
    cfg.data.train, cfg.data.val_fraction, cfg.data.max_seq_len = spec["data"], 0.0, 512
    cfg.method.kind, cfg.method.r, cfg.method.alpha = "lora", spec["r"], spec["alpha"]
    cfg.method.dropout = 0.0
    t = cfg.train
    t.objective, t.rewards = "grpo", [{"name": "bench_rewards.vowels"}]
    t.num_generations, t.batch_size, t.grad_accum = spec["generations"], spec["rows"], 1
    t.max_completion_len, t.temperature, t.top_p = spec["completion"], 1.0, 1.0
    t.grpo_loss_type, t.epsilon, t.num_iterations, t.scale_rewards = "dapo", 0.2, 1, "group"
    t.max_steps, t.lr, t.scheduler, t.warmup_ratio = spec["steps"], spec["lr"], "constant", 0.0
    t.weight_decay, t.seed, t.precision = 0.0, spec["seed"], "fp32"
    t.eval_every, t.save_every, t.log_every, t.eval_generate = 0, 0, 1, "off"

    class Clock:
        def __init__(self):
            self.ends, self.records, self.start_mib = [], [], 0.0

        def on_log(self, line: str) -> None:
            if line.startswith("training:"):
                self.start_mib = loop_start()

        def on_metrics(self, record: dict) -> None:
            if "loss" in record:
                self.ends.append(time.perf_counter())
                self.records.append(record)

        def should_stop(self) -> bool:
            return False

    clock = Clock()
    run(cfg, clock)
    steady = clock.records[2:] or clock.records
    return {"side": "ours", "step_s": step_seconds(clock.ends),
            "sample_s": statistics.median(r["sample_seconds"] for r in steady),
            "train_s": statistics.median(r["train_seconds"] for r in steady),
            "completion_tokens": statistics.median(r["completion_length"] * spec["rows"]
                                                   for r in steady),
            "peak_mib": peak_mib(False), "start_mib": clock.start_mib,
            "final_reward": last_tenth([r["reward"] for r in clock.records]),
            "steps": len(clock.ends)}


def run_trl(spec: dict) -> dict:
    import importlib.util

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from engine.models.load import load_tokenizer

    loaded = importlib.util.spec_from_file_location("bench_rewards", spec["reward_file"])
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    tokenizer = load_tokenizer(spec["model"])
    data = load_dataset("json", data_files=spec["data"], split="train")
    set_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    ends, start = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            start["mib"] = loop_start()

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    args = GRPOConfig(
        output_dir=str(Path(spec["folder"]) / "run"), per_device_train_batch_size=spec["rows"],
        num_generations=spec["generations"], max_completion_length=spec["completion"],
        temperature=1.0, top_p=1.0, loss_type="dapo", epsilon=0.2, beta=0.0,
        num_iterations=1, scale_rewards="group", max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, seed=spec["seed"], logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, bf16=False, use_cpu=True,
        gradient_checkpointing=False, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[module.vowels], args=args,
                          train_dataset=data, processing_class=tokenizer,
                          peft_config=LoraConfig(task_type="CAUSAL_LM", r=spec["r"],
                                                 lora_alpha=spec["alpha"], lora_dropout=0.0,
                                                 target_modules="all-linear"),
                          callbacks=[Clock()])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "reward" in r]
    steady = logs[2:] or logs
    return {"side": "trl", "step_s": step_seconds(ends), "sample_s": None, "train_s": None,
            "completion_tokens": statistics.median(
                r.get("completions/mean_length", 0.0) * spec["rows"] for r in steady),
            "peak_mib": peak_mib(False), "start_mib": start["mib"],
            "final_reward": last_tenth([r["reward"] for r in logs]), "steps": len(ends)}


# --------------------------------------------------------------------------- the report


def summarize(spec: dict, runs: list[dict]) -> dict:
    def side(name: str) -> dict:
        mine = [r for r in runs if r["side"] == name]
        keys = ["step_s", "completion_tokens", "peak_mib", "start_mib", "final_reward"]
        if name == "ours":
            keys += ["sample_s", "train_s"]
        return {k: statistics.median(r[k] for r in mine) for k in keys}

    def ratio(key: str) -> float:
        pairs = [(a, b) for a in runs for b in runs if a["side"] == "ours" and
                 b["side"] == "trl" and a["repeat"] == b["repeat"]]
        return statistics.median(a[key] / b[key] for a, b in pairs)

    return {"spec": {k: v for k, v in spec.items() if k not in ("work", "home")},
            "machine": machine(), "runs": runs, "sides": {s: side(s) for s in SIDES},
            "step_time_ratio": ratio("step_s"), "peak_memory_ratio": ratio("peak_mib")}


def format_summary(report: dict) -> str:
    s = report["sides"]
    rows = [("", *SIDES), ("s/step", *(f"{s[k]['step_s']:.2f}" for k in SIDES)),
            ("completion tok/step", *(f"{s[k]['completion_tokens']:,.0f}" for k in SIDES)),
            ("peak MiB", *(f"{s[k]['peak_mib']:,.0f}" for k in SIDES)),
            ("at loop start", *(f"{s[k]['start_mib']:,.0f}" for k in SIDES)),
            ("final reward", *(f"{s[k]['final_reward']:.3f}" for k in SIDES))]
    lines = ["  ".join(f"{c:>20}" for c in r) for r in rows]
    lines.append(f"ours: sampling {s['ours']['sample_s']:.2f} s + training "
                 f"{s['ours']['train_s']:.2f} s per step")
    lines.append(f"ours / trl: step time {report['step_time_ratio']:.2f}x, peak memory "
                 f"{report['peak_memory_ratio']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

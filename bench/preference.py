"""DPO step time and peak memory: ftstudio's engine against TRL's DPOTrainer.

Run as: python -m bench.preference [--pairs 160] [--steps 40] [--repeats 2] [--max-seq-len 512]
                                   [--out bench/results]

Every side trains the same model (the demo shape with random weights, built here, nothing
downloaded) with the same LoRA config (r 16, alpha 32, all linear layers), DPO sigmoid loss with
beta 0.1, learning rate, linear schedule, seed, float32, no gradient checkpointing, 4 pairs per
optimizer step, on the same conversational preference records (bench.dataset's records, chosen
the right answer and rejected a plausible mistake: the same words, shuffled):

    ours       engine.training.loop.run, train.objective dpo, data.packing off: chosen and rejected in
               one [2B, L] batch, the reference is the model with its adapter disabled (one
               more forward, no grad)
    ours-pre   the same with train.precompute_reference: the reference log-probs computed once
               before training (not in the step time; its one-off cost is reported)
    ours-packed  the default, data.packing on: several pairs packed into each of the 4 rows of
               2 x max_seq_len (varlen attention), so a step trains more pairs; compare pairs/s
    trl        trl.DPOTrainer with a peft_config (its reference is the adapter-disabled model
               too), precompute_ref_log_probs off, its own tokenisation of the same records
               (the tokenizer's chat template)

Each run is its own child process, and the runs alternate (ours, ours-pre, ours-packed, trl,
ours, ...) so a shared machine's noise falls on all. Reported per side: the median seconds per
optimizer step (the first two steps left out: warm-up) and pairs per second, the tokens per step
(both sides' real tokens, to show they compute the same work), the peak resident memory of the
training loop (VmHWM reset as the loop starts, so loading and tokenizing do not count) and the
resident memory the loop started from, and the loss of the last tenth of the steps. Ratios are
ours / trl of the same repeat, median over repeats.

Results: bench/results/preference-<time>.json (and the summary on stdout).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from bench.sides import last_tenth, peak_mib
from bench.throughput import build_model, child, machine, write_report

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "ours-pre", "ours-packed", "trl")
WARMUP_STEPS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=160, help="preference records")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = run_trl(spec) if args.child == "trl" else \
            run_ours(spec, precompute=args.child == "ours-pre",
                     packing=args.child == "ours-packed")
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    spec = setup(args)
    print(f"bench: {spec['pairs']} pairs, {spec['steps']} steps of {spec['batch_size']} pairs, "
          f"max_seq_len {spec['max_seq_len']}, model {spec['model']}", flush=True)
    runs = []
    for r in range(args.repeats):
        for side in SIDES:
            result = child(side, spec, Path(spec["work"]) / f"dpo-{side}-{r}",
                           module="bench.preference")
            runs.append({"repeat": r, **result})
            print(f"  {side:11s} repeat {r}: {result['step_s']:.3f} s/step, "
                  f"{result['pairs_per_s']:.2f} pairs/s, "
                  f"{result['tokens_per_step']:,.0f} tokens/step, peak "
                  f"{result['peak_mib']:,.0f} MiB, loss {result['final_loss']:.4f}"
                  + (f", precompute {result['precompute_s']:.1f}s"
                     if result.get("precompute_s") else ""), flush=True)
    report = summarize(spec, runs)
    path = write_report(args.out, "preference", report)
    print(format_summary(report))
    print(f"results: {path}")
    return 0


def pair_records(n: int, seed: int = 0) -> list[dict]:
    """Conversational DPO records: the bench task's right answer as chosen, the same words in a
    shuffled order (a plausible mistake of the same length) as rejected."""
    from bench.dataset import bench_records

    rng = random.Random(seed)
    out = []
    for r in bench_records(n, seed):
        wrong = r["output"].split()
        rng.shuffle(wrong)
        prompt = f"{r['instruction']}\n\n{r['input']}"
        out.append({"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": r["output"]}],
                    "rejected": [{"role": "assistant", "content": " ".join(wrong)}]})
    return out


def setup(args) -> dict:
    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "models" / "demo", "demo")
    data = work / f"pairs-{args.pairs}.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in pair_records(args.pairs)))
    return {"work": str(work), "home": str(work / "home"), "model": str(model),
            "data": str(data), "pairs": args.pairs, "steps": args.steps,
            "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "seed": 42,
            "r": 16, "alpha": 32, "lr": 5e-5, "beta": 0.1, "gpu": False}


def loop_start() -> float:
    """Reset the process's peak resident set (Linux: clear_refs 5) as the training loop starts,
    so the peak read at the end is the loop's; returns the resident MiB now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_seconds(ends: list[float]) -> float:
    """Median seconds between optimizer steps, warm-up steps left out."""
    gaps = [b - a for a, b in zip(ends, ends[1:])][WARMUP_STEPS:]
    return statistics.median(gaps)


# --------------------------------------------------------------------------- the children


def run_ours(spec: dict, precompute: bool, packing: bool = False) -> dict:
    from engine.config import TrainConfig
    from engine.training.loop import run

    cfg = TrainConfig()
    cfg.model.name, cfg.output_dir = spec["model"], str(Path(spec["folder"]) / "run")
    cfg.data.train, cfg.data.val_fraction = spec["data"], 0.0
    cfg.data.max_seq_len, cfg.data.packing = spec["max_seq_len"], packing
    cfg.method.kind, cfg.method.r, cfg.method.alpha = "lora", spec["r"], spec["alpha"]
    cfg.method.dropout = 0.0
    t = cfg.train
    t.objective, t.beta, t.precompute_reference = "dpo", spec["beta"], precompute
    t.max_steps, t.batch_size, t.grad_accum, t.lr = spec["steps"], spec["batch_size"], 1, \
        spec["lr"]
    t.scheduler, t.warmup_ratio, t.weight_decay, t.seed = "linear", 0.0, 0.0, spec["seed"]
    t.eval_every, t.save_every, t.log_every, t.eval_generate = 0, 0, 1, "off"
    t.gradient_checkpointing, t.precision = False, "fp32"

    class Clock:
        def __init__(self):
            self.ends, self.losses, self.lines = [], [], []
            self.tokens: list[int] = []
            self.pre_start = self.pre_s = None
            self.start_mib = 0.0
            self.per_row = 1.0

        def on_log(self, line: str) -> None:
            self.lines.append(line)
            if line.startswith("training:"):
                self.start_mib = loop_start()
            if line.startswith("reference: computed"):
                self.pre_s = float(line.split(" in ")[1].split("s")[0])
            if line.startswith("batching: packing"):   # "packing N pairs (...) into R rows"
                words = line.split()
                self.per_row = int(words[2]) / int(words[words.index("into") + 1])

        def on_metrics(self, record: dict) -> None:
            if "loss" in record:
                self.ends.append(time.perf_counter())
                self.losses.append(record["loss"])
                if "total_tokens_per_s" in record and len(self.ends) > 1:
                    self.tokens.append(record["total_tokens_per_s"] *
                                       (self.ends[-1] - self.ends[-2]))

        def should_stop(self) -> bool:
            return False

    clock = Clock()
    run(cfg, clock)
    step_s = step_seconds(clock.ends)
    pairs = spec["batch_size"] * clock.per_row
    return {"side": "ours-packed" if packing else "ours-pre" if precompute else "ours",
            "step_s": step_s, "pairs_per_step": pairs, "pairs_per_s": pairs / step_s,
            "tokens_per_step": statistics.median(clock.tokens) if clock.tokens else 0.0,
            "peak_mib": peak_mib(False), "start_mib": clock.start_mib,
            "final_loss": last_tenth(clock.losses), "steps": len(clock.ends),
            "precompute_s": clock.pre_s}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    from engine.models.load import load_tokenizer

    tokenizer = load_tokenizer(spec["model"])
    data = load_dataset("json", data_files=spec["data"], split="train")
    set_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False
    ends, tokens = [], []

    start = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            start["mib"] = loop_start()

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    args = DPOConfig(
        output_dir=str(Path(spec["folder"]) / "run"), per_device_train_batch_size=
        spec["batch_size"], max_steps=spec["steps"], learning_rate=spec["lr"],
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, seed=spec["seed"],
        beta=spec["beta"], loss_type=["sigmoid"], max_length=spec["max_seq_len"],
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, bf16=False,
        use_cpu=True, gradient_checkpointing=False, precompute_ref_log_probs=False,
        dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=spec["r"],
                                                lora_alpha=spec["alpha"], lora_dropout=0.0,
                                                target_modules="all-linear"),
                         callbacks=[Clock()])
    collate = trainer.data_collator

    def counted(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counted
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    step_s = step_seconds(ends)
    return {"side": "trl", "step_s": step_s, "pairs_per_step": spec["batch_size"],
            "pairs_per_s": spec["batch_size"] / step_s,
            "tokens_per_step": statistics.median(tokens) if tokens else 0.0,
            "peak_mib": peak_mib(False), "start_mib": start["mib"],
            "final_loss": last_tenth(losses), "steps": len(ends)}


# --------------------------------------------------------------------------- the report


def summarize(spec: dict, runs: list[dict]) -> dict:
    def side(name: str) -> dict:
        mine = [r for r in runs if r["side"] == name]
        return {k: statistics.median(r[k] for r in mine)
                for k in ("step_s", "pairs_per_s", "tokens_per_step", "peak_mib", "start_mib",
                          "final_loss")}

    def ratio(name: str, key: str) -> float:
        pairs = [(a, b) for a in runs for b in runs if a["side"] == name and
                 b["side"] == "trl" and a["repeat"] == b["repeat"]]
        return statistics.median(a[key] / b[key] for a, b in pairs)

    return {"spec": {k: v for k, v in spec.items() if k not in ("work", "home")},
            "machine": machine(), "runs": runs, "sides": {s: side(s) for s in SIDES},
            "step_time_ratio": {s: ratio(s, "step_s") for s in ("ours", "ours-pre")},
            "pairs_per_s_ratio": {s: ratio(s, "pairs_per_s") for s in SIDES[:-1]},
            "peak_memory_ratio": {s: ratio(s, "peak_mib") for s in SIDES[:-1]}}


def format_summary(report: dict) -> str:
    s = report["sides"]
    rows = [("", *SIDES), ("s/step", *(f"{s[k]['step_s']:.3f}" for k in SIDES)),
            ("pairs/s", *(f"{s[k]['pairs_per_s']:.2f}" for k in SIDES)),
            ("tokens/step", *(f"{s[k]['tokens_per_step']:,.0f}" for k in SIDES)),
            ("peak MiB", *(f"{s[k]['peak_mib']:,.0f}" for k in SIDES)),
            ("at loop start", *(f"{s[k]['start_mib']:,.0f}" for k in SIDES)),
            ("final loss", *(f"{s[k]['final_loss']:.4f}" for k in SIDES))]
    lines = ["  ".join(f"{c:>12}" for c in r) for r in rows]
    for k in SIDES[:-1]:
        step = report["step_time_ratio"].get(k)
        lines.append(f"{k} / trl: " + (f"step time {step:.2f}x, " if step else "") +
                     f"pairs/s {report['pairs_per_s_ratio'][k]:.2f}x, peak memory "
                     f"{report['peak_memory_ratio'][k]:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

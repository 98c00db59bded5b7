"""Throughput: ftstudio's engine against the default Hugging Face Trainer + peft path.

Run as: python -m bench.throughput [--records 600] [--repeats 2] [--gpu] [--out bench/results]
                                   [--kernels auto|liger|none] [--compile]

Both sides train the same model (random weights, built here, nothing downloaded) with the same
LoRA config, learning rate, schedule, seed and one epoch over the same tokenized examples
(engine.data.prepare's output, so both see exactly the same tokens), with about the same number
of examples per optimizer step:

    ours     engine.train.run: packing (best-fit decreasing, block-diagonal attention),
             chunked cross-entropy at trained positions only; batch_size rows of max_seq_len
    theirs   transformers.Trainer with its defaults: random order, DataCollatorForSeq2Seq
             (dynamic padding to the longest row of each batch), full logits; batch size chosen
             so that it takes as many optimizer steps per epoch as ours

Each run is its own child process, so its peak memory is its own (VmHWM, the peak resident set,
on CPU; torch.cuda.max_memory_allocated on a GPU), and the runs alternate (ours, theirs, ours,
theirs, ...) so that the noise of a shared machine falls on both. Reported per side: useful
(non-padding) tokens per second of the training loop (from the first step to the end of the
last; loading and saving excluded), the same per CPU-second of the process (time.process_time:
steadier than wall time when other work shares the machine), the padding share of the tokens
computed, peak memory, the mean training loss of the last tenth of the steps, and the loss of
the trained model on the same held-out records (HELDOUT records drawn with another seed; both
must have trained alike). The speedup is the median over repeats of ours / theirs measured in
the same repeat.

--gpu uses a Qwen2-0.5B shape (hidden 896, 24 layers, vocabulary 151,936) in bf16 and adds MFU:
model FLOPs per second over the device's peak dense bf16 FLOP/s (989e12 for H100/H200 SXM, or
--peak-tflops), with model FLOPs = 4 x N x useful tokens for LoRA (forward 2N, backward 2N for the
activation gradients; frozen weights get no weight gradient), N = parameters without the input
embedding table. Attention's own FLOPs are not counted. --kernels and --compile set ours'
train.kernels (default auto: Liger's kernels on a GPU where liger-kernel is installed) and
train.compile; the baseline keeps Trainer's defaults either way.

Results: bench/results/throughput-<time>.json (and the summary on stdout).

About 470 lines: both sides of the comparison (ours and the HF Trainer baseline), the data and
the report live in one script, so the benchmark is read and run as one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: peak dense bf16 FLOP/s of the GPUs we know (SXM parts; PCIe H100 is 756e12)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

CPU = dict(shape="demo", records=600, max_seq_len=512, batch_size=4, lr=1e-3)
GPU = dict(shape="qwen2-0.5b", records=20000, max_seq_len=1024, batch_size=8, lr=2e-4)
#: held-out records (another seed of the same generator) that both trained models are scored on
HELDOUT = 100
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=4096)


# --------------------------------------------------------------------------- the parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="a 0.5B Qwen2 shape in bf16, + MFU")
    parser.add_argument("--records", type=int, help="benchmark records (CPU 600, GPU 20000)")
    parser.add_argument("--max-seq-len", type=int, help="CPU 512, GPU 1024")
    parser.add_argument("--batch-size", type=int, help="our rows per step (CPU 4, GPU 8)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--kernels", choices=["auto", "liger", "none"], default="auto",
                        help="ours: train.kernels (Liger on GPUs; default auto)")
    parser.add_argument("--compile", action="store_true", help="ours: train.compile")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # ours|theirs: run one side
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = (run_ours if args.child == "ours" else run_theirs)(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    spec = setup(args)
    print(f"bench: {spec['records']} records, {spec['useful_tokens']:,} tokens; model "
          f"{spec['shape']}; ours {spec['batch_size']} rows x {spec['max_seq_len']}, theirs "
          f"{spec['hf_batch_size']} examples per step; {spec['steps']} steps each", flush=True)
    runs: list[dict] = []
    for r in range(args.repeats):
        for side in ("ours", "theirs"):
            result = child(side, spec, Path(spec["work"]) / f"{side}-{r}")
            runs.append({"repeat": r, **result})
            print(f"  {side:6s} repeat {r}: {result['useful_tokens_per_s']:,.0f} useful tokens/s "
                  f"({result['useful_tokens_per_cpu_s']:,.0f} per CPU-s), "
                  f"padding {result['padding_share']:.1%}, peak {result['peak_mib']:,.0f} MiB, "
                  f"loss {result['final_loss']:.4f}, held-out {result['heldout_loss']:.4f} "
                  f"({result['loop_seconds']:.1f}s)", flush=True)
    report = summarize(spec, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-{'gpu' if args.gpu else 'cpu'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(format_summary(report))
    print(f"results: {path}")
    return 0


def setup(args) -> dict:
    """Build the model and the dataset (once), tokenize through the engine's cache, and fix the
    settings both sides share."""
    from bench.dataset import write_bench_dataset
    from engine.data import Batches
    from engine.data import prepare
    from engine.model import load_tokenizer

    preset = dict(GPU if args.gpu else CPU)
    for key in ("records", "max_seq_len", "batch_size"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FTSTUDIO_HOME"] = str(work / "home")
    model = build_model(work / "models" / preset["shape"], preset["shape"])
    data = work / f"bench-{preset['records']}.json"
    if not data.exists():
        write_bench_dataset(data, preset["records"])
    spec = {**preset, "gpu": args.gpu, "work": str(work), "home": str(work / "home"),
            "model": str(model), "data": str(data), "seed": 42, "r": 16, "alpha": 32,
            "dropout": 0.05, "peak_flops": args.peak_tflops * 1e12 if args.peak_tflops else None,
            "kernels": args.kernels, "compile": args.compile}
    cfg = train_config(spec, work / "probe")
    tokenizer = load_tokenizer(str(model))
    prepared = prepare(cfg, tokenizer, log=lambda line: None)
    heldout = work / f"heldout-{HELDOUT}.json"
    if not heldout.exists():
        write_bench_dataset(heldout, HELDOUT, seed=1)
    cfg.data.train = str(heldout)
    scored = prepare(cfg, tokenizer, log=lambda line: None).train
    spec["heldout"] = str(work / f"heldout-{spec['max_seq_len']}.tokens.json")
    Path(spec["heldout"]).write_text(json.dumps(list(zip(scored["input_ids"],
                                                         scored["labels"]))))
    batches = Batches(prepared.train, batch_size=cfg.train.batch_size,
                      max_seq_len=cfg.data.max_seq_len, packing=True, order="shuffle",
                      seed=cfg.train.seed, pad_id=tokenizer.pad_token_id)
    n = len(prepared.train)
    spec.update(records=n, useful_tokens=int(sum(prepared.train["length"])), steps=len(batches),
                hf_batch_size=max(1, round(n / len(batches))))
    return spec


def child(side: str, spec: dict, folder: Path) -> dict:
    """Run one side in its own process and return its result."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = {**spec, "folder": str(folder), "result": str(folder / "result.json")}
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "FTSTUDIO_HOME": spec["home"], "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.throughput", "--child", side, "--spec",
                           str(folder / "spec.json")], cwd=ROOT, env=env,
                          stdout=(folder / "log.txt").open("w"), stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"bench: the {side} run failed; see {folder / 'log.txt'}")
    return json.loads((folder / "result.json").read_text())


def summarize(spec: dict, runs: list[dict]) -> dict:
    def side(name: str) -> dict:
        mine = [r for r in runs if r["side"] == name]
        med = {k: statistics.median(r[k] for r in mine)
               for k in ("useful_tokens_per_s", "useful_tokens_per_cpu_s", "padding_share",
                         "peak_mib", "final_loss", "heldout_loss", "loop_seconds")
               if all(k in r for r in mine)}
        if all(r.get("mfu") is not None for r in mine):
            med["mfu"] = statistics.median(r["mfu"] for r in mine)
        return {**med, "steps": mine[0]["steps"], "runs": mine}

    ours, theirs = side("ours"), side("theirs")
    pairs = [(a, b) for a in runs for b in runs
             if a["side"] == "ours" and b["side"] == "theirs" and a["repeat"] == b["repeat"]]
    import platform

    import torch
    import transformers
    import peft

    return {
        "command": "python -m bench.throughput " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "settings": {k: spec[k] for k in ("shape", "records", "useful_tokens", "max_seq_len",
                                          "batch_size", "hf_batch_size", "steps", "lr", "r",
                                          "alpha", "dropout", "seed", "gpu", "kernels",
                                          "compile")},
        "speedup_useful_tokens_per_s": statistics.median(
            a["useful_tokens_per_s"] / b["useful_tokens_per_s"] for a, b in pairs),
        "speedup_useful_tokens_per_cpu_s": statistics.median(
            a["useful_tokens_per_cpu_s"] / b["useful_tokens_per_cpu_s"] for a, b in pairs),
        "peak_memory_ratio": statistics.median(a["peak_mib"] / b["peak_mib"] for a, b in pairs),
        "ours": ours, "theirs": theirs,
    }


def format_summary(report: dict) -> str:
    o, t = report["ours"], report["theirs"]
    rows = [("useful tokens/s", f"{o['useful_tokens_per_s']:,.0f}",
             f"{t['useful_tokens_per_s']:,.0f}"),
            ("  per CPU-second", f"{o['useful_tokens_per_cpu_s']:,.0f}",
             f"{t['useful_tokens_per_cpu_s']:,.0f}"),
            ("padding share", f"{o['padding_share']:.1%}", f"{t['padding_share']:.1%}"),
            ("peak memory MiB", f"{o['peak_mib']:,.0f}", f"{t['peak_mib']:,.0f}"),
            ("final train loss", f"{o['final_loss']:.4f}", f"{t['final_loss']:.4f}"),
            ("held-out loss", f"{o['heldout_loss']:.4f}", f"{t['heldout_loss']:.4f}"),
            ("optimizer steps", str(o["steps"]), str(t["steps"]))]
    if "mfu" in o:
        rows.append(("MFU", f"{o['mfu']:.1%}", f"{t['mfu']:.1%}"))
    lines = [f"{'':18s} {'ftstudio':>12s} {'HF Trainer':>12s}"]
    lines += [f"{a:18s} {b:>12s} {c:>12s}" for a, b, c in rows]
    lines.append(f"speedup (useful tokens/s, median of pairs): "
                 f"{report['speedup_useful_tokens_per_s']:.2f}x wall clock, "
                 f"{report['speedup_useful_tokens_per_cpu_s']:.2f}x per CPU-second; peak memory "
                 f"ours/theirs {report['peak_memory_ratio']:.2f}")
    return "\n".join(lines)


def machine() -> dict:
    import platform

    import torch

    info = {"platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_model(folder: Path, shape: str) -> Path:
    """The demo model (CPU), or a Qwen2-0.5B shape with random weights and the demo tokenizer
    (GPU); built once into the work folder."""
    if (folder / "config.json").exists():
        return folder
    if shape == "demo":
        from engine.demo import build_demo_model

        return build_demo_model(folder, size="demo", max_position_embeddings=1024)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.demo import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **QWEN2_05B)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def train_config(spec: dict, out: Path):
    from engine.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name = spec["model"]
    cfg.data.train, cfg.data.val_fraction = spec["data"], 0.0
    cfg.data.max_seq_len, cfg.data.packing = spec["max_seq_len"], True
    cfg.method.kind, cfg.method.r = "lora", spec["r"]
    cfg.method.alpha, cfg.method.dropout = spec["alpha"], spec["dropout"]
    t = cfg.train
    t.epochs, t.max_steps, t.batch_size, t.grad_accum = 1, None, spec["batch_size"], 1
    t.lr, t.scheduler, t.warmup_ratio, t.weight_decay = spec["lr"], "linear", 0.0, 0.0
    t.eval_every, t.save_every, t.log_every, t.seed = 0, 0, 1, spec["seed"]
    t.kernels, t.compile = spec.get("kernels", "auto"), spec.get("compile", False)
    cfg.output_dir = str(out)
    return cfg


# --------------------------------------------------------------------------- the children


def peak_mib(gpu: bool) -> float:
    """This process's peak memory: GPU memory allocated by torch, else peak RSS (VmHWM)."""
    if gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2 ** 20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mfu(spec: dict, model, tokens_per_s: float) -> float | None:
    """4 x N x tokens/s over the peak (LoRA), N without the input embedding table."""
    if not spec["gpu"]:
        return None
    import torch

    peak = spec["peak_flops"] or next((v for k, v in PEAK_BF16.items()
                                       if k in torch.cuda.get_device_name(0)), None)
    if peak is None:
        return None
    embedding = model.get_input_embeddings().weight
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    tied = model.get_output_embeddings().weight is embedding
    n -= 0 if tied else embedding.numel()  # tied: the table is the lm_head, which does count
    return 4 * n * tokens_per_s / peak


def heldout_loss(spec: dict, model) -> float | None:
    """Mean next-token loss of a trained model on the held-out records (one at a time, so
    nothing is padded or packed), by the plain full-logits path."""
    import torch

    from engine.loss import causal_lm_loss

    if not spec.get("heldout"):
        return None
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    with torch.no_grad():
        for ids, labels in json.loads(Path(spec["heldout"]).read_text()):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits
            total += causal_lm_loss(logits, torch.tensor([labels], device=device)).item()
            count += sum(label != -100 for label in labels[1:])
    return total / max(count, 1)


def last_tenth(losses: list[float]) -> float:
    k = max(1, len(losses) // 10)
    return sum(losses[-k:]) / k


def run_ours(spec: dict) -> dict:
    """engine.train.run with timing taken from its own log and metrics callbacks."""
    from engine.train import run

    class Clock:
        def __init__(self):
            self.start = self.end = None
            self.losses: list[float] = []
            self.lines: list[str] = []

        def on_log(self, line: str) -> None:
            self.lines.append(line)
            if line.startswith("training:"):
                self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_metrics(self, record: dict) -> None:
            if "loss" in record:
                self.losses.append(record["loss"])
                self.end, self.cpu_end = time.perf_counter(), time.process_time()

        def should_stop(self) -> bool:
            return False

    cfg = train_config(spec, Path(spec["folder"]) / "run")
    clock = Clock()
    result = run(cfg, clock)
    peak = peak_mib(spec["gpu"])  # before the trained model is loaded again to be scored
    run_json = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    seconds = clock.end - clock.start
    rate = spec["useful_tokens"] / seconds
    cpu_rate = spec["useful_tokens"] / (clock.cpu_end - clock.cpu_start)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=torch.bfloat16 if spec["gpu"] else torch.float32,
        device_map={"": "cuda"} if spec["gpu"] else None)
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    return {"side": "ours", "useful_tokens_per_s": rate, "loop_seconds": seconds,
            "useful_tokens_per_cpu_s": cpu_rate,
            "padding_share": run_json["batching"]["padding_share"], "steps": result.steps,
            "peak_mib": peak, "final_loss": last_tenth(clock.losses),
            "heldout_loss": heldout_loss(spec, model), "mfu": mfu(spec, base, rate),
            "loss_path": next((l for l in clock.lines if l.startswith("loss:")), ""),
            "kernels": next((l for l in clock.lines if l.startswith("kernels:")), "")}


def run_theirs(spec: dict) -> dict:
    """transformers.Trainer + peft with their defaults over the same tokenized examples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    from engine.data import prepare
    from engine.model import load_tokenizer

    cfg = train_config(spec, Path(spec["folder"]) / "run")
    tokenizer = load_tokenizer(spec["model"])
    train = prepare(cfg, tokenizer, log=lambda line: None).train
    train = train.select_columns(["input_ids", "labels"])
    dtype = torch.bfloat16 if spec["gpu"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    model.config.use_cache = False
    set_seed(spec["seed"])  # the LoRA init draws from the global RNG, as ours does after its seed
    model = get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=spec["r"], lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"], target_modules="all-linear"))
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counted = {"real": 0, "total": 0}

    def collate(features):  # the default collator, with its padding counted
        batch = pad(features)
        counted["real"] += int(batch["attention_mask"].sum())
        counted["total"] += batch["attention_mask"].numel()
        return batch

    clock = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    args = TrainingArguments(
        output_dir=str(Path(spec["folder"]) / "run"), per_device_train_batch_size=
        spec["hf_batch_size"], num_train_epochs=1, learning_rate=spec["lr"],
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, seed=spec["seed"],
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        bf16=spec["gpu"], use_cpu=not spec["gpu"])
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate,
                      callbacks=[Clock()])
    trainer.train()
    seconds = clock["end"] - clock["start"]
    rate = counted["real"] / seconds
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    peak = peak_mib(spec["gpu"])
    cpu_seconds = clock["cpu_end"] - clock["cpu_start"]
    return {"side": "theirs", "useful_tokens_per_s": rate, "loop_seconds": seconds,
            "useful_tokens_per_cpu_s": counted["real"] / cpu_seconds,
            "padding_share": 1 - counted["real"] / max(counted["total"], 1),
            "steps": trainer.state.global_step, "peak_mib": peak,
            "final_loss": last_tenth(losses), "heldout_loss": heldout_loss(spec, model),
            "mfu": mfu(spec, model.get_base_model(), rate)}


if __name__ == "__main__":
    sys.exit(main())

"""Throughput: ftstudio's engine against Hugging Face Trainer + peft, at several max_seq_len.

Run as: python -m bench.throughput [--seq-len 512,2048,4096] [--tokens 40000] [--repeats 1]
                                   [--batch-tokens 8192] [--gpu] [--out bench/results]
                                   [--kernels auto|liger|none] [--compile]

At each max_seq_len L the data is its own: bench/dataset.py's log-normal records stretched to
spread to L (a long tail, like instruction and long-document data), about --tokens tokens of
them. Every side trains the same model (random weights, built here, nothing downloaded) with
the same LoRA config, learning rate, schedule, seed and one epoch over the same tokenized
examples (engine.data.prepare's output), with the same number of optimizer steps:

    ours          engine.training.loop.run: packing (best-fit decreasing) into rows of L, batches of a
                  fixed token budget (train.batch_tokens, so batch_tokens // L rows), attention
                  by model.attn_implementation auto (varlen: no L x L mask; engine/models/attention.py),
                  chunked cross-entropy at trained positions only
    theirs        transformers.Trainer with its defaults: random order, DataCollatorForSeq2Seq
                  (dynamic padding to the longest row of each batch), SDPA, full logits; batch
                  size chosen so that it takes as many optimizer steps per epoch as ours
    theirs_flat   HF's padding-free path, DataCollatorWithFlattening + flash_attention_2: only
                  where flash-attn runs (CUDA); on CPU the table says it is not available

Each run is its own child process (bench/sides.py), so its peak memory is its own (VmHWM, the
peak resident set, on CPU; torch.cuda.max_memory_allocated on a GPU), and the sides alternate
so that the noise of a shared machine falls on all. Reported per side and length: useful
(non-padding) tokens per second of the training loop (first step to the end of the last), the
same per CPU-second of the process (steadier when other work shares the machine), computed
tokens per second (padding included: the same work per token, compared), what is computed per
useful token (padding share; attention scores per useful token: a padded row of width W costs
W x W, a record of n tokens alone n x n), peak memory, the mean training loss of the last tenth
of the steps and the loss on held-out records (both must have trained alike). Ratios are the
median over repeats of ours / theirs measured in the same repeat.

--gpu uses a Qwen2-0.5B shape (hidden 896, 24 layers, vocabulary 151,936) in bf16 and adds MFU:
model FLOPs per second over the device's peak dense bf16 FLOP/s (989e12 for H100/H200 SXM, or
--peak-tflops), with model FLOPs = 4 x N x useful tokens for LoRA (forward 2N, backward 2N for the
activation gradients; frozen weights get no weight gradient), N = parameters without the input
embedding table. Attention's own FLOPs are not counted. --kernels and --compile set ours'
train.kernels and train.compile; the baselines keep Trainer's defaults either way.

Results: bench/results/throughput-<time>.json, the summary and a markdown table on stdout.
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

CPU = dict(shape="demo", tokens=40_000, batch_tokens=8192, lr=1e-3)
GPU = dict(shape="qwen2-0.5b", tokens=2_000_000, batch_tokens=32768, lr=2e-4)
#: held-out records (another seed of the same generator) that the trained models are scored on
HELDOUT = 60
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True, rope_theta=1e6)


# --------------------------------------------------------------------------- the parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="a 0.5B Qwen2 shape in bf16, + MFU")
    parser.add_argument("--seq-len", default="512,2048,4096",
                        help="max_seq_len values, comma-separated (default 512,2048,4096)")
    parser.add_argument("--tokens", type=int, help="tokens of data per length (CPU 40000)")
    parser.add_argument("--batch-tokens", type=int,
                        help="ours: train.batch_tokens, the fixed token budget (CPU 8192)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of runs (default 1)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--kernels", choices=["auto", "liger", "none"], default="auto",
                        help="ours: train.kernels (Liger on GPUs; default auto)")
    parser.add_argument("--compile", action="store_true", help="ours: train.compile")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a side of bench/sides.py
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from bench.sides import SIDES

        spec = json.loads(Path(args.spec).read_text())
        Path(spec["result"]).write_text(json.dumps(SIDES[args.child](spec)))
        return 0

    lengths = [int(x) for x in args.seq_len.split(",") if x.strip()]
    sides = ["ours", "theirs"] + (["theirs_flat"] if flat_available(args.gpu) else [])
    reports = []
    for length in lengths:
        spec = setup(args, length, max(lengths))
        print(f"bench: max_seq_len {length}: {spec['records']} records, "
              f"{spec['useful_tokens']:,} tokens (longest {spec['longest']}); model "
              f"{spec['shape']}; ours {spec['rows']} rows x {length} per batch, baselines "
              f"{spec['hf_batch_size']} records per batch; {spec['steps']} steps each",
              flush=True)
        runs: list[dict] = []
        for r in range(args.repeats):
            for side in sides:
                result = child(side, spec, Path(spec["work"]) / f"{length}-{side}-{r}")
                runs.append({"repeat": r, **result})
                print(f"  {side:11s} repeat {r}: {result['useful_tokens_per_s']:,.0f} useful "
                      f"tokens/s ({result['useful_tokens_per_cpu_s']:,.0f} per CPU-s), "
                      f"padding {result['padding_share']:.1%}, peak "
                      f"{result['peak_mib']:,.0f} MiB, loss {result['final_loss']:.4f}, "
                      f"held-out {result['heldout_loss']:.4f} "
                      f"({result['loop_seconds']:.1f}s)", flush=True)
        reports.append(summarize(spec, runs, sides))
        print(format_summary(reports[-1]), flush=True)
    report = overall(reports, args, sides)
    path = write_report(args.out, f"throughput-{'gpu' if args.gpu else 'cpu'}", report)
    print(markdown_table(report))
    print(f"results: {path}")
    return 0


def write_report(folder: str | Path, name: str, report: dict) -> Path:
    """The report as FOLDER/NAME-<time>.json."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    return path


def flat_available(gpu: bool) -> bool:
    """HF's padding-free baseline needs flash-attn on a CUDA GPU."""
    if not gpu:
        return False
    import torch
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


def setup(args, length: int, longest: int) -> dict:
    """Build the model (once) and this length's dataset, tokenize it through the engine's
    cache, and fix the settings every side shares."""
    from bench.dataset import records_for_tokens, write_bench_dataset
    from engine.data import Batches, prepare
    from engine.models.load import load_tokenizer

    preset = dict(GPU if args.gpu else CPU)
    for key in ("tokens", "batch_tokens"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FTSTUDIO_HOME"] = str(work / "home")
    model = build_model(work / "models" / f"{preset['shape']}-{longest}", preset["shape"],
                        longest)
    n = records_for_tokens(preset["tokens"], length)
    data = work / f"bench-{length}-{n}.json"
    if not data.exists():
        write_bench_dataset(data, n, longest=length)
    spec = {**preset, "gpu": args.gpu, "work": str(work), "home": str(work / "home"),
            "model": str(model), "data": str(data), "seed": 42, "r": 16, "alpha": 32,
            "dropout": 0.05, "peak_flops": args.peak_tflops * 1e12 if args.peak_tflops else None,
            "kernels": args.kernels, "compile": args.compile, "max_seq_len": length}
    cfg = train_config(spec, work / "probe")
    tokenizer = load_tokenizer(str(model))
    prepared = prepare(cfg, tokenizer, log=lambda line: None)
    heldout = work / f"heldout-{length}-{HELDOUT}.json"
    if not heldout.exists():
        write_bench_dataset(heldout, HELDOUT, seed=1, longest=length)
    cfg.data.train = str(heldout)
    scored = prepare(cfg, tokenizer, log=lambda line: None).train
    spec["heldout"] = str(work / f"heldout-{length}.tokens.json")
    Path(spec["heldout"]).write_text(json.dumps(list(zip(scored["input_ids"],
                                                         scored["labels"]))))
    batches = Batches(prepared.train, batch_size=1, max_seq_len=length, packing=True,
                      order="shuffle", seed=cfg.train.seed, pad_id=tokenizer.pad_token_id,
                      batch_tokens=spec["batch_tokens"], varlen=True)
    lengths = list(prepared.train["length"])
    spec.update(records=len(lengths), useful_tokens=int(sum(lengths)), longest=max(lengths),
                steps=len(batches), rows=batches.batch_size,
                hf_batch_size=max(1, round(len(lengths) / len(batches))),
                ours_attention_per_token=sum(k * k for k in lengths) / sum(lengths))
    return spec


def child(side: str, spec: dict, folder: Path, module: str = "bench.throughput") -> dict:
    """Run one side in its own process (`python -m MODULE --child SIDE`) and return its
    result."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = {**spec, "folder": str(folder), "result": str(folder / "result.json")}
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "FTSTUDIO_HOME": spec["home"], "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-m", module, "--child", side, "--spec",
                           str(folder / "spec.json")], cwd=ROOT, env=env,
                          stdout=(folder / "log.txt").open("w"), stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"bench: the {side} run failed; see {folder / 'log.txt'}")
    return json.loads((folder / "result.json").read_text())


KEYS = ("useful_tokens_per_s", "useful_tokens_per_cpu_s", "computed_tokens_per_s",
        "padding_share", "attention_per_token", "peak_mib", "final_loss", "heldout_loss",
        "loop_seconds")


def summarize(spec: dict, runs: list[dict], sides: list[str]) -> dict:
    """One length: each side's medians, and ours over each baseline (median of the ratios
    within a repeat)."""
    def side(name: str) -> dict:
        mine = [r for r in runs if r["side"] == name]
        med = {k: statistics.median(r[k] for r in mine) for k in KEYS
               if all(r.get(k) is not None for r in mine)}
        if all(r.get("mfu") is not None for r in mine):
            med["mfu"] = statistics.median(r["mfu"] for r in mine)
        return {**med, "steps": mine[0]["steps"], "runs": mine}

    def ratio(key: str, other: str) -> float:
        return statistics.median(a[key] / b[key] for a in runs for b in runs
                                 if a["side"] == "ours" and b["side"] == other
                                 and a["repeat"] == b["repeat"])

    out = {"max_seq_len": spec["max_seq_len"],
           "settings": {k: spec[k] for k in ("shape", "records", "useful_tokens", "longest",
                                             "max_seq_len", "batch_tokens", "rows",
                                             "hf_batch_size", "steps", "lr", "r", "alpha",
                                             "dropout", "seed", "gpu", "kernels", "compile")},
           **{name: side(name) for name in sides}}
    for other in sides[1:]:
        out[f"ours_over_{other}"] = {
            "useful_tokens_per_s": ratio("useful_tokens_per_s", other),
            "useful_tokens_per_cpu_s": ratio("useful_tokens_per_cpu_s", other),
            "computed_tokens_per_s": ratio("computed_tokens_per_s", other),
            "peak_mib": ratio("peak_mib", other)}
    return out


def overall(reports: list[dict], args, sides: list[str]) -> dict:
    import platform

    import peft
    import torch
    import transformers

    return {"command": "python -m bench.throughput " + " ".join(sys.argv[1:]),
            "machine": machine(), "sides": sides,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
            "lengths": reports}


def format_summary(report: dict) -> str:
    names = [s for s in ("ours", "theirs", "theirs_flat") if s in report]
    heads = {"ours": "ftstudio", "theirs": "HF Trainer", "theirs_flat": "HF flat+FA2"}
    rows = [("useful tokens/s", "useful_tokens_per_s", "{:,.0f}"),
            ("  per CPU-second", "useful_tokens_per_cpu_s", "{:,.0f}"),
            ("computed tokens/s", "computed_tokens_per_s", "{:,.0f}"),
            ("padding share", "padding_share", "{:.1%}"),
            ("attn scores/token", "attention_per_token", "{:,.0f}"),
            ("peak memory MiB", "peak_mib", "{:,.0f}"),
            ("final train loss", "final_loss", "{:.4f}"),
            ("held-out loss", "heldout_loss", "{:.4f}"), ("MFU", "mfu", "{:.1%}")]
    lines = [f"max_seq_len {report['max_seq_len']}",
             f"{'':18s} " + " ".join(f"{heads[n]:>12s}" for n in names)]
    for label, key, fmt in rows:
        if all(key in report[n] for n in names):
            lines.append(f"{label:18s} " + " ".join(f"{fmt.format(report[n][key]):>12s}"
                                                    for n in names))
    for other in names[1:]:
        r = report[f"ours_over_{other}"]
        lines.append(f"ours / {heads[other]}: {r['useful_tokens_per_s']:.2f}x useful tokens/s "
                     f"({r['useful_tokens_per_cpu_s']:.2f}x per CPU-s), "
                     f"{r['computed_tokens_per_s']:.2f}x computed tokens/s, peak memory "
                     f"{r['peak_mib']:.2f}")
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    """The table in docs/performance.md: one line per length and side, ratios against HF Trainer."""
    heads = {"ours": "ftstudio", "theirs": "HF Trainer (padding)",
             "theirs_flat": "HF padding-free + FA2"}
    lines = ["| max_seq_len | side | useful tokens/s | per CPU-s | computed tokens/s | padding "
             "| attention scores / useful token | peak MiB | held-out loss | ours / this |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rep in report["lengths"]:
        for name in report["sides"]:
            s = rep[name]
            r = rep.get(f"ours_over_{name}")
            vs = (f"{r['useful_tokens_per_s']:.2f}x tokens/s, {r['computed_tokens_per_s']:.2f}x "
                  f"per computed token, {r['peak_mib']:.2f}x memory" if r else "")
            lines.append(f"| {rep['max_seq_len']} | {heads[name]} | "
                         f"{s['useful_tokens_per_s']:,.0f} | {s['useful_tokens_per_cpu_s']:,.0f} | "
                         f"{s['computed_tokens_per_s']:,.0f} | {s['padding_share']:.1%} | "
                         f"{s['attention_per_token']:,.0f} | {s['peak_mib']:,.0f} | "
                         f"{s['heldout_loss']:.3f} | {vs} |")
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


def build_model(folder: Path, shape: str, longest: int = 4096) -> Path:
    """The demo model (CPU), or a Qwen2-0.5B shape with random weights and the demo tokenizer
    (GPU); built once into the work folder."""
    if (folder / "config.json").exists():
        return folder
    if shape == "demo":
        from engine.models.demo import build_demo_model

        return build_demo_model(folder, size="demo", max_position_embeddings=longest)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.models.demo import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=longest,
                         **QWEN2_05B)
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
    t.epochs, t.max_steps, t.grad_accum = 1, None, 1
    t.batch_size, t.batch_tokens = 1, spec["batch_tokens"]   # batch_tokens // L packed rows
    t.lr, t.scheduler, t.warmup_ratio, t.weight_decay = spec["lr"], "linear", 0.0, 0.0
    t.eval_every, t.save_every, t.log_every, t.seed = 0, 0, 1, spec["seed"]
    t.kernels, t.compile = spec.get("kernels", "auto"), spec.get("compile", False)
    cfg.output_dir = str(out)
    return cfg


if __name__ == "__main__":
    sys.exit(main())

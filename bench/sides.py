"""The sides of bench.throughput, each run in its own process by the parent.

Run as: python -m bench.throughput --child ours|theirs|theirs_flat --spec SPEC.json
(the parent, `python -m bench.throughput`, writes the spec and starts these)

    ours          engine.training.loop.run (packing, varlen attention by auto, chunked loss)
    theirs        transformers.Trainer + peft with their defaults: DataCollatorForSeq2Seq pads
                  each random batch to its longest record, SDPA under a padding mask
    theirs_flat   Trainer with DataCollatorWithFlattening (records end to end, position_ids
                  restarting, flash attention's varlen kwargs) and flash_attention_2: HF's
                  padding-free path, the strongest fair baseline; CUDA with flash-attn only

Each returns its measurements as a dict (see run_ours); the parent writes them to spec.result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


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

    from bench.throughput import PEAK_BF16

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

    from engine.training.loss import causal_lm_loss

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
    """engine.training.loop.run with timing taken from its own log and metrics callbacks."""
    from bench.throughput import train_config
    from engine.training.loop import run

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
    padding = run_json["batching"]["padding_share"]
    return {"side": "ours", "useful_tokens_per_s": rate, "loop_seconds": seconds,
            "useful_tokens_per_cpu_s": cpu_rate, "padding_share": padding,
            "computed_tokens_per_s": rate / (1 - padding),
            "attention_per_token": spec["ours_attention_per_token"], "steps": result.steps,
            "peak_mib": peak, "final_loss": last_tenth(clock.losses),
            "heldout_loss": heldout_loss(spec, model), "mfu": mfu(spec, base, rate),
            "attention": next((l for l in clock.lines if l.startswith("attention:")), ""),
            "loss_path": next((l for l in clock.lines if l.startswith("loss:")), ""),
            "kernels": next((l for l in clock.lines if l.startswith("kernels:")), "")}


def run_theirs(spec: dict, flat: bool = False) -> dict:
    """transformers.Trainer + peft with their defaults over the same tokenized examples; flat:
    HF's padding-free collator with flash_attention_2 (DataCollatorWithFlattening)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainerCallback,
                              TrainingArguments, set_seed)

    from bench.throughput import train_config
    from engine.data import prepare
    from engine.models.load import load_tokenizer

    cfg = train_config(spec, Path(spec["folder"]) / "run")
    tokenizer = load_tokenizer(spec["model"])
    train = prepare(cfg, tokenizer, log=lambda line: None).train
    train = train.select_columns(["input_ids", "labels"])
    dtype = torch.bfloat16 if spec["gpu"] else torch.float32
    extra = {"attn_implementation": "flash_attention_2"} if flat else {}
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, **extra)
    model.config.use_cache = False
    set_seed(spec["seed"])  # the LoRA init draws from the global RNG, as ours does after its seed
    model = get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=spec["r"], lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"], target_modules="all-linear"))
    collator = (DataCollatorWithFlattening(return_flash_attn_kwargs=True) if flat else
                DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    counted = {"real": 0, "total": 0, "attention": 0}

    def collate(features):  # the collator, with its padding and attention scores counted
        batch = collator(features)
        lengths = [len(f["input_ids"]) for f in features]
        counted["real"] += sum(lengths)
        if flat:
            counted["total"] += sum(lengths)
            counted["attention"] += sum(n * n for n in lengths)
        else:
            rows, width = batch["attention_mask"].shape
            counted["total"] += rows * width
            counted["attention"] += rows * width * width
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
    return {"side": "theirs_flat" if flat else "theirs", "useful_tokens_per_s": rate,
            "loop_seconds": seconds, "useful_tokens_per_cpu_s": counted["real"] / cpu_seconds,
            "padding_share": 1 - counted["real"] / max(counted["total"], 1),
            "computed_tokens_per_s": counted["total"] / seconds,
            "attention_per_token": counted["attention"] / max(counted["real"], 1),
            "steps": trainer.state.global_step, "peak_mib": peak,
            "final_loss": last_tenth(losses), "heldout_loss": heldout_loss(spec, model),
            "mfu": mfu(spec, model.get_base_model(), rate)}


def run_theirs_flat(spec: dict) -> dict:
    return run_theirs(spec, flat=True)


SIDES = {"ours": run_ours, "theirs": run_theirs, "theirs_flat": run_theirs_flat}

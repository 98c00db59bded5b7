"""The training loop: setup, then step after step, then finish; one Accelerator for every layout.

Run as: python -m engine.training.loop CONFIG.yaml [--set key=value ...]
    or: accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m engine.training.loop CONFIG.yaml
(two processes, DDP or FSDP2 by parallel.strategy (engine/training/parallel.py); on a machine
without GPUs they use gloo on CPU, where accelerate cannot shard; add --mixed_precision no
--dynamo_backend no to silence accelerate's defaults warning; --cpu would start ONE process.)
From Python: `result = engine.training.loop.run(cfg, reporter)` (what `ftstudio train` and the job
runner call).

One optimizer step = grad_accum micro-batches; its loss is the mean over every token that
carries loss in those micro-batches on every process. Data order, dropout and NEFTune noise come
from seeded RNGs that checkpoints save, so a resumed run repeats an uninterrupted one exactly.
Only the main process reports and writes files.

About 550 lines, on purpose: `run` is setup -> fit -> finish (the first 200 lines, the loop on
one screen), followed by the evaluation, checkpoint and batching helpers they call, so the whole
path of a step can be read in one file.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engine.models.attention import is_varlen
from engine.data import Batches, to_device, trained_tokens
from engine.training.checkpoint import (RunFiles, TrainState, capture_rng, find_checkpoint,
                               list_checkpoints, load_checkpoint, prune_checkpoints, restore_rng,
                               run_facts, save_checkpoint, stamp)
from engine.config import TrainConfig, check, eval_generate_every, packing_applies
from engine.training.loss import TokenLoss
from engine.training.optim import add_neftune_noise, build_optimizer
from engine.training.reporter import NullReporter, PrintReporter, Reporter
from engine.training.speedups import compile_body, liger_fused_loss
from engine.training.trackers import tracked


@dataclass
class RunResult:
    output_dir: str
    adapter_dir: str | None
    metrics: dict[str, Any] = field(default_factory=dict)   # the final metrics
    steps: int = 0
    stopped_early: bool = False
    cancelled: bool = False
    best_eval_loss: float | None = None


@dataclass
class Session:
    """Everything one run holds between setup, fit and finish."""

    cfg: TrainConfig
    accelerator: Any
    model: Any                       # as prepared by accelerate (DDP-wrapped or FSDP-sharded)
    unwrapped: Any                   # the model itself: saved, evaluated, generated with
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_batches: Batches
    eval_batches: Batches | None
    loss_of: TokenLoss
    state: TrainState
    files: RunFiles
    reporter: Reporter
    say: Callable[[str], None]
    total_steps: int
    gen: Any = None                  # engine.evaluation.evaluate.GenEval on the main process, or None
    rng: dict[str, Any] | None = None
    saved_step: int | None = None    # step of the newest checkpoint of this run
    interrupted: bool = False        # Ctrl-C: other processes may be gone, wait for none
    started: float = field(default_factory=time.time)
    throughput: "Throughput | None" = None
    sharded: bool = False            # FSDP: weights are shards, every forward is collective
    reference: Any = None            # grpo after full fine-tuning with beta: a frozen copy

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def barrier(self) -> None:
        if not self.interrupted:
            self.accelerator.wait_for_everyone()


def run(cfg: TrainConfig, reporter: Reporter | None = None) -> RunResult:
    """Train cfg to the end (or to early stopping, or until the reporter says stop)."""
    with tracked(cfg, reporter or NullReporter()) as reporter:  # train.report_to (trackers.py)
        session = setup(cfg, reporter)
        return finish(session, fit(session))


def setup(cfg: TrainConfig, reporter: Reporter) -> Session:
    """Model, data, batches, optimizer and schedule, the checkpoint to resume, the run files."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from engine.data import prepare
    from engine.models.load import load_model
    from engine.training.parallel import (check_sharded, choose_strategy, keep_quant_state,
                                         launched_processes, make_accelerator)

    check(cfg, require_output_dir=True)
    t, out = cfg.train, Path(cfg.output_dir)
    strategy, why = choose_strategy(cfg, launched_processes())  # engine/training/parallel.py
    accelerator = make_accelerator(cfg, strategy, mixed_precision(t.precision))  # precision.py
    say = reporter.on_log if accelerator.is_main_process else (lambda line: None)
    say(f"parallel: {why}")
    started = time.time()
    set_seed(t.seed)
    resume_dir = find_checkpoint(t.resume_from, out) if t.resume_from else None
    model, tokenizer, info = load_model(cfg, log=say, device=accelerator.device,
                                        sharded=strategy == "fsdp")
    if t.objective == "grpo":    # prompts, not tokenized examples (engine/training/grpo.py)
        from engine.training import grpo

        data = grpo.prepare(cfg, tokenizer, log=say)
        train_batches, eval_batches = None, None
        per_epoch = len(data.train) // (t.batch_size * t.grad_accum // t.num_generations *
                                        accelerator.num_processes)
        total_steps = t.max_steps or math.ceil(t.epochs * max(per_epoch, 1) * t.num_iterations)
    else:
        with accelerator.main_process_first():
            data = prepare(cfg, tokenizer, log=say)
        check_objective_data(cfg, data)
        mask_dtype = compute_dtype(model, accelerator.mixed_precision)
        train_batches, eval_batches = make_batches(cfg, data, tokenizer, mask_dtype, accelerator,
                                                   say, varlen=is_varlen(info["attention"]))
        total_steps = t.max_steps or math.ceil(t.epochs * len(train_batches) / t.grad_accum)
    optimizer = build_optimizer(model, t)
    scheduler = get_scheduler(t.scheduler, optimizer, num_training_steps=total_steps,
                              num_warmup_steps=math.ceil(t.warmup_ratio * total_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    if strategy == "fsdp":
        say(check_sharded(model))            # every weight a shard, or a clear error
        keep_quant_state(model)              # qlora: bitsandbytes' 4-bit state per gather
    unwrapped = accelerator.unwrap_model(model)
    if t.objective == "distill":    # engine/training/distill.py: a teacher, or its cached top-k
        from engine.training.distill import make_distill_loss

        loss_of = make_distill_loss(cfg, unwrapped, tokenizer, accelerator, info,
                                    [train_batches, eval_batches], say)
    elif t.objective == "grpo":
        loss_of = grpo.GRPO(cfg, tokenizer, unwrapped, data.train, rank=accelerator.process_index,
                            world=accelerator.num_processes, log=say, out=out,
                            main=accelerator.is_main_process, data_name=Path(cfg.data.train).name)
    else:
        loss_of = make_loss(cfg, unwrapped, accelerator, info, say)
    if t.precompute_reference:      # dpo: each pair's reference log-probs once (cached)
        from engine.training.reference import precompute

        precompute(cfg, loss_of, [train_batches, eval_batches], log=say,
                   main_first=accelerator.main_process_first, device=accelerator.device)
    if t.compile:
        compile_body(unwrapped, say)
    state, rng = TrainState(), None
    if resume_dir:
        state, rng = load_checkpoint(resume_dir, unwrapped, optimizer, scheduler,
                                     rank=accelerator.process_index)
        say(f"resume: continuing from {resume_dir} at step {state.step} of {total_steps}")
        if t.objective == "grpo":
            grpo.load_buffer_into(loss_of, resume_dir, accelerator, say)
    if t.neftune_alpha:
        add_neftune_noise(unwrapped, t.neftune_alpha)
        say(f"neftune: noise alpha {t.neftune_alpha} on the input embeddings while training")
    files = RunFiles(out, accelerator.is_main_process, reporter,
                     resumed_at=state.step if resume_dir else None)
    session = Session(cfg, accelerator, model, unwrapped, tokenizer, optimizer, scheduler,
                      train_batches, eval_batches, loss_of, state, files, reporter, say,
                      total_steps, rng=rng, saved_step=state.step if resume_dir else None,
                      started=started, sharded=strategy == "fsdp")
    if t.objective == "grpo" and cfg.method.kind == "full" and t.beta:
        session.reference = copy_reference(unwrapped)   # the KL term's frozen starting model
    if session.sharded and t.eval_generate != "off":
        say("eval generate: skipped under fsdp (no process holds the whole model); score the "
            "trained model afterwards with `ftstudio eval JOB`")
    elif session.main:  # generation evaluation (engine/evaluation/evaluate.py): base answers before step 1
        from engine.evaluation.evaluate import GenEval

        session.gen = GenEval.prepare(cfg, data, tokenizer, out, say) \
            if t.objective != "grpo" else grpo.make_reward_eval(cfg, data, tokenizer, out, say)
        if session.gen is not None and t.objective == "distill":   # teacher vs student
            session.gen.teacher_answers(t.teacher)
        elif session.gen is not None:
            session.gen.base_answers(unwrapped, separate_base=cfg.method.kind == "full",
                                     trained=state.step > 0)
    session.barrier()
    files.update(status="running", **run_facts(cfg, info, data.report.to_dict()),
                 total_steps=total_steps, processes=accelerator.num_processes,
                 parallel=strategy,
                 precision=accelerator.mixed_precision,
                 batching=train_batches.summary() if train_batches is not None else None,
                 resumed_from=str(resume_dir or "") or None, timings={"start": stamp(started)})
    return session


def fit(s: Session) -> str:
    """Step after step until the last one, early stopping or a stop request; returns the status:
    running (it reached the end), stopped_early or cancelled."""
    t, state, acc = s.cfg.train, s.state, s.accelerator
    if t.objective == "grpo":   # sample, score, step: engine/training/grpo.py
        from engine.training.grpo import fit as grpo_fit

        return grpo_fit(s, agree=agree, generate_and_track=generate_and_track,
                        global_sum=global_sum, save=save)
    world = acc.num_processes
    s.say(f"training: {s.total_steps} steps of {t.grad_accum} x {t.batch_size} rows"
          f"{f' x {world} processes' if world > 1 else ''}; {len(s.train_batches)} batches per "
          "epoch")
    stream = micro_batches(s.train_batches, state.epoch, state.batch_index)
    if s.rng is not None:
        restore_rng(s.rng)
    s.rng, status = capture_rng(), "running"
    throughput = s.throughput = Throughput(state.trained_tokens, state.seen_tokens)
    gen_every = eval_generate_every(t.eval_generate)
    try:
        while state.step < s.total_steps:
            s.model.train()
            step = [next(stream) for _ in range(t.grad_accum)]
            n_units = int(global_sum(acc, sum(s.loss_of.units(b) for b, *_ in step)))
            n_tokens = int(global_sum(acc, sum(trained_tokens(b) for b, *_ in step)))
            n_seen = int(global_sum(acc, sum(seen for *_, seen in step)))
            loss_sum = torch.zeros((), device=acc.device)
            for i, (batch, epoch, index, _) in enumerate(step):
                batch = to_device(batch, acc.device)
                with nullcontext() if i == len(step) - 1 else acc.no_sync(s.model):
                    loss = s.loss_of(s.model, batch)
                    acc.backward(loss * world / max(n_units, 1))
                loss_sum += loss.detach()
            grad_norm = acc.clip_grad_norm_(s.model.parameters(), t.max_grad_norm or math.inf)
            lr = s.scheduler.get_last_lr()[0]
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            state.advance(epoch, index, t.grad_accum, n_tokens, n_seen)
            s.rng = capture_rng()

            if state.step % t.log_every == 0 or state.step == s.total_steps:
                s.files.metrics({"step": state.step,
                                 "epoch": round(state.micro_steps / len(s.train_batches), 4),
                                 "loss": global_sum(acc, loss_sum) / max(n_units, 1),
                                 "lr": lr, "grad_norm": float(grad_norm),
                                 **s.loss_of.take_metrics(lambda v: global_sum(acc, v)),
                                 **throughput.since_last(state.trained_tokens,
                                                         state.seen_tokens),
                                 "total_steps": s.total_steps})
            if s.eval_batches and t.eval_every and state.step % t.eval_every == 0:
                status = "stopped_early" if evaluate_and_track(s) else status
            if gen_every and state.step % gen_every == 0:
                status = "stopped_early" if generate_and_track(s) else status
            if t.save_every and state.step % t.save_every == 0:
                save(s)
            if status == "stopped_early":
                break
            if agree(acc, s.main and s.reporter.should_stop()) and state.step < s.total_steps:
                s.say(f"stop requested: stopping after step {state.step}")
                return "cancelled"
    except KeyboardInterrupt:
        s.interrupted = True
        s.say(f"interrupted: stopping after step {state.step}")
        return "cancelled"
    except Exception as exc:
        s.files.update(status="failed", error=f"{type(exc).__name__}: {exc}", steps=state.step)
        raise
    return status


def finish(s: Session, status: str) -> RunResult:
    """The last evaluation and checkpoint, the adapter (unless early stopping kept the best),
    the final generation evaluation, run.json's end."""
    t, state = s.cfg.train, s.state
    status = "completed" if status == "running" else status
    if s.eval_batches and status != "cancelled" and state.last_eval_step != state.step:
        evaluate_and_track(s)
    if s.saved_step != state.step:
        save(s, "end of run" if status != "cancelled" else "stopped")
    keeps_best = t.early_stopping_patience is not None and (
        state.best_metric if t.early_stopping_metric.startswith("gen_")
        else state.best_eval_loss) is not None
    if not keeps_best:
        keep_adapter(s)
    s.barrier()
    if status != "cancelled" and t.eval_generate != "off":
        if keeps_best and state.best_step != state.step:  # score what a person downloads
            if s.gen is not None:
                restore_kept(s.unwrapped, s.out / "adapter", s.say)
                s.gen.run(s.unwrapped, state.step, kept_step=state.best_step)
            s.barrier()
        elif state.last_gen_step != state.step:
            generate_and_track(s)
    if s.main and t.objective == "distill" and status != "cancelled":  # teacher vs student
        from engine.training.distill import write_card

        s.files.update(distill=write_card(s.cfg, s.out, s.say))
    seconds = time.time() - s.started
    rates = s.throughput.overall(state.trained_tokens, state.seen_tokens) if s.throughput \
        else {}
    s.files.update(status=status, steps=state.step, final_metrics=s.files.final_metrics(),
                   best_eval_loss=state.best_eval_loss,
                   timings={"start": stamp(s.started), "end": stamp(time.time()),
                            "seconds": round(seconds, 2), **rates})
    if status == "cancelled":
        s.say("to resume: ftstudio train CONFIG --set train.resume_from="
              f"{(list_checkpoints(s.out) or ['latest'])[-1]}")
    s.say(f"finished ({status}) after {state.step} steps in {seconds:.1f}s; "
          f"{'best adapter' if keeps_best else 'adapter'} in {s.out / 'adapter'}")
    return RunResult(output_dir=str(s.out), adapter_dir=str(s.out / "adapter"),
                     metrics=s.files.final_metrics(), steps=state.step,
                     stopped_early=status == "stopped_early", cancelled=status == "cancelled",
                     best_eval_loss=state.best_eval_loss)


def keep_adapter(s: Session) -> None:
    """adapter/: the trained adapter (or model) and its tokenizer, written by the main process;
    under FSDP every process calls it (the weights are gathered from their shards first)."""
    from engine.models.load import save_trained
    from engine.training.parallel import gathered_state_dict

    if s.sharded and s.interrupted:   # gathering needs every process
        s.say("adapter: not gathered after the interrupt (fsdp); resume to finish the run")
        return
    tensors = gathered_state_dict(s.model, trainable_only=s.cfg.method.kind != "full") \
        if s.sharded else None
    if s.main:
        save_trained(s.unwrapped, s.tokenizer, s.out / "adapter", state_dict=tensors)


def save(s: Session, reason: str | None = None) -> None:
    """A resumable checkpoint of this step (every process takes part), and the old ones pruned."""
    t = s.cfg.train
    if s.sharded and s.interrupted:   # shards are written together: a missing process hangs it
        s.say("checkpoint: not saved after the interrupt (fsdp); the last one stays")
        return
    folder = save_checkpoint(s.out / "checkpoints", s.unwrapped, s.optimizer, s.scheduler,
                             s.state, s.rng, rank=s.accelerator.process_index,
                             barrier=s.barrier, sharded=s.sharded)
    if t.objective == "grpo":   # the generation batch still being trained on
        from engine.training.grpo import save_buffer

        save_buffer(s, folder)
    s.saved_step = s.state.step
    gone = prune_checkpoints(s.out, t.keep_checkpoints) if s.main else []
    s.say(f"checkpoint: saved {folder} ({reason or f'every {t.save_every} steps'})"
          + (f"; removed {', '.join(p.name for p in gone)}" if gone else ""))


# --------------------------------------------------------------------------- evaluation
# (the loss itself, chunked through the lm_head, is engine/training/loss.py)


@torch.no_grad()
def evaluate(model, batches: Batches, accelerator, loss_of: TokenLoss | None = None,
             lockstep: bool = False) -> dict[str, float]:
    """eval_loss (mean over trained tokens), eval_perplexity and eval_token_accuracy (share of
    trained tokens predicted exactly), over the validation split shared across processes.
    lockstep (FSDP: every forward gathers weights from all processes): each process runs as
    many batches as the busiest one, the spare ones repeating a batch whose result is dropped."""
    model = accelerator.unwrap_model(model)  # no DDP collectives: processes may run unequal counts
    model.eval()
    loss_of = loss_of or TokenLoss(model, autocast=accelerator.autocast, log=lambda line: None)
    plan, world = batches.plan(0), accelerator.num_processes
    mine = plan[accelerator.process_index::world]
    spare = math.ceil(len(plan) / world) - len(mine) if lockstep else 0
    totals = None
    for i, rows in enumerate(mine + plan[:1] * spare):
        batch = to_device(batches.collate(rows), accelerator.device)
        part = torch.stack(loss_of.evaluate(model, batch))
        if i < len(mine):
            totals = part if totals is None else totals + part
    if totals is None:  # this process had no batch: zeros of the loss's shape
        totals = torch.zeros(4 if hasattr(loss_of, "eval_metrics") else 3,
                             dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(totals, "sum").tolist()
    if hasattr(loss_of, "eval_metrics"):   # a preference objective (engine/training/preference.py)
        return loss_of.eval_metrics(totals)
    loss_sum, correct, count = totals
    loss = loss_sum / max(count, 1)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_token_accuracy": correct / max(count, 1)}


def evaluate_and_track(s: Session) -> bool:
    """Evaluate, record, keep the best adapter (with early stopping); True: patience is out."""
    state = s.state
    metrics = evaluate(s.model, s.eval_batches, s.accelerator, s.loss_of, lockstep=s.sharded)
    state.last_eval_step = state.step
    s.files.metrics({"step": state.step, "epoch": s.files.last_epoch, **metrics})
    improved = state.best_eval_loss is None or metrics["eval_loss"] < state.best_eval_loss
    s.say(f"eval at step {state.step}: " + ", ".join(
        f"{k.removeprefix('eval_').replace('_', ' ')} {v:.4g}" for k, v in metrics.items())
        + (" (best so far)" if improved else ""))
    if improved:
        state.best_eval_loss = metrics["eval_loss"]
    if s.cfg.train.early_stopping_metric != "eval_loss":
        return False
    return patience_is_out(s, improved, f"eval loss (best {state.best_eval_loss:.4f})")


def generate_and_track(s: Session) -> bool:
    """A generation evaluation on the main process (engine/evaluation/evaluate.py: answers, scores,
    eval.json) recorded as gen_* metrics; with a generation early_stopping_metric, True when
    its patience is out. Every process calls it (the others wait)."""
    from engine.evaluation.evaluate import flat_metrics

    state, name = s.state, s.cfg.train.early_stopping_metric
    state.last_gen_step = state.step
    record = s.gen.run(s.unwrapped, state.step) if s.gen is not None else None
    stop = False
    if record is not None:
        values = flat_metrics(record)
        s.files.metrics({"step": state.step, "epoch": s.files.last_epoch, **values})
        if name.startswith("gen_") and name in values:
            improved = state.best_metric is None or values[name] > state.best_metric
            if improved:
                state.best_metric = values[name]
            stop = patience_is_out(s, improved, f"{name} (best {state.best_metric:.4f})")
    s.barrier()
    return agree(s.accelerator, stop)


def patience_is_out(s: Session, improved: bool, what: str) -> bool:
    """Early stopping's bookkeeping after one evaluation of its metric: keep the best adapter,
    count evaluations without improvement; True when train.early_stopping_patience is out."""
    state = s.state
    state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
    if improved:
        state.best_step = state.step
    patience = s.cfg.train.early_stopping_patience
    if patience is None:
        return False
    if improved:
        keep_adapter(s)
    if state.evals_without_improvement >= patience:
        s.say(f"early stopping: {what} has not improved for {patience} evaluation(s); the best "
              "is kept in adapter/")
        return True
    return False


def restore_kept(model, folder: Path, say) -> None:
    """Put the weights early stopping kept in `folder` (adapter/) back into the model, so the
    final generation evaluation scores the adapter a person downloads (its record says
    kept_step; the live curves keep the evaluations made while training)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    tensors = {k: v for f in files for k, v in load_file(f).items()}
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, tensors)
    else:
        model.load_state_dict(tensors, strict=False)
    say(f"eval generate: scoring the best weights early stopping kept in {folder}")


def copy_reference(model):
    """A frozen copy of the model as it is now (the reference after full fine-tuning)."""
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def make_loss(cfg: TrainConfig, model, accelerator, info: dict[str, Any], say):
    """The loss of train.objective: engine.training.loss's TokenLoss for sft, engine.training.preference's
    PreferenceLoss otherwise (with a frozen copy of the starting model as the reference for
    dpo and kto after full fine-tuning, where no adapter can be disabled)."""
    t = cfg.train
    if t.objective == "sft":
        return TokenLoss(model, autocast=accelerator.autocast, log=say,  # engine/training/loss.py
                         fused=liger_fused_loss if info.get("kernels") == "liger" else None)
    import copy

    from engine.training.preference import PreferenceLoss

    reference = None
    if cfg.method.kind == "full" and t.objective in ("dpo", "kto") and \
            not t.precompute_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return PreferenceLoss(model, t, autocast=accelerator.autocast, reference=reference, log=say,
                          pad_id=getattr(model.config, "pad_token_id", None) or 0)


def check_objective_data(cfg: TrainConfig, data) -> None:
    """The detected format must fit train.objective (data.format auto is only known now): the
    rule of validate(), engine.config.objective_format_problem, raised as the data's error."""
    from engine.config import objective_format_problem
    from engine.data import DataError

    problem = objective_format_problem(cfg.train.objective, data.format)
    if problem:
        raise DataError(f"{cfg.data.train}: {problem.message}")


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed_precision for train.precision on this device (engine.training.precision)."""
    from engine.training.precision import mixed_mode, this_device

    return mixed_mode(precision, *this_device())


def compute_dtype(model, mixed: str) -> torch.dtype:
    """The dtype attention computes in (packed attention masks are built in it): mixed
    precision's, else the loaded weights' (engine.training.precision's compute rule)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        mixed, model.get_input_embeddings().weight.dtype)


def make_batches(cfg: TrainConfig, data, tokenizer, mask_dtype: torch.dtype, accelerator, say,
                 varlen: bool = False) -> tuple[Batches, Batches | None]:
    """The train and eval batches; varlen: packed batches as flat rows (engine/models/attention.py)
    for a model loaded with a varlen attention, else packed rows under a 4-D mask."""
    from engine.data import DataError

    d, t = cfg.data, cfg.train
    packing, why_not = packing_applies(cfg)
    if d.packing and not packing:
        say(f"batching: packing is off: {why_not}")
    common = dict(batch_size=t.batch_size, max_seq_len=d.max_seq_len, packing=packing,
                  seed=t.seed, pad_id=tokenizer.pad_token_id, mask_dtype=mask_dtype,
                  batch_tokens=t.batch_tokens, varlen=varlen)
    train = Batches(data.train, order=d.order, rank=accelerator.process_index,
                    world=accelerator.num_processes, log=say, **common)
    if len(train) == 0:
        size, key = ((f"{t.batch_tokens} tokens", "train.batch_tokens") if t.batch_tokens else
                     (f"{t.batch_size} rows", "train.batch_size"))
        raise DataError(f"{len(data.train)} training examples make too few batches of {size} "
                        f"for {accelerator.num_processes} processes; use a smaller {key} or "
                        "more data")
    say(train.describe())
    evals = Batches(data.validation, order="as_is", **common) \
        if data.validation is not None and len(data.validation) else None
    return train, evals


# --------------------------------------------------------------------------- loop helpers


def micro_batches(batches: Batches, epoch: int, index: int
                  ) -> Iterator[tuple[dict[str, torch.Tensor], int, int, int]]:
    """(batch, epoch, index, tokens) forever from (epoch, index) on; epoch and index name the
    position *after* the batch, which is where a checkpoint taken after it resumes; tokens:
    the batch's real (non-padding) tokens, prompts included."""
    while True:
        plan = batches.plan(epoch)
        for i in range(index, len(plan)):
            after = (epoch, i + 1) if i + 1 < len(plan) else (epoch + 1, 0)
            seen = batches.tokens(plan[i])
            yield batches.collate(plan[i]), *after, seen
        epoch, index = epoch + 1, 0


def global_sum(accelerator, value: float | torch.Tensor) -> float:
    """The sum of `value` over all processes (every process must call it)."""
    if accelerator.num_processes == 1:
        return float(value)
    total = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(total, "sum").item())


def agree(accelerator, flag: bool) -> bool:
    """True on every process when any process says True (the main one answers should_stop)."""
    return global_sum(accelerator, float(flag)) > 0


class Throughput:
    """Tokens per second since the last report and over this session: trained tokens (those
    that carry loss: tokens_per_s) and every real token computed, prompts included
    (total_tokens_per_s, the figure other tools report)."""

    def __init__(self, trained: int, seen: int):
        self.start, self.start_tokens = time.time(), (trained, seen)
        self.at, self.tokens = self.start, (trained, seen)

    def since_last(self, trained: int, seen: int) -> dict[str, float]:
        now = time.time()
        span = max(now - self.at, 1e-9)
        rates = {"tokens_per_s": round((trained - self.tokens[0]) / span, 1),
                 "total_tokens_per_s": round((seen - self.tokens[1]) / span, 1)}
        self.at, self.tokens = now, (trained, seen)
        return rates

    def overall(self, trained: int, seen: int) -> dict[str, float]:
        span = max(time.time() - self.start, 1e-9)
        return {"tokens_per_s": round((trained - self.start_tokens[0]) / span, 1),
                "total_tokens_per_s": round((seen - self.start_tokens[1]) / span, 1)}


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.training.loop CONFIG.yaml [--set k=v ...]`: train with log lines on stdout."""
    import argparse
    import json

    from accelerate import PartialState

    from engine.config import load_config

    parser = argparse.ArgumentParser(prog="python -m engine.training.loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-4")
    args = parser.parse_args(argv)
    result = run(load_config(args.config, args.overrides), PrintReporter())
    if PartialState().is_main_process:
        print(json.dumps({"steps": result.steps, "cancelled": result.cancelled,
                          "adapter_dir": result.adapter_dir, **result.metrics}), flush=True)
    return 130 if result.cancelled else 0


if __name__ == "__main__":
    sys.exit(main())

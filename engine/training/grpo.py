"""GRPO (train.objective grpo): sample completions, score them with reward functions, and take the
clipped policy-gradient step on group-relative advantages, in our own loop.

Use from Python:
    from engine.training.grpo import group_advantages, policy_loss
    adv, std = group_advantages(rewards, num_generations=4, scale_rewards="group")
    loss, stats = policy_loss(logps, old_logps, ref_logps, adv, mask, loss_type="dapo",
                              epsilon_low=0.2, epsilon_high=0.2, beta=0.0,
                              max_completion_len=256, grad_accum=1, batch_tokens=mask.sum())
    # the train loop (engine.training.loop) calls fit(session) for train.objective grpo

One generation batch = train.batch_size x train.grad_accum completions (per process) =
that / train.num_generations prompts, each answered num_generations times by sampling
(temperature, top-p, at most train.max_completion_len new tokens, batched with the KV cache,
stopping at the chat template's end of turn). Each completion is scored by train.rewards (a
weighted sum; engine/training/rewards.py), advantages are computed per prompt group, and the
batch is trained on for train.num_iterations optimizer steps of grad_accum micro-batches
(TRL's defaults: steps_per_generation = gradient_accumulation_steps).

The formulas are TRL 1.16 GRPOTrainer's (tests/engine/test_grpo_trl.py compares advantages,
losses and gradients within 1e-5 for each loss type). Per completion token t:
    ratio   r_t = exp(logp_t - old_logp_t)          (old = logp.detach() on the first pass when
                                                     num_iterations is 1, else the sampling
                                                     policy's log-probs, computed once)
    policy  l_t = -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A)
    kl      k_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (beta > 0: l_t += beta * k_t)
    logp    log_softmax(logits / temperature), as TRL scores its samples
and per micro-batch:
    grpo     mean over completions of (sum_t l_t / their tokens), / grad_accum
    bnpo     sum over tokens / tokens of the micro-batch, / grad_accum
    dr_grpo  sum over tokens / (completions x max_completion_len), / grad_accum
    dapo     sum over tokens / (tokens of the whole generation batch over all processes /
             processes): token-level normalisation over the generation batch
Advantages: A = reward - mean(group rewards), divided by (std + 1e-4) unless scale_rewards is
none (std: per group, or over the batch with "batch"; unbiased, NaN ignored). A reward that
every function left None (NaN) is left out of its group's mean and gets advantage 0.

Differences from TRL, on purpose: position ids follow the attention mask (left-padded prompts
are scored at the positions generation used; TRL scores them shifted), the sampling policy's
log-probs (num_iterations > 1) are taken with dropout off, generation batches are not
shuffled before being split into micro-batches, and a checkpoint taken inside a generation
batch keeps that batch (grpo_batch.safetensors) so a resumed run continues it exactly.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
#: completions kept in out/samples.json for the job page's table
SAMPLES_KEPT = 32
BUFFER_FILE = "grpo_batch.safetensors"


# --------------------------------------------------------------------------- the math


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN (TRL's nanstd)."""
    if dim is None:
        mean = torch.nanmean(x)
        var = torch.nanmean((x - mean) ** 2)
        count = (~torch.isnan(x)).sum()
    else:
        mean = torch.nanmean(x, dim=dim, keepdim=True)
        var = torch.nanmean((x - mean) ** 2, dim=dim)
        count = (~torch.isnan(x)).sum(dim=dim)
    return torch.sqrt(var * count / (count - 1))


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, std used) of total rewards [N] laid out group after group (each prompt's
    num_generations completions together). NaN rewards: out of the mean, advantage 0."""
    groups = rewards.view(-1, num_generations)
    mean = torch.nanmean(groups, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else \
            torch.zeros_like(rewards)
    elif scale_rewards in ("group", "none"):
        std = nanstd(groups, dim=1).repeat_interleave(num_generations) if num_generations > 1 \
            else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards {scale_rewards!r}: one of {SCALE_REWARDS}")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), std


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor | None,
                ref_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor, *,
                loss_type: str = "dapo", epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                beta: float = 0.0, max_completion_len: int = 256, grad_accum: int = 1,
                batch_tokens: float | torch.Tensor | None = None, processes: int = 1
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's loss (already divided as TRL divides it for gradient accumulation) and
    its metric sums: per-token logps/old/ref [B, T], advantages [B], mask [B, T] (completion
    tokens 1). batch_tokens: dapo's count of completion tokens in the generation batch over all
    processes."""
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = None
    if beta != 0.0:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / grad_accum
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0) / grad_accum
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_len) / grad_accum
    elif loss_type == "dapo":
        if batch_tokens is None:
            raise ValueError("loss_type dapo needs batch_tokens (the generation batch's "
                             "completion tokens over all processes)")
        total = torch.as_tensor(batch_tokens, dtype=per_token.dtype, device=per_token.device)
        loss = (per_token * mask).sum() / (total.clamp(min=1.0) / processes)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: one of {LOSS_TYPES}")
    with torch.no_grad():
        tokens = float(mask.sum())
        low = ((coef_1 < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((coef_1 > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = {"tokens": tokens, "clip_low": float((low * mask).sum()),
                 "clip_high": float((high * mask).sum()),
                 "clip": float((((low + high) > 0).to(mask.dtype) * mask).sum())}
        if kl is not None:
            stats["kl"] = float((kl * mask).sum())
    return loss, stats


def token_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                temperature: float = 1.0, autocast=None) -> torch.Tensor:
    """[B, C] log-probs of each completion token under `model` (logits / temperature), from
    one forward pass over prompt + completion that keeps only the completion's logits."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    width = completion_ids.shape[1]
    with (autocast or nullcontext)():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                       logits_to_keep=width + 1, use_cache=False).logits
    logits = logits[:, -(width + 1):-1, :].float() / temperature
    picked = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# --------------------------------------------------------------------------- prompts


@dataclass
class PromptStream:
    """The training prompts in epoch order (shuffled by seed per epoch, or as in the file)."""

    records: list                   # engine.data.prompts.PromptRecord
    per_batch: int                  # prompts per generation batch
    seed: int
    shuffle: bool = True
    rank: int = 0
    world: int = 1

    def order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.records)))
        if self.shuffle:
            random.Random(self.seed * 1000003 + epoch).shuffle(idx)
        return idx

    def __len__(self) -> int:       # generation batches per epoch (all processes together)
        return max(1, len(self.records) // (self.per_batch * self.world))

    def take(self, epoch: int, index: int) -> tuple[list, int, int]:
        """This process's prompts of generation batch `index` of `epoch`, and the position after
        it. A last partial batch of an epoch is skipped, as a drop-last sampler does."""
        if index >= len(self):
            epoch, index = epoch + 1, 0
        order = self.order(epoch)
        span = self.per_batch * self.world
        mine = order[index * span:(index + 1) * span][self.rank::self.world]
        after = (epoch, index + 1) if index + 1 < len(self) else (epoch + 1, 0)
        return [self.records[i] for i in mine], *after


def prompt_ids(tokenizer, record) -> list[int]:
    """The prompt's tokens as training and evaluation render them (engine.evaluation.evaluate)."""
    from engine.evaluation.evaluate import EvalExample
    from engine.evaluation.evaluate import prompt_ids as rendered

    kind = "messages" if record.conversational else "completion"
    return rendered(tokenizer, EvalExample(record.where, record.prompt, "", kind))


# --------------------------------------------------------------------------- sampling


@dataclass
class GenBatch:
    """One generation batch: tensors for the optimisation passes, and what the table shows."""

    prompt_ids: torch.Tensor          # [N, P] left-padded
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor      # [N, C] right-padded, the stop token included
    completion_mask: torch.Tensor
    advantages: torch.Tensor          # [N]
    old_logps: torch.Tensor | None    # [N, C] sampling policy (num_iterations > 1)
    ref_logps: torch.Tensor | None    # [N, C] reference (beta > 0)
    passes_left: int
    metrics: dict[str, float] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k).contiguous() for k in (
            "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")}
        for k in ("old_logps", "ref_logps"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k).contiguous()
        return out

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors(), str(folder / BUFFER_FILE),
                  metadata={"passes_left": str(self.passes_left),
                            "metrics": json.dumps(self.metrics)})

    @classmethod
    def load(cls, folder: Path) -> "GenBatch | None":
        from safetensors import safe_open

        path = folder / BUFFER_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(t["prompt_ids"], t["prompt_mask"], t["completion_ids"], t["completion_mask"],
                   t["advantages"], t.get("old_logps"), t.get("ref_logps"),
                   int(meta["passes_left"]), json.loads(meta.get("metrics") or "{}"))


def pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def sample(model, prompt_rows: list[list[int]], *, max_new_tokens: int, temperature: float,
           top_p: float, stops: list[int], pad: int, rows_per_call: int = 64
           ) -> list[list[int]]:
    """Sampled completions, one per prompt row: the new tokens up to and including the first
    stop token (or max_new_tokens of them). Batched (left padding) with the KV cache, dropout
    off."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for at in range(0, len(prompt_rows), rows_per_call):
            ids, mask = pad_left(prompt_rows[at:at + rows_per_call], pad)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, use_cache=True,
                                 eos_token_id=stops, pad_token_id=pad, num_beams=1,
                                 repetition_penalty=1.0)
            for row in gen[:, ids.shape[1]:].tolist():
                cut = next((k for k, t in enumerate(row) if t in stops), None)
                out.append(row if cut is None else row[:cut + 1])
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- one run


class GRPO:
    """What a GRPO run holds besides the loop's session: the prompts, reward functions, sampling
    settings, the current generation batch, and the metrics since the last report."""

    def __init__(self, cfg, tokenizer, model, train_records: list, *, rank: int, world: int,
                 log=print, out: Path | None = None, main: bool = True, data_name: str = ""):
        from engine.evaluation.evaluate import stop_token_ids
        from engine.training.rewards import resolve

        t = cfg.train
        self.cfg, self.t, self.tokenizer, self.log = cfg, t, tokenizer, log
        self.funcs = resolve(t.rewards)
        self.stops = stop_token_ids(tokenizer, model)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        rows = t.batch_size * t.grad_accum
        self.prompts = PromptStream(train_records, rows // t.num_generations, t.seed,
                                    cfg.data.order == "shuffle", rank, world)
        self.world, self.out, self.main, self.data_name = world, out, main, data_name
        self.buffer: GenBatch | None = None
        self.sums: dict[str, float] = {}
        self.encoded: dict[int, list[int]] = {}
        self.max_prompt = max(16, cfg.data.max_seq_len - t.max_completion_len)
        log(f"grpo: {len(train_records)} prompts, {self.prompts.per_batch} per generation batch "
            f"x {t.num_generations} completions, {t.num_iterations} pass(es) each; loss "
            f"{t.grpo_loss_type}, clip {t.epsilon:g}/{epsilon_high(t):g}, beta {grpo_beta(t):g}, "
            f"scale_rewards {t.scale_rewards}; rewards: " + ", ".join(
                f"{f.name}" + (f" x{f.weight:g}" if f.weight != 1 else "") for f in self.funcs))

    def steps_per_epoch(self) -> int:
        return len(self.prompts) * self.t.num_iterations

    def _ids(self, record) -> list[int]:
        key = id(record)
        if key not in self.encoded:
            self.encoded[key] = prompt_ids(self.tokenizer, record)[-self.max_prompt:]
        return self.encoded[key]

    def generate(self, model, records: list, step: int, reference=None, autocast=None
                 ) -> GenBatch:
        """Sample, score, compute advantages (and the old/ref log-probs the passes need)."""
        t, g = self.t, self.t.num_generations
        started = time.time()
        rows = [self._ids(r) for r in records for _ in range(g)]
        completions = sample(model, rows, max_new_tokens=t.max_completion_len,
                             temperature=t.temperature, top_p=t.top_p, stops=self.stops,
                             pad=self.pad)
        sampled = time.time()
        stop_set = set(self.stops)
        texts = [self.tokenizer.decode([x for x in c if x not in stop_set],
                                       skip_special_tokens=True) for c in completions]
        reps = [r for r in records for _ in range(g)]
        prompts = [r.prompt for r in reps]
        shown = [[{"role": "assistant", "content": x}] if r.conversational else x
                 for r, x in zip(reps, texts)]
        columns = {k: [r.columns.get(k) for r in reps] for k in (records[0].columns if records
                                                                  else {})}
        from engine.training.rewards import score

        scores = score(self.funcs, prompts, shown, columns, completion_ids=completions,
                       wheres=[f"{self.data_name} {r.where}".strip() for r in reps])
        advantages, std = group_advantages(scores.total, g, t.scale_rewards)
        device = next(model.parameters()).device
        p_ids, p_mask = pad_left(rows, self.pad)
        c_ids, c_mask = pad_right(completions, self.pad)
        old = ref = None
        if t.num_iterations > 1 or grpo_beta(t) != 0.0:
            was = model.training
            model.eval()
            with torch.no_grad():
                args = [x.to(device) for x in (p_ids, p_mask, c_ids, c_mask)]
                if t.num_iterations > 1:
                    old = self._chunked(model, args, autocast).cpu()
                if grpo_beta(t) != 0.0:
                    if reference is not None:
                        ref = self._chunked(reference, args, autocast).cpu()
                    else:
                        with model.disable_adapter():
                            ref = self._chunked(model, args, autocast).cpu()
            model.train(was)
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
        total = scores.total
        metrics = {"reward": float(torch.nanmean(total)), "reward_std": float(nanstd(total)),
                   "frac_reward_zero_std": float(torch.isclose(
                       std, torch.zeros_like(std)).float().mean()),
                   "completion_length": float(lengths.mean()),
                   "completion_clipped": float(sum(
                       1 for c in completions if not c or c[-1] not in stop_set) /
                       max(len(completions), 1)),
                   "sample_seconds": round(sampled - started, 3),
                   "reward_seconds": round(time.time() - sampled, 3)}
        for j, name in enumerate(scores.names):
            col = scores.per_func[:, j]
            metrics[f"rewards/{name}"] = float(torch.nanmean(col)) if not torch.isnan(
                col).all() else float("nan")
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        if self.main and self.out is not None:
            self._write_samples(step, reps, texts, scores, advantages)
        return GenBatch(p_ids, p_mask, c_ids, c_mask, advantages.float(), old, ref,
                        t.num_iterations, metrics)

    def _chunked(self, model, args, autocast) -> torch.Tensor:
        bs = max(1, self.t.batch_size)
        parts = [token_logps(model, *(a[i:i + bs] for a in args), self.t.temperature, autocast)
                 for i in range(0, args[0].shape[0], bs)]
        return torch.cat(parts)

    def _write_samples(self, step: int, reps, texts, scores, advantages) -> None:
        rows = []
        for i in range(min(len(texts), SAMPLES_KEPT)):
            rows.append({"step": step + 1, "prompt": reps[i].shown, "where": reps[i].where,
                         "completion": texts[i],
                         "rewards": {n: (None if math.isnan(v) else round(v, 4)) for n, v in
                                     zip(scores.names, scores.per_func[i].tolist())},
                         "reward": None if math.isnan(float(scores.total[i])) else
                         round(float(scores.total[i]), 4),
                         "advantage": round(float(advantages[i]), 4)})
        path = self.out / "samples.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"step": step + 1, "functions": scores.names, "rows": rows},
                                  ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)

    def micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """The buffer in grad_accum micro-batches of batch_size rows, each trimmed to its own
        widest prompt and completion."""
        b, n = self.buffer, self.buffer.prompt_ids.shape[0]
        out = []
        for at in range(0, n, self.t.batch_size):
            sl = slice(at, at + self.t.batch_size)
            pm, cm = b.prompt_mask[sl], b.completion_mask[sl]
            p0 = int((pm.sum(0) > 0).nonzero().min()) if pm.any() else 0
            c1 = max(1, int((cm.sum(0) > 0).nonzero().max()) + 1) if cm.any() else 1
            part = {"prompt_ids": b.prompt_ids[sl, p0:], "prompt_mask": pm[:, p0:],
                    "completion_ids": b.completion_ids[sl, :c1], "completion_mask": cm[:, :c1],
                    "advantages": b.advantages[sl]}
            for k in ("old_logps", "ref_logps"):
                if getattr(b, k) is not None:
                    part[k] = getattr(b, k)[sl, :c1]
            out.append(part)
        return out

    def add(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def take_metrics(self, total) -> dict[str, float]:
        """Clip ratios and KL (token means) since the last report, summed over processes."""
        s = {k: total(v) for k, v in sorted(self.sums.items())}
        tokens = max(s.pop("tokens", 0.0), 1.0)
        out = {"clip_ratio": s.get("clip", 0.0) / tokens,
               "clip_ratio_low": s.get("clip_low", 0.0) / tokens,
               "clip_ratio_high": s.get("clip_high", 0.0) / tokens}
        if "kl" in s:
            out["kl"] = s["kl"] / tokens
        self.sums = {}
        return out


def epsilon_high(t) -> float:
    return t.epsilon if t.epsilon_high is None else t.epsilon_high


def grpo_beta(t) -> float:
    """train.beta for GRPO: empty means 0 (no KL term and no reference pass), TRL's default."""
    return 0.0 if t.beta is None else t.beta


# --------------------------------------------------------------------------- the loop's part


@dataclass
class GrpoData:
    """What setup needs from the data: the train prompts, the held-out ones, and a report."""

    train: list
    held_out: list
    source: str
    fmt: str

    @property
    def report(self):
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.fmt, "kind": "prompt", "train_records": len(self.train),
                "validation_records": len(self.held_out), "validation_source": self.source}


def prepare(cfg, tokenizer, log=print) -> GrpoData:
    """The prompt records (engine.data.prompts) split as training splits data; the columns the
    built-in rewards read must exist (a DataError naming the reward and the column otherwise)."""
    from engine.data import DataError
    from engine.data.prompts import split_prompts
    from engine.training.rewards import needed_columns, resolve

    train, held, source = split_prompts(cfg)
    fmt = cfg.data.format
    if fmt == "auto":
        from engine.data.prompts import detect
        from engine.data.readers import read_records

        fmt = detect([r.data for r in read_records(cfg.data.train, "skip")
                      if isinstance(r.data, dict)][:1000])
    for column, reward in needed_columns(resolve(cfg.train.rewards)).items():
        if train and column not in train[0].columns:
            have = ", ".join(sorted(train[0].columns)) or "none besides the prompt"
            raise DataError(f"{cfg.data.train}: reward {reward} reads the column {column!r}, "
                            f"which the records do not have (their columns: {have}); add it, "
                            "or set the reward's args.column")
    need = cfg.train.batch_size * cfg.train.grad_accum // cfg.train.num_generations
    if len(train) < need:
        raise DataError(f"{cfg.data.train}: {len(train)} training prompts make no generation "
                        f"batch of {need} prompts (train.batch_size x train.grad_accum / "
                        "train.num_generations); use more prompts or smaller batches")
    log(f"data: {len(train)} prompts ({fmt} records) to train on, {len(held)} held out "
        f"({source})")
    return GrpoData(train, held, source, fmt)


def fit(s, *, agree, generate_and_track, global_sum, save) -> str:
    """GRPO's steps for engine.training.loop (the session `s`; the loop's own helpers passed in,
    so this module does not import the loop): generate when the current generation batch is
    used up, then one optimizer step over it; returns the loop's status."""
    from engine.training.checkpoint import capture_rng, restore_rng

    t, state, acc, run = s.cfg.train, s.state, s.accelerator, s.loss_of
    world = acc.num_processes
    s.say(f"training: {s.total_steps} steps; each generation batch is {t.batch_size} x "
          f"{t.grad_accum} completions{f' x {world} processes' if world > 1 else ''}, trained "
          f"on {t.num_iterations} time(s)")
    if s.rng is not None:
        restore_rng(s.rng)
    s.rng, status = capture_rng(), "running"
    from engine.config import eval_generate_every

    gen_every = eval_generate_every(t.eval_generate)
    position = (state.epoch, state.batch_index)
    try:
        while state.step < s.total_steps:
            if run.buffer is None or run.buffer.passes_left <= 0:
                records, *position = run.prompts.take(*position)
                run.buffer = run.generate(s.unwrapped, records, state.step,
                                          reference=s.reference,
                                          autocast=acc.autocast)
            generated = time.time()
            s.model.train()
            parts = run.micro_batches()
            batch_tokens = global_sum(acc, float(run.buffer.completion_mask.sum()))
            loss_sum = 0.0
            for i, part in enumerate(parts):
                part = {k: v.to(acc.device) for k, v in part.items()}
                with nullcontext() if i == len(parts) - 1 else acc.no_sync(s.model):
                    logps = token_logps(s.model, part["prompt_ids"], part["prompt_mask"],
                                        part["completion_ids"], part["completion_mask"],
                                        t.temperature, acc.autocast)
                    loss, stats = policy_loss(
                        logps, part.get("old_logps"), part.get("ref_logps"),
                        part["advantages"], part["completion_mask"],
                        loss_type=t.grpo_loss_type, epsilon_low=t.epsilon,
                        epsilon_high=epsilon_high(t), beta=grpo_beta(t),
                        max_completion_len=t.max_completion_len, grad_accum=len(parts),
                        batch_tokens=batch_tokens, processes=world)
                    acc.backward(loss)
                loss_sum += float(loss.detach())
                run.add(stats)
            grad_norm = acc.clip_grad_norm_(s.model.parameters(), t.max_grad_norm or math.inf)
            lr = s.scheduler.get_last_lr()[0]
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            run.buffer.passes_left -= 1
            tokens = int(batch_tokens)
            state.advance(position[0], position[1], len(parts), tokens,
                          tokens + int(global_sum(acc, float(run.buffer.prompt_mask.sum()))))
            s.rng = capture_rng()
            if state.step % t.log_every == 0 or state.step == s.total_steps:
                s.files.metrics({"step": state.step,
                                 "epoch": round(state.step / max(run.steps_per_epoch(), 1), 4),
                                 "loss": global_sum(acc, loss_sum) / world, "lr": lr,
                                 "grad_norm": float(grad_norm), **run.buffer.metrics,
                                 **run.take_metrics(lambda v: global_sum(acc, v)),
                                 "train_seconds": round(time.time() - generated, 3),
                                 "total_steps": s.total_steps})
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


def save_buffer(s, folder: Path) -> None:
    """Keep the unfinished generation batch with a checkpoint (this process's part)."""
    run = s.loss_of
    if isinstance(run, GRPO) and run.buffer is not None and run.buffer.passes_left > 0:
        if s.accelerator.num_processes > 1:
            folder = folder / f"rank-{s.accelerator.process_index}"
            folder.mkdir(parents=True, exist_ok=True)
        run.buffer.save(folder)


def load_buffer_into(run: GRPO, folder: Path, accelerator, say) -> None:
    """The generation batch a checkpoint kept, back into the run (None when it kept none)."""
    if accelerator.num_processes > 1:
        folder = folder / f"rank-{accelerator.process_index}"
    run.buffer = GenBatch.load(Path(folder))
    if run.buffer is not None:
        say(f"grpo: continuing the generation batch kept with {folder.name} "
              f"({run.buffer.passes_left} pass(es) left)")


# --------------------------------------------------------------------------- evaluation


def reward_examples(held_out: list, funcs) -> list:
    """The held-out prompts as engine.evaluation EvalExamples (the reference: the column the
    first reading built-in uses, shown in the table; "" when none)."""
    from engine.evaluation.evaluate import EvalExample
    from engine.training.rewards import needed_columns

    column = next(iter(needed_columns(funcs)), None)
    return [EvalExample(r.where, r.prompt, "" if column is None or r.columns.get(column) is None
                        else str(r.columns.get(column)),
                        "messages" if r.conversational else "completion") for r in held_out]


def make_reward_eval(cfg, data: GrpoData, tokenizer, out: Path, log):
    """The end-of-training (and every-N) evaluation of a GRPO run: held-out prompts answered
    greedily by the base and the tuned model, scored with train.rewards; None when off."""
    from engine.evaluation.evaluate import GenEval
    from engine.training.rewards import resolve

    t = cfg.train
    if t.eval_generate == "off":
        return None
    if not data.held_out:
        log("eval generate: off: no held-out prompts (give data.validation or a "
            "data.val_fraction above 0)")
        return None
    funcs = resolve(t.rewards)
    held = data.held_out[:t.eval_generate_max]
    examples = reward_examples(held, funcs)
    budget = t.eval_generate_max_new_tokens or t.max_completion_len
    log(f"eval generate: {len(examples)} held-out prompts of the {data.source}, greedy, at most "
        f"{budget} new tokens, scored with the reward functions, base vs tuned")

    class RewardEval(GenEval):
        def run(self, model, step: int, **facts: Any) -> dict[str, Any]:
            from engine.evaluation.evaluate import card_line, generate_answers, write_record

            started = time.time()
            tuned = generate_answers(model, self.tokenizer, self.examples,
                                     max_new_tokens=self.max_new_tokens)
            took = round(time.time() - started, 2)
            record = score_rewards(self.examples, held, funcs, self.base, tuned,
                                   tokenizer=self.tokenizer, source=self.source, step=step,
                                   max_new_tokens=self.max_new_tokens, seed=self.seed,
                                   seconds={"base": self.base_seconds, "tuned": took}, **facts)
            write_record(record, self.out / "eval.json")
            self.log(f"eval generate at step {step}: {card_line(record)}; tuned answered in "
                     f"{took:.1f}s")
            return record

    return RewardEval(examples, data.source, tokenizer, out, budget, t.seed, log)


def score_rewards(examples, held: list, funcs, base, tuned, *, tokenizer, source: str,
                  step: int | None, max_new_tokens: int, seed: int = 0, seconds: dict | None = None,
                  **facts: Any) -> dict[str, Any]:
    """The eval record (eval.json's layout) of greedy answers scored with the reward functions:
    metrics "reward" (the weighted total) and "reward_<function>", base vs tuned with paired
    bootstrap intervals (engine.evaluation.metrics.summarize_values)."""
    from engine.evaluation.evaluate import VERSION
    from engine.evaluation.metrics import summarize_values
    from engine.training.rewards import score

    def scored(answers):
        prompts = [r.prompt for r in held]
        shown = [[{"role": "assistant", "content": a.text}] if r.conversational else a.text
                 for r, a in zip(held, answers)]
        columns = {k: [r.columns.get(k) for r in held] for k in held[0].columns}
        ids = [a.ids if a.ids is not None else tokenizer(a.text, add_special_tokens=False)
               ["input_ids"] for a in answers]
        return score(funcs, prompts, shown, columns, completion_ids=ids,
                     wheres=[r.where for r in held])

    tuned_s = scored(tuned)
    base_s = scored(base) if base is not None else None
    names = ["reward"] + [f"reward_{n}" for n in tuned_s.names] if len(funcs) > 1 else ["reward"]

    def column(s, j):
        values = s.total if j < 0 else s.per_func[:, j]
        return [float(v) for v in torch.nan_to_num(values, nan=0.0)]

    metrics = {}
    for j, name in enumerate(names):
        metrics[name] = summarize_values(column(base_s, j - 1) if base_s else None,
                                         column(tuned_s, j - 1), seed=seed)
    rows = []
    for i, e in enumerate(examples):
        def per(s):
            out = {"reward": column(s, -1)[i]}
            out.update({n: column(s, j)[i] for j, n in enumerate(s.names)})
            return out

        row = {"index": i, "where": e.where, "prompt": e.shown_prompt, "reference": e.reference,
               "conversation": e.prompt if e.kind == "messages" else None,
               "tuned": tuned[i].text, "tuned_stopped": tuned[i].stopped,
               "tuned_scores": per(tuned_s)}
        if base is not None:
            row.update(base=base[i].text, base_stopped=base[i].stopped,
                       base_scores=per(base_s))
        b = row.get("base_scores", {}).get("reward")
        row["changed"] = base is not None and base[i].text.strip() != tuned[i].text.strip()
        row["change"] = ("improved" if b is not None and row["tuned_scores"]["reward"] > b else
                         "worse" if b is not None and row["tuned_scores"]["reward"] < b else
                         "same" if not row["changed"] else "changed")
        rows.append(row)
    return {"version": VERSION, "kind_of_scores": "rewards", "step": step, "n": len(examples),
            "source": source, "max_new_tokens": max_new_tokens, "seconds": seconds or {},
            "metrics": metrics, "created_at": time.time(), **facts, "rows": rows}

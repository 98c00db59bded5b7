"""Continue a finished SFT job with preference tuning or RL: the two-stage recipe (supervised
fine-tuning, then DPO, ORPO, SimPO or KTO on preference data, or GRPO with reward functions on
prompts) as one action.

Use from Python:
    from jobs.continuation import continue_with_preference
    job = continue_with_preference(sft_id, "pairs.jsonl", objective="dpo", actor=user)

Run as: ftstudio jobs continue JOB --data pairs.jsonl [--objective dpo] [--set train.beta=0.2]
        ftstudio jobs continue JOB --data prompts.jsonl --objective grpo \
            --set 'train.rewards=[{name: numeric_match, args: {column: answer}}]'

The new job starts from the SFT model with the SFT adapter **merged** into the base (not
stacked): the worker's runner first writes that merged model into the new job's own folder
(jobs.api.START_MODEL, the merged export's files) and then trains a fresh adapter of the same
method on it. So the preference stage's reference (the model with its adapter disabled) is the
SFT model, as DPO expects, and everything downstream (Playground, exports, evaluation) sees a
plain base model plus one adapter. The continued job keeps its start when the SFT job is
deleted; its merged export is the SFT + preference model.
"""

from __future__ import annotations

from typing import Any

from engine.config import (PAIR_OBJECTIVES, VIRTUAL_TOKEN_METHODS, ConfigError, Problem,
                           apply_overrides, from_dict)
from jobs.api import JobError, _check_finished, _yaml_value, get, submit

OBJECTIVES = (*PAIR_OBJECTIVES, "kto", "grpo")
#: preference tuning moves the model less than SFT: its lr is the SFT job's divided by this
#: (TRL's DPO examples with LoRA train at 5e-6 .. 5e-5; the studio's LoRA SFT default is 2e-4)
LR_DIVISOR = 10


def continue_with_preference(job_id: str, data: str, objective: str = "dpo", *,
                             name: str | None = None, actor: dict | None = None,
                             overrides: list[str] | None = None, **changes: Any
                             ) -> dict[str, Any]:
    """Queue a preference-tuning job that continues the finished SFT job `job_id` on `data`
    (preference records; labelled completions for kto). The config is the SFT job's with
    train.objective set, the new data (no validation file: the split comes from `data`), lr
    divided by LR_DIVISOR, then `overrides` ("key=value", as --set) and `changes` (dotted keys).
    Refused up front: a job that is not a finished SFT training job with an adapter, a method
    whose adapter cannot be merged (prompt and prefix tuning), or a config that does not
    validate (ConfigError, every problem)."""
    parent = get(job_id, actor=actor)
    _check_finished(parent, "continue", "it has completed")
    cfg = dict(parent["config"])
    train, method = dict(cfg.get("train") or {}), (cfg.get("method") or {}).get("kind")
    if objective not in OBJECTIVES:
        raise ConfigError([Problem("train.objective", f"{objective!r}: continue with one of "
                                   f"{', '.join(OBJECTIVES)}")])
    if train.get("objective", "sft") != "sft":
        raise JobError(f"job {job_id} is already preference-tuned ({train['objective']}); "
                       "continue from the SFT job it came from, or clone this one")
    if method in VIRTUAL_TOKEN_METHODS:
        raise JobError(f"job {job_id} trained {method}, which learns virtual tokens rather "
                       "than weights, so there is nothing to merge into the base to start "
                       "from; continue a LoRA, DoRA, QLoRA, IA3 or full fine-tuning job")
    if not data:
        raise ConfigError([Problem("data.train", "name the preference data to continue with "
                                   "(records with prompt, chosen and rejected; or prompt, "
                                   "completion and label for kto; prompts for grpo)")])
    lr = train.get("lr")
    train.update(objective=objective, resume_from=None,
                 lr=lr / LR_DIVISOR if isinstance(lr, (int, float)) else lr)
    if objective == "grpo":   # whole groups per generation batch (engine.config._check_grpo)
        group = int(train.get("num_generations") or 4)
        rows = int(train.get("batch_size") or 4) * int(train.get("grad_accum") or 1)
        if rows % group:
            train["batch_size"] = group
    cfg["train"] = train
    cfg["data"] = {**(cfg.get("data") or {}), "train": str(data), "validation": None,
                   "format": "auto"}
    done = apply_overrides(from_dict(cfg), list(overrides or []) + [
        f"{k}={_yaml_value(v)}" for k, v in changes.items()])
    return submit(done, owner=parent["owner"] if actor is None else None,
                  priority=parent["priority"], actor=actor, parent=job_id,
                  name=name or f"{parent['name']}-{objective}")

"""Preference-tuning objectives (DPO, IPO, hinge, SimPO, ORPO, KTO) from per-sequence log-probs.

Use from Python:
    from engine.training.preference import (sequence_logps, answer_tokens, dpo_loss, simpo_loss,
                                   orpo_loss, kto_loss, reward_metrics)
    logps = sequence_logps(logits, labels)                 # [batch]: summed answer-token logps
    losses, chosen_r, rejected_r = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    loss = losses.mean()
    log(reward_metrics(chosen_r, rejected_r))   # rewards/chosen, /rejected, /margins, /accuracies
    # IPO needs each answer's token count:  dpo_loss(..., loss_type="ipo",
    #     chosen_tokens=answer_tokens(chosen_labels),
    #     rejected_tokens=answer_tokens(rejected_labels))
    # SimPO, ORPO: length-normalised logps:  avg = sequence_logps(logits, labels, average=True)
    losses, chosen_r, rejected_r = simpo_loss(avg_c, avg_r, beta=2.0, gamma=0.5)
    or_losses, chosen_r, rejected_r, log_odds = orpo_loss(avg_c, avg_r, beta=0.1)
    loss = nll_chosen + or_losses.mean()                   # ORPO's whole objective
    losses, chosen_r, rejected_r = kto_loss(pol, ref, desirable, kl=(pol_kl - ref_kl).mean())

Inputs are per-sequence log-probabilities over the ANSWER tokens only (labels -100 elsewhere),
summed unless said otherwise. Every loss is per example ([batch], no reduction); rewards are
detached (metrics only). The formulas equal TRL 1.16's trainers (tests/engine/
test_preference_losses.py compares losses and gradients); Δ = (pol_c - ref_c) - (pol_r - ref_r):

  sequence_logps   sum over t with labels[t] != -100 of log_softmax(logits[t-1])[labels[t]]
                   (shifted like the causal-LM loss; only the last labels.shape[1] logits count,
                   as in engine/training/loss.py for prompt tuning). average=True divides by the count.
  dpo sigmoid      -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)     (ε = label_smoothing: cDPO)
  dpo ipo          (Δc/nc - Δr/nr - 1/(2β))²          Δc = pol_c - ref_c, nc = answer tokens
  dpo hinge        relu(1 - βΔ)
  dpo rewards      β·(pol - ref) for chosen and rejected (summed, unnormalised, also for IPO)
  simpo            -(1-ε)·logσ(x) - ε·logσ(-x),  x = β(C - R) - γ,  rewards β·C, β·R
                   (C, R: the chosen and rejected answers' average log-probs)
  orpo             -β·logσ(log_odds),  log_odds = (C - R) - (log(1 - e^C) - log(1 - e^R)),
                   rewards β·C, β·R
  kto desirable    w_d·(1 - σ(β(pol - ref - KL)))
  kto undesirable  w_u·(1 - σ(β(KL - (pol - ref))))
                   KL = max(0, kl) detached, kl = mean over the batch (and over ranks) of
                   pol - ref log-probs of mismatched (prompt, other completion) pairs.

Deliberate differences from TRL 1.16:
  * DPO sigmoid takes label_smoothing (cDPO, the formula of TRL 0.x's DPO sigmoid, which its
    CPOTrainer still uses); TRL 1.16's DPO "sigmoid" ignores label_smoothing (its smoothed
    variants are "robust" and "exo_pair"). ε = 0 is TRL's sigmoid exactly.
  * IPO: TRL divides the log-ratios by each completion's token count inside the trainer; here
    the counts are arguments (chosen_tokens, rejected_tokens), required for ipo.
  * SimPO's gamma is TRL's CPOConfig.simpo_gamma (an absolute margin; TRL subtracts
    simpo_gamma/beta inside the sigmoid's argument before multiplying by beta). The SimPO repo's
    gamma_beta_ratio is gamma / beta. TRL's CPOTrainer adds cpo_alpha·NLL (cpo_alpha defaults
    to 1.0); pure SimPO is cpo_alpha = 0, i.e. this term alone.
  * ORPO: TRL's odds_ratio_loss returns +β·logσ(log_odds) and the trainer SUBTRACTS its mean
    from the NLL; here the term is returned with the loss's sign, to be added. TRL's NLL is the
    mean cross-entropy over prompt AND answer tokens of the chosen sequence; the caller picks
    it. The 4th output is per example (TRL returns batch means of logσ(log_odds), log_odds).
  * KTO returns losses in batch order (TRL concatenates desirable then undesirable; the mean is
    the same) and applies detach + clamp(min=0) to the given kl itself.
  * sequence_logps and orpo_loss compute in at least float32 (half precision is upcast; TRL's
    ORPO casts to float32 even from float64, here float64 stays float64); the other losses
    keep their inputs' dtype, as TRL does. average=True over zero answer tokens gives 0, not
    TRL's NaN.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from engine.data import IGNORE_INDEX

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   average: bool = False) -> torch.Tensor:
    """[batch] summed (average=True: mean) log-probs of the label tokens under the logits of the
    position before them; positions labelled ignore_index excluded."""
    logits = logits[:, -labels.shape[1]:, :][:, :-1]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    logits = _at_least_float32(logits)
    picked = logits.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    per_token = (picked - torch.logsumexp(logits, dim=-1)).masked_fill(~mask, 0.0)
    total = per_token.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def chunked_sequence_logps(hidden: torch.Tensor, labels: torch.Tensor,
                           seq_ids: torch.Tensor | None, head: Callable, chunk_tokens: int,
                           autocast: Callable = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer log-probs, answer tokens) per sequence: per row as sequence_logps gives
    them, or with seq_ids per packed sequence (engine.data.collate_packed_pairs: a position
    whose previous token belongs to another sequence, and padding, count for none). From the
    final hidden states, only the positions that predict an answer token go through `head`
    (the lm_head), chunk_tokens at a time, each chunk beyond one recomputed in backward, so a
    batch's full-vocabulary logits never exist at once (engine/training/loss.py does the same for SFT).
    Given logits and an identity head, it is the full-logits path."""
    from contextlib import nullcontext

    from torch.utils.checkpoint import checkpoint

    autocast = autocast or nullcontext
    hidden = hidden[:, -labels.shape[1]:, :]
    target = labels[:, 1:]
    if seq_ids is None:
        keep = target != IGNORE_INDEX
        index = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(target)
        count = labels.shape[0]
    else:
        seq = seq_ids[:, 1:]
        keep = (target != IGNORE_INDEX) & (seq >= 0) & (seq == seq_ids[:, :-1])
        index, count = seq, int(seq_ids.max()) + 1
    h, y, index = hidden[:, :-1][keep], target[keep], index[keep]

    def piece(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast():
            logits = head(h)
        return -F.cross_entropy(_at_least_float32(logits), y, reduction="none")

    if h.shape[0] <= chunk_tokens:
        per_token = piece(h, y)
    else:
        per_token = torch.cat([
            checkpoint(piece, h[s:s + chunk_tokens], y[s:s + chunk_tokens], use_reentrant=False)
            if torch.is_grad_enabled() else piece(h[s:s + chunk_tokens], y[s:s + chunk_tokens])
            for s in range(0, h.shape[0], chunk_tokens)])
    sums = torch.zeros(count, dtype=per_token.dtype, device=per_token.device)
    tokens = torch.zeros(count, dtype=torch.long, device=index.device)
    return sums.index_add(0, index, per_token), tokens.index_add(0, index, torch.ones_like(index))


def answer_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[batch] the number of tokens sequence_logps counts (labels after the first position)."""
    return (labels[:, 1:] != ignore_index).sum(-1)


def _smoothed_sigmoid(x: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1-ε)·logσ(x) - ε·logσ(-x): the logistic loss with the preference flipped w.p. ε."""
    losses = -F.logsigmoid(x)
    if label_smoothing:
        losses = losses * (1 - label_smoothing) - F.logsigmoid(-x) * label_smoothing
    return losses


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid",
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), each [batch], from summed answer log-probs.
    label_smoothing applies to "sigmoid" only; chosen/rejected_tokens (answer lengths) are
    required for "ipo", which compares per-token log-ratios."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type='ipo' needs chosen_tokens and rejected_tokens "
                             "(answer lengths, e.g. answer_tokens(labels))")
        delta = (chosen_ratio / chosen_tokens.clamp(min=1)
                 - rejected_ratio / rejected_tokens.clamp(min=1))
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: one of {DPO_LOSS_TYPES}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def simpo_loss(policy_chosen_avg: torch.Tensor, policy_rejected_avg: torch.Tensor,
               beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards) of SimPO, from length-normalised log-probs:
    no reference model, a target margin gamma (TRL's simpo_gamma; gamma_beta_ratio = gamma/beta)."""
    logits = beta * (policy_chosen_avg - policy_rejected_avg) - gamma
    return (_smoothed_sigmoid(logits, label_smoothing),
            beta * policy_chosen_avg.detach(), beta * policy_rejected_avg.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_avg: torch.Tensor, policy_rejected_avg: torch.Tensor,
              beta: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards, log_odds), each [batch]: ORPO's odds-ratio
    term -beta·logσ(log odds(chosen) - log odds(rejected)), from length-normalised log-probs.
    ORPO's objective is the chosen answers' NLL + losses.mean()."""
    chosen, rejected = _at_least_float32(policy_chosen_avg), _at_least_float32(policy_rejected_avg)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return (-beta * F.logsigmoid(log_odds), beta * chosen.detach(), beta * rejected.detach(),
            log_odds.detach())


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor,
             labels_desirable: torch.Tensor, kl: torch.Tensor | float, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses [batch, in batch order], chosen_rewards [desirable ones], rejected_rewards
    [undesirable ones]) of KTO. kl: the reference point, the batch mean of policy - reference
    log-probs on mismatched pairs (all-reduced first under DDP); detached and clamped at 0 here."""
    desirable = torch.as_tensor(labels_desirable, dtype=torch.bool, device=policy_logps.device)
    kl = torch.as_tensor(kl, dtype=policy_logps.dtype, device=policy_logps.device)
    kl = kl.detach().clamp(min=0)
    ratio = policy_logps - ref_logps
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    rewards = beta * ratio.detach()
    return losses, rewards[desirable], rewards[~desirable]


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
                   ) -> dict[str, float]:
    """TRL's logged reward metrics (means over the batch). margins = mean(chosen) -
    mean(rejected), which is mean(chosen - rejected) for pairs; accuracies (share of pairs with
    chosen > rejected) only when paired (same shape; KTO's are not). Empty sides are left out."""
    chosen = _at_least_float32(chosen_rewards.detach())
    rejected = _at_least_float32(rejected_rewards.detach())
    out: dict[str, float] = {}
    if chosen.numel():
        out["rewards/chosen"] = chosen.mean().item()
    if rejected.numel():
        out["rewards/rejected"] = rejected.mean().item()
    if chosen.numel() and rejected.numel():
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        if chosen.shape == rejected.shape:
            out["rewards/margins"] = (chosen - rejected).mean().item()
            out["rewards/accuracies"] = (chosen > rejected).float().mean().item()
    return out


# --------------------------------------------------------------------------- in the train loop


class PreferenceLoss:
    """train.objective's loss of one batch, for engine.training.loop (the SFT one is engine.training.loss's
    TokenLoss): summed over the batch's pairs (dpo, orpo, simpo: rows 0..B-1 the chosen
    answers, B..2B-1 the rejected ones of the same prompts) or labelled answers (kto:
    batch["desirable"]), so the loop divides by `units` summed over processes.

    The reference (dpo, kto) is the same model with its adapter disabled (PEFT methods: no
    second copy in memory) or `reference`, a frozen copy taken before the first step (full
    fine-tuning). ORPO's loss adds the chosen answers' mean token NLL to the odds-ratio term.
    KTO's reference point KL is the mean policy - reference log-ratio over mismatched rows (each
    prompt followed by the previous record's answer, as TRL pairs them: engine.data
    .kto_mismatched), without gradient.
    """

    def __init__(self, model, t, *, autocast=None, reference=None, log=print, pad_id: int = 0):
        from contextlib import nullcontext

        self.model, self.t, self.objective = model, t, t.objective
        self.autocast = autocast or nullcontext
        self.reference, self.pad_id = reference, pad_id
        self.beta = t.beta if t.beta is not None else {"dpo": 0.1, "orpo": 0.1, "kto": 0.1,
                                                        "simpo": 2.0}[t.objective]
        self.sums: dict[str, float] = {}
        self.count = 0
        self.log, self._chunkers = log, {}
        ref = ("none" if self.objective in ("orpo", "simpo") else "log-probs computed once "
               "before training (train.precompute_reference)" if getattr(
                   t, "precompute_reference", False) else "a frozen copy of the starting "
               "model" if reference is not None else "the model with its adapter disabled")
        log(f"loss: {self.objective} (beta {self.beta:g}"
            f"{', ' + t.dpo_loss_type if self.objective == 'dpo' else ''}); reference: {ref}")

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        if "seq_ids" in batch:                    # packed pairs (collate_packed_pairs)
            return (int(batch["seq_ids"].max()) + 1) // 2
        rows = int(batch["input_ids"].shape[0])
        return rows if self.objective == "kto" else rows // 2

    def _chunker(self, model):
        """engine.training.loss's TokenLoss of `model` (the policy, or the frozen reference copy): its
        lm_head, chunk size and probe, for chunked_sequence_logps."""
        from engine.training.loss import TokenLoss

        source = self.reference if model is self.reference else self.model
        if id(source) not in self._chunkers:
            self._chunkers[id(source)] = TokenLoss(
                source, autocast=self.autocast,
                log=self.log if not self._chunkers else (lambda line: None))
        return self._chunkers[id(source)]

    def _logps(self, model, batch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "desirable",
                                                               "ref_logps", "seq_ids")}
        labels, seq_ids = batch["labels"], batch.get("seq_ids")
        chunker = self._chunker(model)
        if chunker.unchecked:
            chunker.probe(batch)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if chunker.chunked:
                with chunker.hidden_states(), self.autocast():
                    hidden = model(**inputs).logits
                return chunked_sequence_logps(hidden, labels, seq_ids, chunker.head_forward,
                                              chunker.chunk_tokens, self.autocast)
            with self.autocast():
                logits = model(**inputs).logits
            return chunked_sequence_logps(logits, labels, seq_ids, lambda x: x,
                                          max(1, labels.numel()))

    @torch.no_grad()
    def _reference(self, batch) -> torch.Tensor:
        if "ref_logps" in batch:                  # precomputed (engine.training.reference)
            return batch["ref_logps"]
        if self.reference is not None:
            return self._logps(self.reference, batch, grad=False)[0]
        with self.model.disable_adapter():
            return self._logps(self.model, batch, grad=False)[0]

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses, metrics = self.losses(model, batch)
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += self.units(batch)
        return losses.sum()

    def losses(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(per-unit losses, metric SUMS over the units) of one batch."""
        t, obj, beta = self.t, self.objective, self.beta
        logps, tokens = self._logps(model, batch, grad=True)
        if obj == "kto":
            ref = self._reference(batch)
            from engine.data import kto_mismatched

            desirable = batch["desirable"].bool()
            other = {k: v.to(logps.device) for k, v in kto_mismatched(
                {k: batch[k] for k in ("input_ids", "labels", "attention_mask")},
                self.pad_id).items()}
            with torch.no_grad():
                kl = (self._logps(model, other, grad=False)[0] - self._reference(other)).mean()
            losses, good, bad = kto_loss(logps, ref, desirable, kl, beta,
                                         t.kto_desirable_weight, t.kto_undesirable_weight)
            return losses, {"reward_chosen": float(good.sum()), "reward_rejected":
                            float(bad.sum()), "kl": float(kl.clamp(min=0)) * len(losses)}
        b = logps.shape[0] // 2
        avg = logps / tokens.clamp(min=1)
        if obj == "dpo":
            ref = self._reference(batch)
            losses, good, bad = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta,
                                         t.label_smoothing, t.dpo_loss_type,
                                         chosen_tokens=tokens[:b], rejected_tokens=tokens[b:])
        elif obj == "simpo":
            losses, good, bad = simpo_loss(avg[:b], avg[b:], beta, t.simpo_gamma,
                                           t.label_smoothing)
        else:  # orpo: the chosen answers' NLL plus the odds-ratio term
            odds, good, bad, _ = orpo_loss(avg[:b], avg[b:], beta)
            losses = -avg[:b] + odds
        margin = good - bad
        return losses, {"reward_chosen": float(good.sum()), "reward_rejected": float(bad.sum()),
                        "reward_margin": float(margin.sum()),
                        "reward_accuracy": float((margin > 0).float().sum()),
                        "logps_chosen": float(logps[:b].detach().sum()),
                        "logps_rejected": float(logps[b:].detach().sum())}

    def take_metrics(self, total: Callable[[float], float]) -> dict[str, float]:
        """The means since the last call (total: the sum over processes), and start over."""
        count = total(float(self.count))
        out = {k: total(v) / max(count, 1) for k, v in sorted(self.sums.items())}
        self.sums, self.count = {}, 0
        return out

    @torch.no_grad()
    def evaluate(self, model, batch) -> tuple[torch.Tensor, ...]:
        """(summed loss, pairs the chosen answer won, units, summed margin) as float64."""
        losses, m = self.losses(model, batch)
        device = losses.device
        return tuple(torch.tensor(float(x), dtype=torch.float64, device=device) for x in (
            losses.sum(), m.get("reward_accuracy", 0.0), self.units(batch),
            m.get("reward_margin", m["reward_chosen"] - m["reward_rejected"])))

    def eval_metrics(self, totals: list[float]) -> dict[str, float]:
        loss, won, units, margin = totals
        out = {"eval_loss": loss / max(units, 1), "eval_reward_margin": margin / max(units, 1)}
        if self.objective != "kto":
            out["eval_reward_accuracy"] = won / max(units, 1)
        return out

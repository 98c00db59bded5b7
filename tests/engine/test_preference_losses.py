"""Preference losses (engine/training/preference.py) against TRL's own implementations: the per-example
losses, the gradients w.r.t. the policy log-probs (or the logits), the rewards and TRL's logged
reward metrics, for DPO (sigmoid, label-smoothed sigmoid, IPO, hinge), SimPO, ORPO and KTO; and
one tiny case per loss against its formula written out by hand.

TRL (a dev-only dependency; engine/ never imports it) is called without building a trainer:
its loss methods run unbound with a SimpleNamespace `self` carrying the config they read, and
DPOTrainer/KTOTrainer._compute_loss get a stand-in model whose "fused LM head" output is a leaf
tensor of per-token log-probs, so TRL sums it into the sequence log-probs itself."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from engine.training.preference import (IGNORE_INDEX, answer_tokens, dpo_loss, kto_loss, orpo_loss,
                               reward_metrics, sequence_logps, simpo_loss)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental
pytest.importorskip("trl")
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CPU = torch.device("cpu")
ACCELERATOR = SimpleNamespace(device=CPU, gather=lambda x: x, gather_for_metrics=lambda x: x)


def close(actual, expected, dtype=torch.float32):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64),
                               rtol=TOL[dtype], atol=TOL[dtype])


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def grad_of(loss, *xs):
    return torch.autograd.grad(loss, xs)


# ------------------------------------------------------------------ TRL stand-ins

class FusedHead:
    """Stands in for a model patched with TRL's add_fused_lm_head: returns the given per-token
    log-probs (a leaf, so gradients can be read), keyed by which input_ids it is called with."""

    def __init__(self, by_input: dict[int, torch.Tensor]):
        self.by_input = by_input

    def __call__(self, input_ids, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head
        per_token = self.by_input[input_ids.data_ptr()]
        zeros = torch.zeros_like(per_token.detach())
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())


def trainer_self(**config):
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=ACCELERATOR,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False,
                           args=SimpleNamespace(gradient_checkpointing_kwargs=None), **config)


def completion_mask(rows: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """Prompt of 1..3 tokens, then 1.. answer tokens, then padding."""
    mask = torch.zeros(rows, width, dtype=torch.long)
    for i in range(rows):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, width + 1, (1,), generator=gen))
        mask[i, start:end] = 1
    return mask


def trl_dpo(per_token, ref_chosen, ref_rejected, mask, loss_type, beta, label_smoothing=0.0):
    """TRL's DPO loss (batch mean), its gradient w.r.t. the per-token policy log-probs, and its
    logged metrics. per_token: [2B, T-1], chosen rows first (TRL's batch layout)."""
    per_token = leaf(per_token)
    input_ids = torch.zeros(mask.shape, dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(mask),
              "completion_mask": mask, "ref_chosen_logps": ref_chosen,
              "ref_rejected_logps": ref_rejected}
    me = trainer_self(loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                      label_smoothing=label_smoothing, ld_alpha=None, precompute_ref_logps=True,
                      f_divergence_type="reverse_kl", use_weighting=False)
    loss = DPOTrainer._compute_loss(me, FusedHead({input_ids.data_ptr(): per_token}), inputs,
                                    return_outputs=False)
    (grad,) = grad_of(loss, per_token)
    return loss, grad, {k: v[-1] for k, v in me._metrics["train"].items()}


def trl_cpo(chosen, rejected, loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    me = SimpleNamespace(alpha=0.0, accelerator=ACCELERATOR, loss_type=loss_type, beta=beta,
                         label_smoothing=label_smoothing, simpo_gamma=simpo_gamma)
    return CPOTrainer.cpo_loss(me, chosen, rejected)


def trl_kto(per_token, ref_logps, kl_per_token, ref_kl_logps, desirable, beta, dw, uw):
    per_token = leaf(per_token)
    rows, width = per_token.shape
    inputs = {"input_ids": torch.zeros(rows, width + 1, dtype=torch.long),
              "attention_mask": torch.ones(rows, width + 1, dtype=torch.long),
              "completion_mask": torch.ones(rows, width + 1, dtype=torch.long),
              "KL_input_ids": torch.ones(rows, width + 1, dtype=torch.long),
              "KL_attention_mask": torch.ones(rows, width + 1, dtype=torch.long),
              "KL_completion_mask": torch.ones(rows, width + 1, dtype=torch.long),
              "label": desirable, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    model = FusedHead({inputs["input_ids"].data_ptr(): per_token,
                       inputs["KL_input_ids"].data_ptr(): kl_per_token})
    me = trainer_self(calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=beta,
                      desirable_weight=dw, undesirable_weight=uw)
    me._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(me, m, batch)
    loss = KTOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    (grad,) = grad_of(loss, per_token)
    return loss, grad, {k: v[-1] for k, v in me._metrics["train"].items()}


def random_batch(dtype, pairs=6, width=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = completion_mask(2 * pairs, width, gen)
    per_token = (-torch.rand(2 * pairs, width - 1, generator=gen, dtype=dtype) * 3
                 * mask[:, 1:].to(dtype))
    ref = per_token.sum(1) + torch.randn(2 * pairs, generator=gen, dtype=dtype) * 2
    return per_token, ref[:pairs], ref[pairs:], mask


# ------------------------------------------------------------------ sequence log-probs

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equal_trl_get_batch_logps(dtype, average):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, 11, generator=gen, dtype=dtype) * 3
    labels = torch.randint(0, 11, (5, 7), generator=gen)
    labels[:, :2] = IGNORE_INDEX                   # prompts
    labels[1, 4:] = IGNORE_INDEX                   # padding
    labels[3, 2:6] = IGNORE_INDEX                  # a hole
    ours_in, trl_in = leaf(logits), leaf(logits)
    for method in (ORPOTrainer.get_batch_logps, CPOTrainer.get_batch_logps):
        ours = sequence_logps(ours_in, labels, average=average)
        theirs = method(trl_in, labels, average_log_prob=average)
        close(ours, theirs, dtype)
        weights = torch.randn(5, generator=gen, dtype=dtype)
        close(grad_of((ours * weights).sum(), ours_in)[0],
              grad_of((theirs * weights).sum(), trl_in)[0], dtype)
    assert ours.dtype == dtype


def test_sequence_logps_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 0]])  # token 2 after position 0, token 0 after 1
    expected = (2 - math.log(1 + math.e + math.e ** 2)) + (1 - math.log(math.e + 2))
    close(sequence_logps(logits, labels), [expected])
    close(sequence_logps(logits, labels, average=True), [expected / 2])
    assert answer_tokens(labels).tolist() == [2]
    # prompt tuning: virtual-token logits in front are skipped, as in engine/training/loss.py
    with_virtual = torch.cat([torch.randn(1, 4, 3), logits], dim=1)
    close(sequence_logps(with_virtual, labels), [expected])
    # no answer tokens: 0, not NaN
    assert sequence_logps(logits, torch.full((1, 3), IGNORE_INDEX), average=True).item() == 0


def test_ignore_index_matches_the_data_pipeline():
    from engine.data import IGNORE_INDEX as DATA_IGNORE_INDEX
    assert IGNORE_INDEX == DATA_IGNORE_INDEX


# ------------------------------------------------------------------ DPO

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_equals_trl(dtype, loss_type):
    per_token, ref_c, ref_r, mask = random_batch(dtype)
    pairs = ref_c.shape[0]
    beta = 0.5 if loss_type == "hinge" else 0.1   # hinge: both sides of the kink
    loss, grad, metrics = trl_dpo(per_token, ref_c, ref_r, mask, loss_type, beta)

    policy = leaf(per_token.sum(1))
    tokens = answer_tokens(mask.masked_fill(mask == 0, IGNORE_INDEX))
    assert torch.equal(tokens, mask.sum(1))         # TRL counts the unshifted completion mask
    losses, chosen_r, rejected_r = dpo_loss(policy[:pairs], policy[pairs:], ref_c, ref_r, beta,
                                            loss_type=loss_type, chosen_tokens=tokens[:pairs],
                                            rejected_tokens=tokens[pairs:])
    close(losses.mean(), loss, dtype)
    (ours_grad,) = grad_of(losses.mean(), policy)
    close(ours_grad, grad[:, 0], dtype)             # d loss / d sum = d loss / d each token
    close(grad, grad[:, :1].expand_as(grad), dtype)
    if loss_type == "hinge":
        assert (losses == 0).any() and (losses > 0).any()
    for key, value in reward_metrics(chosen_r, rejected_r).items():
        close(value, metrics[key], dtype)
    # each example's loss: TRL on batches of one pair
    for i in range(pairs):
        rows = [i, pairs + i]
        one, _, _ = trl_dpo(per_token[rows], ref_c[i:i + 1], ref_r[i:i + 1], mask[rows],
                            loss_type, beta)
        close(losses[i], one, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_dpo_sigmoid_label_smoothing_equals_trl_cdpo(dtype, label_smoothing):
    """TRL 1.16's DPO "sigmoid" ignores label_smoothing; the cDPO formula it used to have lives
    on in CPOTrainer's sigmoid loss, which on log-RATIOS (policy - reference) is DPO's."""
    per_token, ref_c, ref_r, mask = random_batch(dtype, seed=3)
    pairs = ref_c.shape[0]
    ours_in, trl_in = leaf(per_token.sum(1)), leaf(per_token.sum(1))
    losses, _, _ = dpo_loss(ours_in[:pairs], ours_in[pairs:], ref_c, ref_r, 0.1, label_smoothing)
    theirs, _, _ = trl_cpo(trl_in[:pairs] - ref_c, trl_in[pairs:] - ref_r, "sigmoid", 0.1,
                           label_smoothing)
    close(losses, theirs, dtype)
    close(grad_of(losses.sum(), ours_in)[0], grad_of(theirs.sum(), trl_in)[0], dtype)
    if label_smoothing == 0.0:                      # and TRL's own DPO trainer
        loss, grad, _ = trl_dpo(per_token, ref_c, ref_r, mask, "sigmoid", 0.1)
        close(losses.mean(), loss, dtype)


def test_dpo_by_hand():
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-3.0, -5.0, -4.0, -4.5))
    beta, eps = 0.2, 0.1
    delta = (-3.0 + 4.0) - (-5.0 + 4.5)             # 1.5
    sig = lambda x: 1 / (1 + math.exp(-x))          # noqa: E731
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    close(losses, [-math.log(sig(beta * delta))], torch.float64)
    close(chosen_r, [beta * 1.0], torch.float64)
    close(rejected_r, [beta * -0.5], torch.float64)
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    close(smoothed, [-(1 - eps) * math.log(sig(beta * delta)) - eps * math.log(sig(-beta * delta))],
          torch.float64)
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="hinge")
    close(hinge, [1 - beta * delta], torch.float64)
    n_c, n_r = torch.tensor([4]), torch.tensor([2])
    ipo, chosen_r, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="ipo", chosen_tokens=n_c,
                                rejected_tokens=n_r)
    close(ipo, [(1.0 / 4 - (-0.5) / 2 - 1 / (2 * beta)) ** 2], torch.float64)
    close(chosen_r, [beta * 1.0], torch.float64)    # rewards stay unnormalised, as in TRL
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo")
    with pytest.raises(ValueError, match="unknown"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


# ------------------------------------------------------------------ SimPO

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_equals_trl_cpo_simpo(dtype, label_smoothing):
    gen = torch.Generator().manual_seed(4)
    chosen = -torch.rand(8, generator=gen, dtype=dtype) * 2
    rejected = -torch.rand(8, generator=gen, dtype=dtype) * 2
    beta, gamma = 2.0, 0.7
    ours_c, ours_r, trl_c, trl_r = (leaf(x) for x in (chosen, rejected, chosen, rejected))
    losses, chosen_r, rejected_r = simpo_loss(ours_c, ours_r, beta, gamma, label_smoothing)
    theirs, trl_chosen_r, trl_rejected_r = trl_cpo(trl_c, trl_r, "simpo", beta, label_smoothing,
                                                   simpo_gamma=gamma)
    close(losses, theirs, dtype)
    for ours_g, trl_g in zip(grad_of(losses.sum(), ours_c, ours_r),
                             grad_of(theirs.sum(), trl_c, trl_r)):
        close(ours_g, trl_g, dtype)
    close(chosen_r, trl_chosen_r, dtype)
    close(rejected_r, trl_rejected_r, dtype)


def test_simpo_by_hand():
    losses, chosen_r, rejected_r = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.25]),
                                              beta=2.0, gamma=0.5)
    x = 2.0 * (-0.5 + 1.25) - 0.5                   # 1.0
    close(losses, [math.log(1 + math.exp(-x))])
    close(chosen_r, [-1.0])
    close(rejected_r, [-2.5])


# ------------------------------------------------------------------ ORPO

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_equals_trl_odds_ratio_loss(dtype):
    gen = torch.Generator().manual_seed(5)
    # average log-probs on both sides of -log 2, where log1mexp switches formula
    chosen = -torch.rand(10, generator=gen, dtype=dtype) * 2 - 1e-3
    rejected = -torch.rand(10, generator=gen, dtype=dtype) * 2 - 1e-3
    beta = 0.1
    ours_c, ours_r, trl_c, trl_r = (leaf(x) for x in (chosen, rejected, chosen, rejected))
    losses, chosen_r, rejected_r, log_odds = orpo_loss(ours_c, ours_r, beta)
    me = SimpleNamespace(beta=beta, accelerator=ACCELERATOR)
    theirs, trl_chosen_r, trl_rejected_r, mean_ratio, mean_log_odds = (
        ORPOTrainer.odds_ratio_loss(me, trl_c, trl_r))
    tol = torch.float32                             # TRL computes in float32 even from float64
    close(losses, -theirs, tol)                     # TRL's term is subtracted, ours added
    for ours_g, trl_g in zip(grad_of(losses.sum(), ours_c, ours_r),
                             grad_of(-theirs.sum(), trl_c, trl_r)):
        close(ours_g, trl_g, tol)
    close(chosen_r, trl_chosen_r, tol)
    close(rejected_r, trl_rejected_r, tol)
    close(log_odds.mean(), mean_log_odds, tol)
    close(-losses.mean() / beta, mean_ratio, tol)
    assert losses.dtype == dtype
    # ORPO's objective: TRL's "nll - losses.mean()" is ours "nll + losses.mean()"
    nll = torch.tensor(1.7, dtype=dtype)
    close(nll + losses.mean(), nll - theirs.mean(), tol)


def test_orpo_by_hand():
    c, r = math.log(0.5), math.log(0.2)             # odds 1 and 0.25
    losses, chosen_r, _, log_odds = orpo_loss(torch.tensor([c], dtype=torch.float64),
                                              torch.tensor([r], dtype=torch.float64), beta=0.1)
    close(log_odds, [math.log(1.0 / 0.25)], torch.float64)
    close(losses, [-0.1 * math.log(1 / (1 + 0.25))], torch.float64)   # σ(log 4) = 4/5
    close(chosen_r, [0.1 * c], torch.float64)
    half, _, _, _ = orpo_loss(torch.tensor([-0.5], dtype=torch.bfloat16),
                              torch.tensor([-1.0], dtype=torch.bfloat16))
    assert half.dtype == torch.float32              # half precision is upcast


# ------------------------------------------------------------------ KTO

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kl_shift", [-2.0, 4.0])   # 4.0: mean KL negative, clamped to 0
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.3, 0.7)])
def test_kto_equals_trl(dtype, kl_shift, weights):
    gen = torch.Generator().manual_seed(6)
    rows, width, beta = 9, 6, 0.1
    per_token = -torch.rand(rows, width, generator=gen, dtype=dtype) * 2
    ref = per_token.sum(1) + torch.randn(rows, generator=gen, dtype=dtype) * 3
    kl_per_token = -torch.rand(rows, width, generator=gen, dtype=dtype) * 2
    ref_kl = kl_per_token.sum(1) + torch.randn(rows, generator=gen, dtype=dtype) + kl_shift
    desirable = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    loss, grad, metrics = trl_kto(per_token, ref, kl_per_token, ref_kl, desirable, beta, *weights)

    policy = leaf(per_token.sum(1))
    kl = kl_per_token.sum(1) - ref_kl
    assert (kl.mean() < 0) == (kl_shift > 0)     # both sides of the clamp are covered
    losses, chosen_r, rejected_r = kto_loss(policy, ref, desirable, kl.mean(), beta, *weights)
    close(losses.mean(), loss, dtype)
    close(grad_of(losses.mean(), policy)[0], grad[:, 0], dtype)
    close(metrics["kl"], kl.mean().clamp(min=0), dtype)
    ours_metrics = reward_metrics(chosen_r, rejected_r)
    assert "rewards/accuracies" not in ours_metrics and "rewards/accuracies" not in metrics
    for key, value in ours_metrics.items():
        close(value, metrics[key], dtype)
    # each example's loss, in batch order: TRL on one example, with the whole batch's KL pairs
    for i in range(rows):
        one, _, _ = trl_kto(per_token[i:i + 1], ref[i:i + 1], kl_per_token, ref_kl,
                            desirable[i:i + 1], beta, *weights)
        close(losses[i], one, dtype)


def test_kto_per_example_equals_trl_batches_of_one():
    gen = torch.Generator().manual_seed(7)
    beta = 0.3
    for i, is_desirable in enumerate([True, False, True, False]):
        per_token = -torch.rand(1, 5, generator=gen) * 2
        ref = per_token.sum(1) + torch.randn(1, generator=gen) * 2
        kl_per_token = -torch.rand(1, 5, generator=gen) * 2
        ref_kl = kl_per_token.sum(1) - 0.5 + i      # positive, then clamped
        desirable = torch.tensor([is_desirable])
        loss, grad, _ = trl_kto(per_token, ref, kl_per_token, ref_kl, desirable, beta, 1.2, 0.8)
        policy = leaf(per_token.sum(1))
        losses, _, _ = kto_loss(policy, ref, desirable, kl_per_token.sum(1) - ref_kl, beta,
                                1.2, 0.8)
        close(losses[0], loss)
        close(grad_of(losses[0], policy)[0], grad[:, 0])


def test_kto_by_hand():
    sig = lambda x: 1 / (1 + math.exp(-x))          # noqa: E731
    policy = torch.tensor([-2.0, -6.0], dtype=torch.float64)
    ref = torch.tensor([-3.0, -5.0], dtype=torch.float64)
    desirable = torch.tensor([True, False])
    losses, chosen_r, rejected_r = kto_loss(policy, ref, desirable, kl=0.4, beta=0.5,
                                            desirable_weight=2.0, undesirable_weight=0.5)
    close(losses, [2.0 * (1 - sig(0.5 * (1.0 - 0.4))), 0.5 * (1 - sig(0.5 * (0.4 + 1.0)))],
          torch.float64)
    close(chosen_r, [0.5], torch.float64)
    close(rejected_r, [-0.5], torch.float64)
    clamped, _, _ = kto_loss(policy, ref, desirable, kl=torch.tensor(-1.0), beta=0.5)
    zero, _, _ = kto_loss(policy, ref, desirable, kl=0.0, beta=0.5)
    close(clamped, zero, torch.float64)


# ------------------------------------------------------------------ metrics

def test_reward_metrics():
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0, -1.0]), torch.tensor([0.5, 1.0, 2.0, -2.0])
    metrics = reward_metrics(chosen, rejected)
    assert metrics == pytest.approx({"rewards/chosen": 0.75, "rewards/rejected": 0.375,
                                     "rewards/margins": 0.375, "rewards/accuracies": 0.75})
    unpaired = reward_metrics(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))
    assert unpaired == pytest.approx({"rewards/chosen": 1.5, "rewards/rejected": 0.0,
                                      "rewards/margins": 1.5})
    assert reward_metrics(torch.tensor([1.0]), torch.tensor([])) == {"rewards/chosen": 1.0}


def test_engine_does_not_import_trl():
    import ast
    import pathlib

    import engine.training.preference
    tree = ast.parse(pathlib.Path(engine.training.preference.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "trl" not in imported and imported <= {"__future__", "torch", "typing", "contextlib",
                                                  "engine"}

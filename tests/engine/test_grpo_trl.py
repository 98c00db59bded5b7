"""GRPO (engine/training/grpo.py) against TRL 1.16's GRPOTrainer on the same prompts, completions
and rewards: the group advantages (scale_rewards group / batch / none, rewards some functions
left None), and for each loss type (grpo, dr_grpo, dapo, bnpo) the loss and its gradient
w.r.t. the per-token log-probs, with and without the KL term, on the first pass (old =
current) and on a later one (old log-probs given, so the clip bites), within 1e-5; plus the
logged clip ratios and KL.

TRL (a dev-only dependency) runs without building a trainer: GRPOTrainer's own methods are
called unbound on a SimpleNamespace `self` that carries the settings they read.
_generate_and_score_completions gets a `_generate` returning our prompt and completion ids and
texts, and reward functions that return fixed values, so its advantages come from TRL's code;
_compute_loss gets a `_get_per_token_logps_and_entropies` returning a leaf tensor of per-token
log-probs, so the gradient w.r.t. those can be read."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from engine.training.grpo import group_advantages, policy_loss, token_logps

pytest.importorskip("trl")
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

TOL = 1e-5
CPU = torch.device("cpu")


class Accel(SimpleNamespace):
    device = CPU
    num_processes = 1
    process_index = 0
    is_main_process = True
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def gather_for_metrics(self, x):
        return x

    @contextmanager
    def autocast(self):
        yield


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), rtol=TOL, atol=TOL)


def trainer_self(**kw):
    me = SimpleNamespace(
        accelerator=Accel(), model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, current_gradient_accumulation_steps=1,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1,
                             gradient_checkpointing_kwargs=None, gradient_accumulation_steps=1),
        beta=0.0, epsilon_low=0.2, epsilon_high=0.2, max_completion_length=16, loss_type="dapo")
    for k, v in kw.items():
        if k in ("steps_per_generation", "gradient_accumulation_steps"):
            setattr(me.args, k, v)
        else:
            setattr(me, k, v)
    return me


# ------------------------------------------------------------------ advantages


def trl_advantages(rewards_per_func: list[list[float | None]], weights: list[float],
                   num_generations: int, scale_rewards: str):
    """TRL's advantages from its own _generate_and_score_completions: each reward function
    returns its column of rewards_per_func."""
    n = len(rewards_per_func)
    funcs = []
    for j in range(len(weights)):
        def f(prompts, completions, _j=j, **kw):
            return [row[_j] for row in rewards_per_func]
        f.__name__ = f"f{j}"
        funcs.append(f)
    prompt_ids = [[1, 2, 3]] * n
    completion_ids = [[4, 5, 6, 7][: 1 + i % 4] for i in range(n)]
    me = trainer_self(
        environment_factories=None, environments=None, tools=None, _tokenizer=SimpleNamespace(
            pad_token_id=0), processing_class=None, pad_to_multiple_of=None,
        mask_truncated_completions=False, reward_funcs=funcs, reward_processing_classes=[None] *
        len(funcs), reward_func_names=[f.__name__ for f in funcs],
        state=SimpleNamespace(global_step=0),
        _log_completion_extra=None, _log_metric=None, num_generations=num_generations,
        multi_objective_aggregation="sum_then_normalize", scale_rewards=scale_rewards,
        reward_weights=torch.tensor(weights),
        _logs={"prompt": [], "completion": [], "advantages": [], "images": [],
               "rewards": defaultdict(list), "extra": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False, num_iterations=1,
        args=SimpleNamespace(steps_per_generation=1, gradient_accumulation_steps=1,
                             per_device_train_batch_size=n, gradient_checkpointing_kwargs=None,
                             report_to=[]),
        ref_model=None, beta=0.0)
    from accelerate import PartialState

    PartialState(cpu=True)       # TRL's logger and gather need accelerate's state
    me._generate = lambda prompts: (prompt_ids, completion_ids, None, ["x"] * n, None, {}, None,
                                    None)
    me._calculate_rewards = lambda *a: GRPOTrainer._calculate_rewards(me, *a)
    inputs = [{"prompt": f"p{i // num_generations}"} for i in range(n)]
    out = GRPOTrainer._generate_and_score_completions(me, inputs)
    return out["advantages"], out, me


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_equal_trls(scale_rewards):
    gen = torch.Generator().manual_seed(0)
    g, groups = 4, 3
    per_func = torch.rand(g * groups, 2, generator=gen).tolist()
    per_func[1][0] = None                       # one function says "not applicable"
    per_func[5] = [None, None]                  # no function applies: advantage 0
    per_func[8:12] = [[0.5, 0.5]] * 4           # a group with no spread
    weights = [1.0, 0.5]
    expected, _, _ = trl_advantages(per_func, weights, g, scale_rewards)

    values = torch.tensor([[float("nan") if v is None else v for v in row] for row in per_func])
    total = (values * torch.tensor(weights)).nansum(1)
    total[torch.isnan(values).all(1)] = float("nan")
    ours, _ = group_advantages(total, g, scale_rewards)
    close(ours, expected)
    assert ours[5] == 0


def test_advantages_through_our_reward_scoring_equal_trls():
    """rewards.score (weights, None -> NaN) then group_advantages, against TRL end to end."""
    from engine.training.rewards import RewardFunc, score

    rows = [[1.0, None], [0.0, 2.0], [1.0, 1.0], [None, None], [0.5, 0.0], [0.0, 0.0]]
    funcs = [RewardFunc(f"f{j}", (lambda _j: lambda prompts, completions, **kw:
                                  [r[_j] for r in rows])(j), w) for j, w in enumerate([2.0, 0.3])]
    s = score(funcs, ["p"] * 6, ["c"] * 6, {})
    ours, _ = group_advantages(s.total, 3, "group")
    expected, out, me = trl_advantages(rows, [2.0, 0.3], 3, "group")
    close(ours, expected)
    # TRL's logged reward mean/std and per-function means are ours too
    close(float(torch.nanmean(s.total)), me._metrics["train"]["reward"][-1])


# ------------------------------------------------------------------ the loss


def random_case(seed=0, rows=8, width=7, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logps = -torch.rand(rows, width, generator=gen, dtype=dtype) * 3
    old = logps + (torch.rand(rows, width, generator=gen, dtype=dtype) - 0.5) * 0.8
    ref = logps + (torch.rand(rows, width, generator=gen, dtype=dtype) - 0.5) * 0.5
    adv = torch.randn(rows, generator=gen, dtype=dtype)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for i in range(rows):
        mask[i, : 1 + int(torch.randint(0, width, (1,), generator=gen))] = 1
    return logps, old, ref, adv, mask


def trl_loss(logps, old, ref, adv, mask, *, loss_type, beta, eps_low, eps_high, max_len,
             grad_accum, batch_tokens):
    leaf = logps.detach().clone().requires_grad_(True)
    me = trainer_self(loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
                      max_completion_length=max_len, current_gradient_accumulation_steps=grad_accum,
                      steps_per_generation=grad_accum)
    me._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros_like(leaf), None)
    rows, width = logps.shape
    inputs = {"prompt_ids": torch.ones(rows, 2, dtype=torch.long),
              "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
              "completion_ids": torch.ones(rows, width, dtype=torch.long),
              "completion_mask": mask, "advantages": adv,
              "num_items_in_batch": torch.tensor(float(batch_tokens), dtype=logps.dtype)}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    loss = GRPOTrainer._compute_loss(me, None, inputs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss, grad, {k: v[-1] for k, v in me._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("first_pass", [True, False])
def test_loss_and_gradient_equal_trls(loss_type, beta, first_pass):
    logps, old, ref, adv, mask = random_case(seed=hash((loss_type, beta, first_pass)) % 1000)
    old = None if first_pass else old
    settings = dict(loss_type=loss_type, beta=beta, eps_low=0.2, eps_high=0.28, max_len=12,
                    grad_accum=2, batch_tokens=int(mask.sum()) * 2)
    expected, expected_grad, logged = trl_loss(logps, old, ref, adv, mask, **settings)

    leaf = logps.detach().clone().requires_grad_(True)
    ours, stats = policy_loss(leaf, old, ref if beta else None, adv, mask, loss_type=loss_type,
                              epsilon_low=0.2, epsilon_high=0.28, beta=beta,
                              max_completion_len=12, grad_accum=2,
                              batch_tokens=settings["batch_tokens"])
    (grad,) = torch.autograd.grad(ours, leaf)
    close(ours, expected)
    close(grad, expected_grad)
    close(stats["clip"] / stats["tokens"], logged["clip_ratio/region_mean"])
    close(stats["clip_low"] / stats["tokens"], logged["clip_ratio/low_mean"])
    close(stats["clip_high"] / stats["tokens"], logged["clip_ratio/high_mean"])
    if beta:
        close(stats["kl"] / stats["tokens"], logged["kl"])
    if not first_pass:
        assert stats["clip"] > 0      # the case exercises the clip


def test_float32_within_tolerance_of_trl():
    logps, old, ref, adv, mask = random_case(seed=3, dtype=torch.float32)
    expected, expected_grad, _ = trl_loss(logps, old, ref, adv, mask, loss_type="dapo",
                                          beta=0.04, eps_low=0.2, eps_high=0.2, max_len=8,
                                          grad_accum=1, batch_tokens=int(mask.sum()))
    leaf = logps.detach().clone().requires_grad_(True)
    ours, _ = policy_loss(leaf, old, ref, adv, mask, loss_type="dapo", beta=0.04,
                          batch_tokens=int(mask.sum()))
    (grad,) = torch.autograd.grad(ours, leaf)
    close(ours, expected)
    close(grad, expected_grad)


def test_hand_worked_case():
    """Two completions of one token, ratio 1: dapo loss = -(A1 + A2) / 2 tokens."""
    logps = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    loss, _ = policy_loss(logps, None, None, torch.tensor([1.0, -1.0]),
                          torch.ones(2, 1), loss_type="dapo", batch_tokens=2)
    assert float(loss) == 0.0
    (grad,) = torch.autograd.grad(loss, logps)
    assert grad.flatten().tolist() == [-0.5, 0.5]     # raise the good one, lower the bad


def test_token_logps_are_the_models_log_softmax(tiny_model):
    """token_logps over left-padded prompts and right-padded completions equals the log-softmax
    of a plain forward pass of each unpadded row (positions follow the mask)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompts, completions = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    from engine.training.grpo import pad_left, pad_right

    p, pm = pad_left(prompts, 0)
    c, cm = pad_right(completions, 0)
    with torch.no_grad():
        got = token_logps(model, p, pm, c, cm, temperature=0.7)
        for i, (pr, co) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([pr + co])
            logits = model(input_ids=ids).logits[0, len(pr) - 1:-1].float() / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(co)[:, None])[:, 0]
            close(got[i, :len(co)], want)

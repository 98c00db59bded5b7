"""Distillation (engine/training/distill.py): the divergences by hand and against TRL 1.16's
GKDTrainer.generalized_jsd_loss, the top-k buckets, the config's checks, and real runs on tiny
models: the student moves toward the teacher, the cached top-k trains without the teacher, and a
resumed run repeats an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.config import TrainConfig, validate
from engine.training.distill import (forward_kl, generalized_jsd, gjsd_from_logps,
                                     fkl_from_logps, student_buckets, teacher_buckets)
from engine.training.loop import run
from engine.training.reporter import ListReporter

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def test_forward_kl_by_hand():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    p, q = (0.75, 0.25), (0.5, 0.5)
    expected = sum(a * math.log(a / b) for a, b in zip(p, q))
    assert forward_kl(student, teacher).item() == pytest.approx(expected, abs=1e-6)
    # temperature 2: p ∝ (√3, 1); the loss is multiplied by T² = 4
    r = math.sqrt(3)
    p2 = (r / (r + 1), 1 / (r + 1))
    expected2 = 4 * sum(a * math.log(a / b) for a, b in zip(p2, q))
    assert forward_kl(student, teacher, temperature=2.0).item() == pytest.approx(expected2,
                                                                                 abs=1e-6)


def test_generalized_jsd_by_hand():
    student = torch.tensor([[0.0, 0.0, 0.0]])
    teacher = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    p, q = (0.5, 0.25, 0.25), (1 / 3, 1 / 3, 1 / 3)

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b))

    for beta in (0.5, 0.2):
        m = tuple(beta * a + (1 - beta) * b for a, b in zip(p, q))
        expected = beta * kl(p, m) + (1 - beta) * kl(q, m)
        got = generalized_jsd(student, teacher, beta=beta).item()
        assert got == pytest.approx(expected, abs=1e-6)
    assert generalized_jsd(student, teacher, beta=0.0).item() == pytest.approx(kl(p, q), abs=1e-6)
    assert generalized_jsd(student, teacher, beta=1.0).item() == pytest.approx(kl(q, p), abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_generalized_jsd_equals_trl(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(int(beta * 10 + temperature * 100))
    student = (torch.randn(3, 7, 13, generator=g, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(3, 7, 13, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 13, (3, 7), generator=g)
    labels[0, :3] = -100
    labels[2, 5:] = -100
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                             temperature=temperature)
    (their_grad,) = torch.autograd.grad(theirs, student)
    keep = labels != -100
    ours = generalized_jsd(student[keep], teacher[keep], beta=beta,
                           temperature=temperature).sum() / keep.sum()
    (our_grad,) = torch.autograd.grad(ours, student)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert (our_grad - their_grad).abs().max().item() < 1e-5


def test_the_buckets_of_the_whole_vocabulary_are_the_full_divergences():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    for temperature in (1.0, 1.5):
        ids, t_logps = teacher_buckets(teacher, 9, temperature)
        s_logps = student_buckets(student, ids, temperature)
        assert fkl_from_logps(s_logps, t_logps) * temperature ** 2 == pytest.approx(
            forward_kl(student, teacher, temperature), abs=1e-5)
        assert gjsd_from_logps(s_logps, t_logps, 0.3) == pytest.approx(
            generalized_jsd(student, teacher, 0.3, temperature), abs=1e-5)
    # top-3: the rest bucket holds the other tokens' mass, so both sides sum to one
    ids, t_logps = teacher_buckets(teacher, 3, 1.0)
    s_logps = student_buckets(student, ids, 1.0)
    assert t_logps.exp().sum(-1) == pytest.approx(torch.ones(5), abs=1e-5)
    assert s_logps.exp().sum(-1) == pytest.approx(torch.ones(5), abs=1e-5)
    assert (ids == teacher.topk(3, dim=-1).indices).all()


# --------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory) -> Path:
    """Another tiny model with the same tokenizer (other random weights): the teacher."""
    from engine.models.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("teacher") / "teacher", size="tiny", seed=7,
                            max_position_embeddings=512)


def config(student, teacher, examples, out: Path, **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.dtype = str(student), "float32"
    cfg.data.train = str(examples / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.method.kind = "full"
    cfg.train.objective, cfg.train.teacher = "distill", str(teacher)
    cfg.train.precision = "fp32"
    cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps = 3e-3, 8, 10
    cfg.train.eval_every, cfg.train.save_every = 5, 0
    cfg.train.eval_generate = "off"
    cfg.output_dir = str(out)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def keys(cfg) -> dict[str, str]:
    return {p.key: p.message for p in validate(cfg)}


def test_config_checks_name_the_field(tiny_model, teacher_model, examples, tmp_path):
    cfg = config(tiny_model, teacher_model, examples, tmp_path)
    assert keys(cfg) == {}
    cfg.train.teacher = None
    assert "distill needs a teacher" in keys(cfg)["train.teacher"]
    cfg = config(tiny_model, teacher_model, examples, tmp_path, objective="sft")
    assert "applies to train.objective distill" in keys(cfg)["train.teacher"]
    cfg = config(tiny_model, teacher_model, examples, tmp_path, distill_alpha=1.5,
                 distill_temperature=0.0, gkd_beta=0.3, teacher_topk_cache=0)
    found = keys(cfg)
    assert {"train.distill_alpha", "train.distill_temperature", "train.gkd_beta",
            "train.teacher_topk_cache"} <= set(found)
    assert "distill_loss gkd" in found["train.gkd_beta"]


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(tiny_model, examples, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[next(iter(vocab))] = len(vocab) + 5  # one token with another id
    (other / "tokenizer.json").write_text(json.dumps(data))
    message = keys(config(tiny_model, other, examples, tmp_path))["train.teacher"]
    assert str(other) in message and str(tiny_model) in message
    assert "different tokenizers" in message


# --------------------------------------------------------------------------- real runs


def eval_series(reporter: ListReporter, name: str = "eval_distill") -> list[float]:
    return [v for _, v in reporter.series(name)]


@pytest.mark.parametrize("loss,topk", [("forward_kl", None), ("gkd", 16)])
def test_the_student_moves_toward_the_teacher(tiny_model, teacher_model, examples, home,
                                              tmp_path, loss, topk):
    cfg = config(tiny_model, teacher_model, examples, tmp_path / "run", distill_loss=loss,
                 teacher_topk_cache=topk, distill_alpha=1.0, max_steps=12, eval_every=3,
                 distill_temperature=1.5)
    reporter = ListReporter()
    result = run(cfg, reporter)
    held_out = eval_series(reporter)
    assert len(held_out) == 4 and not result.cancelled
    assert held_out[-1] < 0.7 * held_out[0], held_out   # held-out divergence falls
    train = [v for _, v in reporter.series("distill")]
    assert train[-1] < train[0]
    if topk:
        assert any("teacher: freed" in line for line in reporter.lines)
        assert list(Path(home, "cache").glob("teacher-*.safetensors"))
        again = ListReporter()
        run(config(tiny_model, teacher_model, examples, tmp_path / "again", distill_loss=loss,
                   teacher_topk_cache=topk, distill_alpha=1.0, max_steps=2, eval_every=0,
                   distill_temperature=1.5), again)
        assert any("from the cache" in line for line in again.lines)
        assert not any(line.startswith("teacher: ") and "parameters" in line
                       for line in again.lines)   # never loaded


def test_full_teacher_and_topk_of_the_whole_vocabulary_agree(tiny_model, teacher_model,
                                                             examples, home, tmp_path):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
    got = {}
    for topk in (None, vocab):
        reporter = ListReporter()
        run(config(tiny_model, teacher_model, examples, tmp_path / f"k{topk}", max_steps=3,
                   teacher_topk_cache=topk, eval_every=3, distill_loss="gkd", gkd_beta=0.3),
            reporter)
        got[topk] = [r["loss"] for r in reporter.records if "loss" in r] + eval_series(reporter)
    assert got[None] == pytest.approx(got[vocab], rel=1e-4)


@pytest.mark.parametrize("topk", [None, 8])
def test_a_resumed_distillation_repeats_the_uninterrupted_run(tiny_model, teacher_model,
                                                              examples, home, tmp_path, topk):
    def cfg_for(out):
        cfg = config(tiny_model, teacher_model, examples, out, teacher_topk_cache=topk,
                     max_steps=8, eval_every=4, distill_temperature=2.0)
        cfg.method.kind, cfg.method.dropout, cfg.train.lr = "lora", 0.1, 1e-2
        cfg.train.grad_accum = 2
        return cfg

    whole = ListReporter()
    run(cfg_for(tmp_path / "whole"), whole)
    out = tmp_path / "split"
    first = ListReporter(stop_after_step=3)
    assert run(cfg_for(out), first).cancelled
    cfg = cfg_for(out)
    cfg.train.resume_from = "latest"
    second = ListReporter()
    run(cfg, second)
    for name in ("loss", "distill", "ce"):
        got = first.series(name) + second.series(name)
        expected = whole.series(name)
        assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 9))
        assert max(abs(a - b) for (_, a), (_, b) in zip(got, expected)) < 1e-4
    resumed = second.series("eval_distill")
    assert [s for s, _ in resumed] == [4, 8]
    assert [v for _, v in resumed] == pytest.approx(
        [v for s, v in whole.series("eval_distill") if s > 3], abs=1e-4)


def test_the_estimate_counts_the_teacher_only_while_it_stays_in_memory(tiny_model,
                                                                        teacher_model, examples,
                                                                        tmp_path):
    from engine.models.estimate import count_params, estimate_for
    from engine.models.presets import read_config

    cfg = config(tiny_model, teacher_model, examples, tmp_path)
    with_teacher = estimate_for(cfg)
    weights = count_params(read_config(str(teacher_model))).total * 4
    assert with_teacher.parts["teacher"] >= weights
    cfg.train.teacher_topk_cache = 16
    assert "teacher" not in estimate_for(cfg).parts
    cfg.train.objective, cfg.train.teacher, cfg.train.teacher_topk_cache = "sft", None, None
    assert "teacher" not in estimate_for(cfg).parts


def test_the_evaluation_puts_the_teacher_beside_the_student(tiny_model, teacher_model,
                                                            examples, home, tmp_path):
    from engine.evaluation.evaluate import evaluate_run

    out = tmp_path / "run"
    cfg = config(tiny_model, teacher_model, examples, out, max_steps=2, eval_every=0,
                 eval_generate="end", eval_generate_max=6, eval_generate_max_new_tokens=6)
    reporter = ListReporter()
    run(cfg, reporter)
    record = json.loads((out / "eval.json").read_text())
    assert record["baseline"] == "teacher" and record["base_model"] == str(teacher_model)
    assert record["n"] == 6 and record["metrics"]["exact_match"]["base_ci"] is not None
    facts = json.loads((out / "run.json").read_text())["distill"]
    assert facts["teacher"]["params"] == facts["student"]["params"] > 0   # same shape here
    assert facts["teacher"]["tokens_per_s"] > 0 and facts["student"]["tokens_per_s"] > 0
    assert set(facts["student"]["metrics"]) == set(record["metrics"])
    card = (out / "distill.md").read_text()
    assert "| parameters |" in card and "generation tokens/s" in card and "exact_match" in card
    # an eval job of the run compares with the teacher too
    again = evaluate_run(out, max_records=3, max_new_tokens=4, out=tmp_path / "eval.json",
                         log=lambda _: None)
    assert again["baseline"] == "teacher" and again["base_model"] == str(teacher_model)

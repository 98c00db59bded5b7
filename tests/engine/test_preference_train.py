"""Preference tuning in the engine's own loop on the tiny model: each objective trains on the
bundled preference (or KTO) examples and its held-out reward accuracy (KTO: margin) rises; the
reference is the model with its adapter disabled (no second copy); a resumed run repeats an
uninterrupted one; data that does not fit the objective is refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import TrainConfig
from engine.data import DataError
from engine.training.reporter import ListReporter
from engine.training.loop import run
from tests_paths import EXAMPLES


def yes_no(folder: Path, objective: str, n: int = 80) -> Path:
    """A preference the tiny model can learn and carry to held-out prompts: the answer "yes"
    over "no" (the bundled word-task pairs need more than a 2-layer random model generalises)."""
    words = "red green blue moon stone river apple kiwi melon deer lion owl".split()
    path = folder / f"yes-{objective}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = f"Is this a list of words? {' '.join(words[i % 12:i % 12 + 3])} {i}"
            row = ({"prompt": prompt, "completion": "yes" if i % 2 else "no",
                    "label": bool(i % 2)} if objective == "kto" else
                   {"prompt": prompt, "chosen": "yes", "rejected": "no"})
            f.write(json.dumps(row) + "\n")
    return path


def config(tiny_model, out: Path, objective: str, data: Path | None = None,
           **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.output_dir = str(tiny_model), str(out)
    cfg.data.train = str(data or EXAMPLES / ("kto.jsonl" if objective == "kto" else
                                             "preference.jsonl"))
    cfg.data.max_seq_len, cfg.data.val_fraction = 128, 0.2
    cfg.train.objective = objective
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.lr = 8, 24, 1e-2
    cfg.train.scheduler, cfg.train.warmup_ratio = "constant", 0.0
    cfg.train.eval_every, cfg.train.save_every, cfg.train.eval_generate = 12, 0, "off"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def evals(reporter: ListReporter) -> list[dict]:
    return [r for r in reporter.records if "eval_loss" in r]


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo", "kto"])
def test_each_objective_learns_to_prefer_the_right_answer(tiny_model, home, tmp_path,
                                                         objective):
    data = yes_no(tmp_path, objective)
    reporter = ListReporter()
    before = run(config(tiny_model, tmp_path / "zero", objective, data, max_steps=1, lr=1e-9),
                 ListReporter())
    result = run(config(tiny_model, tmp_path / "run", objective, data), reporter)
    train = [r for r in reporter.records if "loss" in r]
    assert {"reward_chosen", "reward_rejected"} <= set(train[-1])
    last = evals(reporter)[-1]
    # measured: held-out margin 0 -> 0.72 (dpo), 0.22 -> 4.3 (simpo), 0.01 -> 0.16 (orpo),
    # 0 -> 0.36 (kto); accuracy 1.0 for every pair objective (dpo from 0.25)
    start = before.metrics["eval_reward_margin"]
    assert last["eval_reward_margin"] > start + 0.1, (objective, start, last)
    if objective != "kto":
        assert last["eval_reward_accuracy"] >= 0.9, last
    if objective == "dpo":
        assert before.metrics["eval_reward_accuracy"] < 0.5
    assert train[-1]["loss"] < train[0]["loss"]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert result.steps == 24


def test_the_reference_is_the_model_with_its_adapter_disabled(tiny_model, home, tmp_path):
    from engine.training.preference import PreferenceLoss
    from engine.training.loop import make_loss, setup

    session = setup(config(tiny_model, tmp_path / "run", "dpo", yes_no(tmp_path, "dpo")),
                    ListReporter())
    loss = session.loss_of
    assert isinstance(loss, PreferenceLoss) and loss.reference is None   # no second copy
    assert loss.model is session.unwrapped      # the one model in memory serves both
    batch = session.train_batches.collate(session.train_batches.plan(0)[0])
    with torch.no_grad(), session.unwrapped.disable_adapter():
        plain = loss._logps(session.unwrapped, batch, grad=False)[0]
    assert torch.equal(loss._reference(batch), plain)
    # full fine-tuning has no adapter to disable: a frozen copy, counted by the estimate
    cfg = config(tiny_model, tmp_path / "full", "dpo", yes_no(tmp_path, "dpo"))
    cfg.method.kind = "full"
    full = make_loss(cfg, session.unwrapped.get_base_model(), session.accelerator, {},
                     lambda line: None)
    assert full.reference is not None
    assert not any(p.requires_grad for p in full.reference.parameters())


def test_a_resumed_dpo_run_repeats_an_uninterrupted_one(tiny_model, home, tmp_path):
    whole = ListReporter()
    run(config(tiny_model, tmp_path / "a", "dpo", max_steps=8, eval_every=0), whole)
    cfg = config(tiny_model, tmp_path / "b", "dpo", max_steps=8, eval_every=0, save_every=4)
    run(cfg, ListReporter(stop_after_step=4))
    cfg.train.resume_from = "latest"
    rest = ListReporter()
    run(cfg, rest)
    first = {r["step"]: r["loss"] for r in whole.records if "loss" in r}
    again = {r["step"]: r["loss"] for r in rest.records if "loss" in r}
    assert sorted(again) == [5, 6, 7, 8]
    for step, value in again.items():
        assert value == pytest.approx(first[step], rel=1e-5, abs=1e-6), step


def test_data_that_does_not_fit_the_objective_is_refused(tiny_model, home, tmp_path):
    cfg = config(tiny_model, tmp_path / "a", "dpo")
    cfg.data.train = str(EXAMPLES / "kto.jsonl")
    with pytest.raises(DataError, match="train.objective=dpo needs preference records"):
        run(cfg, ListReporter())
    cfg = config(tiny_model, tmp_path / "b", "dpo")
    cfg.train.objective = "sft"
    with pytest.raises(DataError, match="set train.objective to dpo, orpo or simpo"):
        run(cfg, ListReporter())


def test_precomputed_reference_log_probs_train_as_the_live_reference_and_are_cached(
        tiny_model, home, tmp_path):
    data = yes_no(tmp_path, "dpo", n=40)
    live, pre, again = ListReporter(), ListReporter(), ListReporter()
    run(config(tiny_model, tmp_path / "live", "dpo", data, max_steps=6, eval_every=3), live)
    run(config(tiny_model, tmp_path / "pre", "dpo", data, max_steps=6, eval_every=3,
               precompute_reference=True), pre)
    lines = " ".join(pre.lines)
    assert "reference: computed the log-probs of" in lines, pre.lines
    assert "reference: log-probs computed once before training" in lines
    for name in ("loss", "reward_margin", "eval_loss", "eval_reward_margin"):
        a = [r[name] for r in live.records if name in r]
        b = [r[name] for r in pre.records if name in r]
        assert len(a) == len(b) > 0
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), name
    run(config(tiny_model, tmp_path / "again", "dpo", data, max_steps=2, eval_every=0,
               precompute_reference=True), again)
    assert sum("from the cache" in line for line in again.lines) == 2     # train and eval
    assert not any("reference: computed" in line for line in again.lines)


def test_full_fine_tuning_with_a_precomputed_reference_keeps_no_frozen_copy(
        tiny_model, home, tmp_path):
    from engine.models.estimate import estimate_for
    from engine.config import validate
    from engine.training.loop import setup

    cfg = config(tiny_model, tmp_path / "full", "dpo", yes_no(tmp_path, "dpo", n=24),
                 precompute_reference=True, max_steps=2)
    cfg.method.kind = "full"
    session = setup(cfg, ListReporter())
    assert session.loss_of.reference is None
    assert session.train_batches.reference_logps.shape == (len(session.train_batches.dataset), 2)
    live = cfg.copy()
    live.train.precompute_reference = False
    assert "reference" in estimate_for(live).parts
    assert "reference" not in estimate_for(cfg).parts
    kto = config(tiny_model, tmp_path / "kto", "kto", precompute_reference=True)
    assert [p.key for p in validate(kto)] == ["train.precompute_reference"]


def test_a_preference_run_ends_with_a_generation_evaluation_against_the_chosen_answers(
        tiny_model, home, tmp_path):
    """The held-out pairs' prompts are answered by the base and the tuned model and scored
    against each pair's chosen answer (kto: against desirable completions only)."""
    from engine.evaluation.evaluate import read_record

    for objective in ("dpo", "kto"):
        out = tmp_path / objective
        run(config(tiny_model, out, objective, yes_no(tmp_path, objective, n=40), max_steps=4,
                   eval_every=0, eval_generate="end"), ListReporter())
        record = read_record(out / "eval.json")
        rows = record["rows"]
        assert rows and all(r["reference"] == "yes" for r in rows), rows[:2]
        assert {"base", "tuned"} <= set(rows[0])
        if objective == "dpo":
            assert len(rows) == 8                      # every held-out pair
        else:                                          # kto: its desirable records only
            assert 0 < len(rows) < 8

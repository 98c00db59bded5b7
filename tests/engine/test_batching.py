"""Batching: packing, ordering, padding, sharding, and attention isolation inside packs."""

from __future__ import annotations

import random

import datasets
import pytest
import torch
import torch.nn.functional as F

from engine.data.batching import (IGNORE_INDEX, Batches, best_fit_decreasing, block_causal_mask,
                             collate_packed, collate_padded, ordered_indices, packed_rows,
                             records_moved, trained_tokens)


def make_dataset(lengths: list[int], seed: int = 0) -> datasets.Dataset:
    """Hand-built tokenized examples: ids 3.., first label -100, like engine.data makes them."""
    rng = random.Random(seed)
    ids = [[rng.randrange(3, 500) for _ in range(n)] for n in lengths]
    labels = [[IGNORE_INDEX] + x[1:] for x in ids]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels, "length": lengths})


_rng = random.Random(1)
LENGTHS = [_rng.randrange(5, 120) for _ in range(97)]


def test_best_fit_decreasing_places_every_example_once_within_capacity():
    bins = best_fit_decreasing(range(len(LENGTHS)), LENGTHS, 128)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in b) <= 128 for b in bins)
    # near the lower bound: total tokens / capacity
    assert len(bins) <= -(-sum(LENGTHS) // 128) + 2


def test_best_fit_decreasing_chooses_the_fullest_bin_that_fits():
    # 70 opens bin A (58 free), 60 opens bin B (68 free); 50 fits both: best fit is A
    bins = best_fit_decreasing([0, 1, 2], [70, 60, 50], 128)
    assert bins == [[0, 2], [1]]


def test_an_example_longer_than_the_capacity_gets_its_own_bin():
    assert best_fit_decreasing([0, 1], [200, 10], 128) == [[0], [1]]


@pytest.mark.parametrize("packing", [True, False])
def test_plans_are_deterministic_by_seed_and_epoch(packing):
    ds = make_dataset(LENGTHS)
    kw = dict(batch_size=4, max_seq_len=128, packing=packing, order="shuffle", pad_id=0)
    a, b = Batches(ds, seed=7, **kw), Batches(ds, seed=7, **kw)
    assert a.plan(0) == b.plan(0) and a.plan(3) == b.plan(3)
    assert a.plan(0) != a.plan(1)
    assert Batches(ds, seed=8, **kw).plan(0) != a.plan(0)


def test_orders_without_packing():
    assert ordered_indices(LENGTHS, "as_is", 0, 0, 4) == list(range(len(LENGTHS)))
    short = ordered_indices(LENGTHS, "shortest_first", 0, 0, 4)
    assert [LENGTHS[i] for i in short] == sorted(LENGTHS)
    shuffled = ordered_indices(LENGTHS, "shuffle", 0, 0, 4)
    assert sorted(shuffled) == list(range(len(LENGTHS))) and shuffled != list(range(len(LENGTHS)))


def test_orders_with_packing():
    as_is = packed_rows(LENGTHS, "as_is", 0, 0, 128)
    assert [min(r) for r in as_is] == sorted(min(r) for r in as_is)
    short = packed_rows(LENGTHS, "shortest_first", 0, 0, 128)
    means = [sum(LENGTHS[i] for i in r) / len(r) for r in short]
    assert means == sorted(means)
    assert records_moved([[i] for i in range(5)]) == 0
    assert records_moved([[1, 0], [2]]) == 2


def test_length_grouping_keeps_padding_small():
    ds = make_dataset(LENGTHS)
    kw = dict(batch_size=4, max_seq_len=128, packing=False, seed=0, pad_id=0)
    grouped = Batches(ds, order="shuffle", **kw).padding_share()
    file_order = Batches(ds, order="as_is", **kw).padding_share()
    assert grouped < file_order / 2
    assert Batches(ds, order="shuffle", **{**kw, "packing": True}).padding_share() < 0.1


def test_processes_get_disjoint_equal_shares():
    ds = make_dataset(LENGTHS)
    kw = dict(batch_size=4, max_seq_len=128, packing=True, order="shuffle", seed=0, pad_id=0)
    one = Batches(ds, **kw)
    r0, r1 = Batches(ds, rank=0, world=2, **kw), Batches(ds, rank=1, world=2, **kw)
    assert len(r0.plan(0)) == len(r1.plan(0)) == len(r0) == len(one) // 2
    seen0 = {i for b in r0.plan(0) for r in b for i in r}
    seen1 = {i for b in r1.plan(0) for r in b for i in r}
    assert not seen0 & seen1


def test_collate_padded_pads_right_with_ignored_labels():
    batch = collate_padded([([5, 6, 7], [-100, 6, 7]), ([8, 9], [-100, 9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert trained_tokens(batch) == 3


def test_collate_packed_restarts_positions_and_blocks_attention():
    batch = collate_packed([[([5, 6], [-100, 6]), ([7, 8, 9], [-100, 8, 9])],
                            [([1, 2], [-100, 2])]], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, 2, -100, -100, -100]
    allowed = (batch["attention_mask"][0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 1, 1, 1]]
    padded = (batch["attention_mask"][1, 0] == 0).int().tolist()
    assert padded[3] == [0, 0, 0, 1, 0]  # padding attends only to itself: never a NaN row


def test_block_causal_mask_uses_the_dtype_minimum():
    mask = block_causal_mask(torch.tensor([[0, 0, 1]]), torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.shape == (1, 1, 3, 3)
    assert mask[0, 0, 0, 1] == torch.finfo(torch.bfloat16).min and mask[0, 0, 1, 0] == 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_packed_sample_has_the_loss_it_has_alone(tiny_model, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn,
                                                 dtype=torch.float32).eval()
    ds = make_dataset([9, 23, 14, 31], seed=3)
    examples = list(zip(ds["input_ids"], ds["labels"]))
    packed = collate_packed([examples[:3], examples[3:]], pad_id=0)

    def loss(logits, labels):
        return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX)

    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        at = 0
        for k, (ids, labels) in enumerate(examples[:3]):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            inside = logits[0, at:at + len(ids)]
            at += len(ids)
            labels = torch.tensor(labels)
            assert abs(loss(inside, labels) - loss(alone, labels)) < 1e-5
        ids, labels = examples[3]
        alone = model(input_ids=torch.tensor([ids])).logits[0]
        assert torch.allclose(logits[1, :len(ids)], alone, atol=1e-4)


# --------------------------------------------------------------------------- token budgets


@pytest.mark.parametrize("packing", [True, False])
def test_token_budget_batches_hold_every_example_once_within_the_budget(packing):
    ds = make_dataset(LENGTHS)
    budget = 512
    b = Batches(ds, batch_size=4, max_seq_len=128, packing=packing, order="shuffle", seed=3,
                pad_id=0, batch_tokens=budget)
    for epoch in (0, 1):
        batches = b.all_batches(epoch)
        for rows in batches:
            width = max(sum(LENGTHS[i] for i in r) for r in rows)
            assert len(rows) * (128 if packing else width) <= budget
        seen = sorted(i for rows in batches for r in rows for i in r)
        assert seen == list(range(len(LENGTHS)))
    if packing:
        assert b.batch_size == 512 // 128
    else:   # short rows share a batch, long ones do not: more rows per batch than 512 / 120
        assert max(len(rows) for rows in b.all_batches(0)) > 512 // 120 + 1
        assert b.padding_share() < 0.1


def test_token_budget_batches_cut_greedily_and_a_long_row_stands_alone():
    from engine.data import token_budget_batches

    lengths = [100, 90, 300, 10, 10, 10]
    assert token_budget_batches([[i] for i in range(6)], lengths, 199) == [[0], [1], [2],
                                                                          [3, 4, 5]]
    assert token_budget_batches([[i] for i in range(6)], lengths, 400) == [[0, 1], [2],
                                                                          [3, 4, 5]]


def test_token_budget_plans_are_deterministic_and_shard_evenly():
    ds = make_dataset(LENGTHS)
    kw = dict(batch_size=4, max_seq_len=128, packing=False, order="shuffle", pad_id=0,
              batch_tokens=400)
    a, b = Batches(ds, seed=7, **kw), Batches(ds, seed=7, **kw)
    assert a.plan(0) == b.plan(0) and a.plan(2) == b.plan(2) and a.plan(0) != a.plan(1)
    r0, r1 = Batches(ds, seed=7, rank=0, world=2, **kw), Batches(ds, seed=7, rank=1, world=2, **kw)
    for epoch in (0, 1, 2, 5):
        p0, p1 = r0.plan(epoch), r1.plan(epoch)
        assert len(p0) == len(p1) == len(r0) > 0
        assert not {i for x in p0 for r in x for i in r} & {i for x in p1 for r in x for i in r}


@pytest.mark.parametrize("packing", [True, False])
def test_a_short_run_with_a_token_budget_completes(tiny_model, examples, tmp_path, packing):
    import json

    from engine.config import TrainConfig
    from engine.training.loop import run

    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = str(tiny_model), str(examples / "alpaca.json")
    cfg.data.max_seq_len, cfg.data.packing = 128, packing
    t = cfg.train
    t.batch_tokens, t.max_steps, t.eval_every, t.save_every = 512, 3, 0, 0
    cfg.output_dir = str(tmp_path)
    result = run(cfg)
    assert result.steps == 3 and not result.cancelled
    batching = json.loads((tmp_path / "run.json").read_text())["batching"]
    assert batching["batch_tokens"] == 512

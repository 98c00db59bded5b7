"""Batch counts: every process gets batches_per_epoch batches in every epoch, also when a token
budget cuts each epoch's shuffle into a slightly different number of batches."""

from __future__ import annotations

import functools
import math
import random

import datasets
import pytest

from engine.data import IGNORE_INDEX, Batches, fit_batch_count

LONGEST = 512


@functools.cache
def lognormal_lengths(seed: int, median: int, sigma: float, n: int = 300) -> tuple[int, ...]:
    """Token lengths like real instruction data: many short records and a long tail."""
    rng = random.Random(seed)
    return tuple(max(2, min(LONGEST, round(rng.lognormvariate(math.log(median), sigma))))
                 for _ in range(n))


@functools.cache
def dataset(lengths: tuple[int, ...]) -> datasets.Dataset:
    ids = [[3 + k % 400 for k in range(n)] for n in lengths]
    return datasets.Dataset.from_dict({"input_ids": ids,
                                       "labels": [[IGNORE_INDEX] + x[1:] for x in ids],
                                       "length": list(lengths)})


def by_tokens(lengths, budget: int, seed: int, world: int = 1, rank: int = 0, log=None,
              order: str = "shuffle") -> Batches:
    return Batches(dataset(lengths), batch_size=4, max_seq_len=LONGEST, packing=False,
                   order=order, seed=seed, pad_id=0, batch_tokens=budget, rank=rank,
                   world=world, log=log)


def records(batches) -> list[int]:
    return [i for rows in batches for r in rows for i in r]


SPREADS = [(40, 0.8), (80, 1.1)]   # (median, sigma) of the lognormal lengths


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("budget", [300, 1024, 4096])
@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_process_gets_the_same_count_in_every_epoch(seed, spread, budget, world):
    lengths = lognormal_lengths(seed, *spread)
    ranks = [by_tokens(lengths, budget, seed, world, rank) for rank in range(world)]
    count = ranks[0].batches_per_epoch
    assert count == len(ranks[0].all_batches(0)) // world > 0
    for epoch in range(10):
        plans = [r.plan(epoch) for r in ranks]
        assert [len(p) for p in plans] == [count] * world
        for rows in (rows for p in plans for rows in p):
            assert rows
            if len(rows) > 1:
                assert len(rows) * max(lengths[r[0]] for r in rows) <= budget
        seen = [i for p in plans for i in records(p)]
        assert len(seen) == len(set(seen)), f"epoch {epoch}: a record on two processes"
        if world == 1 and epoch == 0:
            assert sorted(seen) == list(range(len(lengths)))


def cut_counts(lengths, budget, seed, epochs=range(1, 30)) -> dict[int, int]:
    b = by_tokens(lengths, budget, seed)
    return {e: len(b.all_batches(e)) - len(b.all_batches(0)) for e in epochs}


def test_an_epoch_cut_into_fewer_batches_splits_the_largest_and_keeps_every_record():
    lengths = lognormal_lengths(1, 40, 0.8)
    budget = 1024
    fewer = [e for e, d in cut_counts(lengths, budget, 1).items() if d < 0]
    assert fewer, "the data must give an epoch with fewer cuts than epoch 0"
    lines: list[str] = []
    b = by_tokens(lengths, budget, 1, log=lines.append)
    for epoch in fewer:
        cut, plan = b.all_batches(epoch), b.plan(epoch)
        assert len(plan) == b.batches_per_epoch > len(cut)
        assert records(plan) == records(cut)          # same order, split in place, none lost
        kept = [rows for rows in cut if rows in plan]
        split = [rows for rows in cut if rows not in plan]
        assert len(split) >= 1 and len(kept) + len(split) == len(cut)
        # the batch split first is one with the most rows
        assert max(len(rows) for rows in split) == max(len(rows) for rows in cut)
        assert any(f"epoch {epoch + 1}: the budget cuts {len(cut)} batches" in line
                   for line in lines)
        assert not any("left out" in line for line in lines)


@pytest.mark.parametrize("world", [1, 2])
def test_an_epoch_cut_into_more_batches_leaves_its_last_out_and_says_so(world):
    lengths = lognormal_lengths(0, 40, 0.8)
    budget = 300
    more = [e for e, d in cut_counts(lengths, budget, 0).items() if d > 0]
    assert more, "the data must give an epoch with more cuts than epoch 0"
    lines: list[str] = []
    ranks = [by_tokens(lengths, budget, 0, world, rank, log=lines.append if rank == 0 else None)
             for rank in range(world)]
    total = ranks[0].batches_per_epoch * world
    for epoch in more:
        cut = ranks[0].all_batches(epoch)
        for rank, b in enumerate(ranks):
            assert b.plan(epoch) == cut[:total][rank::world]
        gone = cut[total:]
        assert len(gone) > 0
        n = len(gone)
        said = [line for line in lines if line.startswith(f"batching: epoch {epoch + 1}: ")
                and "left out" in line]
        assert len(said) == 1
        assert f"{n} batch{'es' if n > 1 else ''} ({len(records(gone))} record" in said[0]
        assert f"past this epoch's {total}" in said[0] and "shuffles train them" in said[0]


def test_the_same_seed_gives_the_same_fitted_plans():
    lengths = lognormal_lengths(2, 80, 1.1)
    a, b = by_tokens(lengths, 1024, 5, world=2), by_tokens(lengths, 1024, 5, world=2)
    plans = [a.plan(e) for e in range(8)]
    assert plans == [b.plan(e) for e in range(8)]
    assert by_tokens(lengths, 1024, 6, world=2).plan(3) != plans[3]


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_packed_and_plain_plans_deal_round_robin_and_leave_out_the_remainder(packing, world):
    lengths = lognormal_lengths(3, 40, 0.8, n=97)
    lines: list[str] = []
    kw = dict(batch_size=4, max_seq_len=LONGEST, packing=packing, order="shuffle", seed=3,
              pad_id=0, world=world)
    ranks = [Batches(dataset(lengths), rank=r, log=lines.append, **kw) for r in range(world)]
    for epoch in (0, 1, 4):
        cut = ranks[0].all_batches(epoch)
        assert len(cut) == len(ranks[0].all_batches(0))          # a fixed count already
        for rank, b in enumerate(ranks):                          # as before: r, r + world, ...
            assert b.plan(epoch) == cut[rank::world][:b.batches_per_epoch]
    total = ranks[0].batches_per_epoch * world
    left = len(ranks[0].all_batches(0)) - total
    described = ranks[0].describe()
    assert ("left out" in described) == (left > 0)
    assert any("left out" in line for line in lines) == (left > 0)
    if left:
        assert f"{left} batch{'es' if left > 1 else ''} (" in described
        assert f"past a multiple of the {world} processes left out of every epoch" in described


def test_a_fixed_order_says_it_leaves_out_the_same_batches_every_epoch():
    lengths = lognormal_lengths(3, 40, 0.8, n=97)
    lines: list[str] = []
    b = Batches(dataset(lengths), batch_size=4, max_seq_len=LONGEST, packing=False,
                order="as_is", seed=0, pad_id=0, world=2, log=lines.append)
    b.plan(0)
    assert "order as_is leaves out the same ones every epoch" in b.describe()
    assert any("1 batch (1 record) past this epoch's 24 (12 for each of 2 processes) is left "
               "out; order as_is leaves out the same ones every epoch" in line for line in lines)


def test_fit_batch_count_splits_most_rows_then_largest_then_earliest():
    lengths = [10, 50, 40, 30, 20, 90, 80, 5]
    batches = [[[0]], [[1], [2], [3], [4]], [[5], [6]], [[7]]]
    two, left = fit_batch_count(batches, lengths, 5)
    assert left == [] and two == [[[0]], [[1], [2]], [[3], [4]], [[5], [6]], [[7]]]
    # three batches of 2 rows: the largest padded size first (90 x 2), then 50 x 2
    three, _ = fit_batch_count(batches, lengths, 7)
    assert three == [[[0]], [[1]], [[2]], [[3], [4]], [[5]], [[6]], [[7]]]
    assert fit_batch_count(batches, lengths, 3) == (batches[:3], batches[3:])
    assert fit_batch_count(batches, lengths, 8)[0] == [[[i]] for i in [0, 1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(ValueError, match="9 batches asked of 8 rows"):
        fit_batch_count(batches, lengths, 9)

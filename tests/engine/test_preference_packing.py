"""Packed preference pairs (engine.data.collate_packed_pairs): several pairs to a row, each side
a record of its own under the block-diagonal mask or as one flat row for varlen attention. Per
pair, the losses, rewards and gradients equal those of the pairs in rows of their own (fp32,
1e-5); a DPO run packs by default and learns; KTO keeps a row per answer."""

from __future__ import annotations

import pytest
import torch

from engine.data import Batches
from engine.training.reporter import ListReporter
from engine.training.loop import run, setup
from test_preference_train import config, evals, yes_no


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("attention", ["varlen", "sdpa"])
@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_packed_pairs_score_as_pairs_in_rows_of_their_own(tiny_model, home, tmp_path,
                                                          attention, objective):
    cfg = config(tiny_model, tmp_path / "run", objective, yes_no(tmp_path, objective, n=40),
                 batch_size=4)
    cfg.model.attn_implementation = attention
    cfg.method.dropout = 0.0
    session = setup(cfg, ListReporter())
    packed_batches, loss, model = session.train_batches, session.loss_of, session.unwrapped
    assert packed_batches.packing and packed_batches.varlen == (attention == "varlen")
    with torch.no_grad():       # a non-zero adapter, so policy and reference differ
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    rows = packed_batches.plan(0)[0]
    assert max(len(r) for r in rows) > 1                  # pairs share rows
    order = [i for r in rows for i in r]
    from engine.data import prepare

    train = prepare(cfg, session.tokenizer, log=lambda line: None).train
    alone = Batches(train, batch_size=len(order), max_seq_len=128,
                    packing=False, order="as_is", seed=0, pad_id=packed_batches.pad_id)
    packed = packed_batches.collate(rows)
    plain = alone.collate([[i] for i in order])
    assert "seq_ids" in packed and "seq_ids" not in plain
    assert loss.units(packed) == loss.units(plain) == len(order)

    model.zero_grad()
    got, got_m = loss.losses(model, packed)
    got.sum().backward()
    got_g = _grads(model)
    model.zero_grad()
    want, want_m = loss.losses(model, plain)
    want.sum().backward()
    want_g = _grads(model)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got, want)
    for k in ("reward_chosen", "reward_rejected", "reward_margin", "logps_chosen"):
        assert got_m[k] == pytest.approx(want_m[k], abs=1e-4), k
    assert got_g.keys() == want_g.keys() and got_g
    for name, g in got_g.items():
        assert torch.allclose(g, want_g[name], atol=1e-5, rtol=1e-4), name


def test_a_packed_dpo_run_learns_and_kto_keeps_a_row_per_answer(tiny_model, home, tmp_path):
    reporter = ListReporter()
    run(config(tiny_model, tmp_path / "dpo", "dpo", yes_no(tmp_path, "dpo")), reporter)
    lines = " ".join(reporter.lines)
    assert "packing 64 pairs (both sides of each in the same row)" in lines, lines[:2000]
    assert "attention: SDPA per record span" in lines
    assert evals(reporter)[-1]["eval_reward_accuracy"] >= 0.9
    kto = ListReporter()
    run(config(tiny_model, tmp_path / "kto", "kto", yes_no(tmp_path, "kto"), max_steps=2,
               eval_every=0), kto)
    assert any("packing is off: kto's reference point" in line for line in kto.lines)


@pytest.mark.parametrize("packing", [True, False])
def test_log_probs_through_the_chunked_lm_head_equal_the_full_logits(tiny_model, home, tmp_path,
                                                                     packing):
    """The preference loss takes each answer token's log-prob from the hidden states through
    the lm_head a few positions at a time (each chunk recomputed in backward); its losses and
    gradients equal the full-logits path's."""
    cfg = config(tiny_model, tmp_path / "run", "dpo", yes_no(tmp_path, "dpo", n=40))
    cfg.data.packing, cfg.method.dropout = packing, 0.0
    session = setup(cfg, ListReporter())
    loss, model = session.loss_of, session.unwrapped
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = session.train_batches.collate(session.train_batches.plan(0)[0])
    chunker = loss._chunker(model)
    assert chunker.chunked
    chunker.chunk_tokens = 5                  # several chunks, checkpointed
    out = []
    for chunked in (True, False):
        chunker.chunked = chunked
        model.zero_grad()
        losses, _ = loss.losses(model, batch)
        losses.sum().backward()
        out.append((losses.detach(), _grads(model)))
    (a, ga), (b, gb) = out
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a, b)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name

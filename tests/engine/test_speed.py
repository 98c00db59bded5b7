"""What makes the engine fast, checked without timing: packing leaves under 2% padding on the
benchmark dataset (bench/dataset.py), the chunked loss equals the plain one there and never
keeps full-vocabulary logits for backward, and the benchmark itself runs (slow tier).
Speed itself is measured by `python -m bench.throughput`, as ratios; never asserted here."""

from __future__ import annotations

import json
import random

import pytest
import torch

from engine.data import IGNORE_INDEX, Batches
from engine.config import TrainConfig
from engine.training.loss import TokenLoss, causal_lm_loss, model_inputs


@pytest.fixture(scope="module")
def bench_data(tiny_model, tmp_path_factory):
    """The benchmark dataset (600 records), tokenized by the engine for the tiny model."""
    from bench.dataset import write_bench_dataset
    from engine.data import prepare
    from engine.models.load import load_tokenizer

    folder = tmp_path_factory.mktemp("bench")
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.data.train = str(write_bench_dataset(folder / "bench.json", 600))
    cfg.data.val_fraction, cfg.data.max_seq_len = 0.0, 512
    tokenizer = load_tokenizer(str(tiny_model))
    return prepare(cfg, tokenizer, cache_dir=folder / "cache", log=lambda line: None).train


def test_packing_keeps_padding_under_2_percent_on_the_benchmark_dataset(bench_data):
    lengths = bench_data["length"]
    assert max(lengths) > 5 * sorted(lengths)[len(lengths) // 2]  # a long tail, as in real data
    packed = Batches(bench_data, batch_size=4, max_seq_len=512, packing=True, order="shuffle",
                     seed=42, pad_id=0)
    assert packed.padding_share() < 0.02
    # what Hugging Face's default collator pads to: random batches, each to its longest row
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    batches = [[lengths[i] for i in order[s:s + 20]] for s in range(0, len(order), 20)]
    dynamic = 1 - sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches)
    assert dynamic > 0.4


def tiny_lora(tiny_model):
    from engine.models.load import load_model

    cfg = TrainConfig()
    cfg.model.name, cfg.model.dtype, cfg.method.dropout = str(tiny_model), "float32", 0.0
    model, _, _ = load_model(cfg, log=lambda line: None, device="cpu")
    return model.train()


def test_chunked_loss_equals_plain_on_a_packed_benchmark_batch(tiny_model, bench_data):
    model = tiny_lora(tiny_model)
    batches = Batches(bench_data, batch_size=2, max_seq_len=512, packing=True, order="shuffle",
                      seed=42, pad_id=0)
    batch = batches.collate(batches.plan(0)[0])
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        plain = causal_lm_loss(model(**model_inputs(batch)).logits, batch["labels"])
        chunked = TokenLoss(model, log=lambda line: None, chunk_tokens=100)(model, batch)
    assert abs(chunked.item() / n - plain.item() / n) < 1e-5


def largest_vocab_tensor_saved(fn, vocab: int, weight: torch.Tensor) -> int:
    """Elements of the largest logits-shaped tensor (2-D or 3-D, vocabulary-sized last
    dimension, not the lm_head weight itself) that autograd keeps for backward while fn()
    builds its graph."""
    largest = 0

    def pack(t: torch.Tensor):
        nonlocal largest
        if t.dim() in (2, 3) and t.shape[-1] == vocab and t.data_ptr() != weight.data_ptr():
            largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return largest


def test_chunked_loss_never_keeps_full_logits_for_backward(tiny_model, bench_data):
    model = tiny_lora(tiny_model)
    weight = model.get_output_embeddings().weight
    vocab = weight.shape[0]
    # rows narrower than the vocabulary, so no attention tensor looks like logits
    short = bench_data.filter(lambda r: r["length"] < vocab - 32)
    batches = Batches(short, batch_size=2, max_seq_len=vocab - 32, packing=True,
                      order="shuffle", seed=42, pad_id=0)
    batch = batches.collate(batches.plan(0)[0])
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    def saved(fn) -> int:
        return largest_vocab_tensor_saved(fn, vocab, weight)

    plain = saved(lambda: causal_lm_loss(model(**model_inputs(batch)).logits, batch["labels"]))
    one_chunk = saved(lambda: TokenLoss(model, log=lambda line: None)(model, batch))
    chunked = saved(lambda: TokenLoss(model, log=lambda line: None, chunk_tokens=64)(model, batch))
    assert plain >= batch["labels"][:, 1:].numel() * vocab  # every position's logits
    assert one_chunk <= trained * vocab < plain         # trained positions only
    assert chunked == 0  # chunks are recomputed in backward: no logits kept at all


@pytest.mark.slow
def test_the_benchmark_runs_both_sides_and_writes_its_results(tmp_path, monkeypatch):
    from bench.throughput import main

    monkeypatch.setattr("sys.argv", ["python -m bench.throughput"])
    assert main(["--seq-len", "64,128", "--tokens", "1500", "--batch-tokens", "256",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("throughput-cpu-*.json")).read_text())
    assert report["sides"] == ["ours", "theirs"]    # no padding-free baseline without flash
    assert [r["max_seq_len"] for r in report["lengths"]] == [64, 128]
    for length in report["lengths"]:
        ours, theirs = length["ours"], length["theirs"]
        assert ours["useful_tokens_per_s"] > 0 and theirs["useful_tokens_per_s"] > 0
        assert ours["padding_share"] == 0.0 < theirs["padding_share"]
        assert ours["attention_per_token"] < theirs["attention_per_token"]
        assert ours["steps"] == theirs["steps"] == length["settings"]["steps"]
        assert abs(ours["final_loss"] - theirs["final_loss"]) < 1.0
        assert length["settings"]["rows"] == 256 // length["max_seq_len"]
        run = ours["runs"][0]
        assert "chunked" in run["loss_path"] and "SDPA per record span" in run["attention"]
        assert run["kernels"].startswith("kernels: plain PyTorch")  # CPU: no Liger
        assert length["ours_over_theirs"]["useful_tokens_per_s"] > 0
    assert report["lengths"][0]["settings"]["kernels"] == "auto"
    assert report["lengths"][0]["settings"]["compile"] is False
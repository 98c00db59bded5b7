"""Varlen attention for packed batches (engine/models/attention.py): isolation on every path, equality
with records run alone for every method that packs, the auto choice, and linear memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models.attention import (BUCKET, SPANS, choose_attention, flash_available, is_varlen,
                              length_buckets, spans_attention)
from engine.config import TrainConfig, packing_applies
from engine.data.batching import (IGNORE_INDEX, Batches, collate_flat, collate_packed,
                                  segment_ids)
from engine.models.load import load_model

#: the paths a packed batch can take here, with how it is collated for each
PATHS = ["sdpa", "eager", SPANS] + ([flash_available(torch.device("cuda"))]
                                    if torch.cuda.is_available()
                                    and flash_available(torch.device("cuda")) else [])


def records(lengths=(9, 23, 14, 31, 6, 21, 8, 28), seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Records like engine.data makes them: first label -100, a prompt without loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 500, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        out.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def packed_batch(path: str, examples) -> dict:
    """The batch the engine builds for `path`: one flat row (varlen) or two rows + 4-D mask."""
    if is_varlen(path):
        return collate_flat(examples)
    return collate_packed([examples[:3], examples[3:]], pad_id=0)


def logits_per_record(path: str, logits: torch.Tensor, examples) -> list[torch.Tensor]:
    """Each record's logits out of a packed batch's, in the order of `examples`."""
    if is_varlen(path):
        rows = [(0, examples)]
    else:
        rows = [(0, examples[:3]), (1, examples[3:])]
    out = []
    for b, row in rows:
        at = 0
        for ids, _ in row:
            out.append(logits[b, at:at + len(ids)])
            at += len(ids)
    return out


def record_loss(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    return F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def model_on(path: str, tiny_model, kind: str = "full"):
    """The tiny model with `kind` on it, loaded through the engine with attention `path`."""
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.method.kind, cfg.method.dropout = kind, 0.0
    cfg.model.attn_implementation = {SPANS: "varlen"}.get(path, path)
    if path.startswith("flash"):
        cfg.model.attn_implementation = "varlen"
    model, _, info = load_model(cfg, log=lambda line: None)
    assert info["attention"] == path
    return model


# --------------------------------------------------------------------------- collation


def test_collate_flat_lays_records_end_to_end_without_a_mask():
    ex = records((2, 3, 1))
    batch = collate_flat(ex)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, 6)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 5, 6]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert batch["labels"][0].tolist() == [t for _, lab in ex for t in lab]
    assert segment_ids(batch).tolist() == [0, 0, 1, 1, 1, 2]


def test_varlen_batches_plan_the_same_rows_and_collate_flat():
    import datasets

    ex = records((40, 7, 90, 33, 61, 12, 5, 70), seed=2)
    ds = datasets.Dataset.from_dict({"input_ids": [i for i, _ in ex],
                                     "labels": [lab for _, lab in ex],
                                     "length": [len(i) for i, _ in ex]})
    common = dict(batch_size=2, max_seq_len=128, packing=True, order="shuffle", seed=3, pad_id=0)
    dense, flat = Batches(ds, **common), Batches(ds, varlen=True, **common)
    assert flat.plan(0) == dense.plan(0) and flat.varlen and not dense.varlen
    rows = flat.plan(0)[0]
    batch = flat.collate(rows)
    assert batch["input_ids"].shape == (1, flat.tokens(rows))
    assert flat.padding_share() == 0.0 and dense.padding_share() > 0
    assert "one flat row" in flat.describe()


def test_length_buckets_group_similar_lengths_longest_first():
    spans = [(0, 10), (10, 40), (40, 48), (48, 73), (73, 82), (82, 84)]
    buckets = length_buckets(spans)
    assert buckets == [[(10, 40), (48, 73)], [(0, 10), (73, 82), (40, 48)], [(82, 84)]]
    for b in buckets:
        longest = b[0][1] - b[0][0]
        assert all(e - s >= BUCKET * longest for s, e in b)


@pytest.mark.parametrize("window", [None, 6])
def test_spans_attention_equals_attention_run_span_by_span(window):
    """The kernel alone, against SDPA on each span: outputs and gradients, with grouped query
    heads, spans padded inside their bucket, and a sliding window shorter than some spans."""
    class Module(torch.nn.Module):
        sliding_window = window

    g = torch.Generator().manual_seed(0)
    lengths = [17, 20, 3, 1, 19, 40, 33, 2]
    total = sum(lengths)
    q = torch.randn(1, 4, total, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, total, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, total, 8, generator=g, requires_grad=True)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    out, _ = spans_attention(Module(), q, k, v, None, scaling=0.3, cu_seq_lens_q=cu)
    assert out.shape == (1, total, 4, 8)
    parts, at = [], 0
    for n in lengths:
        i = torch.arange(n)
        mask = (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :] < window) if window
                                             else True)
        parts.append(F.scaled_dot_product_attention(
            q[:, :, at:at + n], k[:, :, at:at + n], v[:, :, at:at + n], attn_mask=mask,
            scale=0.3, enable_gqa=True))
        at += n
    want = torch.cat(parts, dim=2).transpose(1, 2)
    assert torch.allclose(out, want, atol=1e-6)
    w = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("path", PATHS)
def test_no_token_attends_across_records(tiny_model, path):
    """The cross-talk test: changing one record's tokens leaves every other record's logits
    exactly as they were (restarted position_ids alone would not isolate them)."""
    model = model_on(path, tiny_model).eval()
    ex = records()
    changed = list(ex)
    ids, labels = ex[1]
    changed[1] = ([(t * 7) % 497 + 3 for t in ids], labels)
    with torch.no_grad():
        before = logits_per_record(path, model(**inputs(packed_batch(path, ex))).logits, ex)
        after = logits_per_record(path, model(**inputs(packed_batch(path, changed))).logits,
                                  changed)
    for k, (a, b) in enumerate(zip(before, after)):
        if k == 1:
            assert not torch.allclose(a, b)
        else:
            assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-6), f"record {k} moved"


@pytest.mark.parametrize("path", PATHS)
def test_position_ids_alone_do_not_isolate_under_plain_sdpa(tiny_model, path):
    """Control for the test above: the same flat row without cu_seqlens and with positions
    counting through does leak, so the isolation tests can fail."""
    model = model_on(path, tiny_model).eval()
    ex = records()
    batch = collate_flat(ex)
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits
        alone = model(input_ids=torch.tensor([ex[1][0]])).logits[0]
    at = len(ex[0][0])
    assert not torch.allclose(leaky[0, at:at + len(ex[1][0])], alone, atol=1e-4)


# --------------------------------------------------------------------------- equality


PACKING_METHODS = ["lora", "dora", "qlora", "ia3", "full"]


@pytest.mark.parametrize("kind", PACKING_METHODS)
@pytest.mark.parametrize("path", [p for p in PATHS if p != "eager"])
def test_packed_losses_and_gradients_equal_the_records_alone(tiny_model, kind, path):
    """fp32: each record's loss inside the packed batch, and the gradient of the batch's
    summed loss, equal those of the records run one at a time (within 1e-5)."""
    model = model_on(path, tiny_model, kind).train()
    params = [p for p in model.parameters() if p.requires_grad]
    ex = records()
    batch = packed_batch(path, ex)
    logits = model(**inputs(batch)).logits
    packed = [record_loss(lg, lab) for lg, (_, lab) in
              zip(logits_per_record(path, logits, ex), ex)]
    packed_grads = torch.autograd.grad(sum(packed), params)
    alone_grads = [torch.zeros_like(p) for p in params]
    for (ids, labels), inside in zip(ex, packed):
        loss = record_loss(model(input_ids=torch.tensor([ids])).logits[0], labels)
        assert abs(loss.item() - inside.item()) < 1e-5 * max(1.0, abs(loss.item()))
        for acc, g in zip(alone_grads, torch.autograd.grad(loss, params)):
            acc += g
    for p, g in zip(packed_grads, alone_grads):
        assert torch.allclose(p, g, atol=1e-5, rtol=1e-5), (p - g).abs().max()


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_virtual_token_methods_do_not_pack_and_still_run_under_varlen(tiny_model, kind):
    """Packing does not apply to prompt and prefix tuning (one record per row); a model loaded
    with varlen gives them plain SDPA over their padded rows, equal to sdpa's."""
    cfg = TrainConfig()
    cfg.model.name, cfg.method.kind = str(tiny_model), kind
    assert packing_applies(cfg) == (False, packing_applies(cfg)[1]) and packing_applies(cfg)[1]
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    out = {}
    for attn in ("varlen", "sdpa"):
        cfg.model.attn_implementation = attn
        torch.manual_seed(0)   # the same virtual-token init on both
        model, _, info = load_model(cfg, log=lambda line: None)
        assert info["attention"] == (SPANS if attn == "varlen" else "sdpa")
        with torch.no_grad():
            out[attn] = model.eval()(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(out["varlen"], out["sdpa"], atol=1e-5)


# --------------------------------------------------------------------------- the choice


def test_auto_picks_the_varlen_path_for_the_device_and_says_why():
    cpu = torch.device("cpu")
    name, why = choose_attention("auto", cpu, packing=True)
    assert name == SPANS and "SDPA per record span" in why and "FlexAttention" in why
    name, why = choose_attention("auto", cpu, packing=False)
    assert name == "sdpa" and "not packed" in why
    cuda = torch.device("cuda")   # the decision only: nothing runs on it
    assert choose_attention("auto", cuda, True, flash="flash_attention_2")[0] == \
        "flash_attention_2"
    assert choose_attention("varlen", cuda, True, flash="flash_attention_3")[0] == \
        "flash_attention_3"
    name, why = choose_attention("auto", cuda, True, flash=None)
    assert name == SPANS and "without flash-attn" in why
    assert choose_attention("sdpa", cpu, True)[0] == "sdpa"
    assert "dense block-diagonal" in choose_attention("eager", cpu, True)[1]
    assert choose_attention("varlen", cpu, False)[0] == SPANS
    assert flash_available(cpu) is None
    with pytest.raises(ValueError, match="attn_implementation"):
        choose_attention("flex", cpu, True)


def test_load_model_logs_the_choice(tiny_model):
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    lines: list[str] = []
    _, _, info = load_model(cfg, log=lines.append)
    assert info["attention"] == SPANS
    assert any(line.startswith("attention: SDPA per record span (auto") for line in lines)
    cfg.data.packing = False
    lines.clear()
    _, _, info = load_model(cfg, log=lines.append)
    assert info["attention"] == "sdpa" and any("not packed" in line for line in lines)


# --------------------------------------------------------------------------- memory


def kept_bytes(model, batch: dict) -> int:
    """Bytes of the batch's tensors plus every distinct storage autograd keeps for backward
    in one forward: what a training step holds besides the weights."""
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logits = model(**inputs(batch)).logits
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            keep(v)
    del logits
    return sum(storages.values())


@pytest.mark.parametrize("path", [SPANS, "sdpa"])
def test_memory_grows_linearly_in_the_row_length(tiny_model, path):
    """2048 tokens per batch as 8 rows of 256 or one row of 2048: the varlen path keeps about
    the same bytes (linear in tokens), the dense 4-D mask path several times more."""
    model = model_on(path, tiny_model, "full").train()
    short = [records((128, 128), seed=s) for s in range(8)]      # 8 rows of 256
    long = records((1024, 1024), seed=9)                         # 1 row of 2048
    if is_varlen(path):
        a = collate_flat([r for row in short for r in row])
        b = collate_flat(long)
    else:
        a = collate_packed(short, pad_id=0)
        b = collate_packed([long], pad_id=0)
    ratio = kept_bytes(model, b) / kept_bytes(model, a)
    if is_varlen(path):
        assert ratio < 1.1, ratio
    else:
        assert ratio > 1.5, ratio   # the measure sees quadratic growth where there is some

"""Attention for packed batches that computes only what isolation allows ("varlen").

Use from Python:
    from engine.models.attention import choose_attention
    from engine.config import packing_applies
    packing, why_not = packing_applies(cfg)
    name, why = choose_attention(cfg.model.attn_implementation, device, packing)
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)
    # batches: engine.data.collate_flat (is_varlen(name)), else collate_packed's 4-D mask

A packed batch on the varlen path is one flat row of every record of the batch, end to end,
with no padding and no L x L mask: input_ids, labels, position_ids restarting at 0 for each
record, and flash attention's varlen arguments cu_seq_lens_q/k (record boundaries) and
max_length_q/k (engine.data.batching.collate_flat). transformers passes these through the
model to the attention function of every layer (TransformersKwargs), so no model class is
patched. Which kernel reads them depends on the device:

- CUDA with flash-attn 2 or 3 installed: transformers' own flash_attention_2/3, whose varlen
  kernel takes cu_seqlens as given (the padding-free path of DataCollatorWithFlattening).
- elsewhere (CPU; a GPU without flash-attn): SPANS, registered here in transformers'
  AttentionInterface: PyTorch SDPA run causally on each record's span of the row, so masked
  scores are never computed. Its mask function (AttentionMaskInterface) builds no mask for a
  flat row and defers to SDPA's for anything else (generation with a padding mask, prefix
  tuning's key/value cache), where the same function then runs plain SDPA.

Why spans and not FlexAttention on CPU: measured on this project's CPU (shared 2-core AMD EPYC,
torch 2.13; `python -m bench.attention`: one row, the demo model's 8/4 heads x 32, one thread,
CPU time), FlexAttention has no backward on CPU, eager or compiled ("FlexAttention does not
support backward on CPU"), so it cannot train there. SDPA per span (similar lengths batched)
took 5.9 / 26.5 / 63 ms forward + backward for rows of 512 / 2048 / 4096 tokens of log-normal
records, the dense 4-D mask 11.4 / 168 / 786 ms: 12x at 4096.

`auto` picks the varlen path when packing applies, else SDPA (one record per row: nothing to
skip), and says which and why. `sdpa` and `eager` keep the dense block-diagonal 4-D mask
(engine.data.batching.block_causal_mask), the reference the varlen path is tested against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: our registered name: SDPA run per record span of a flat packed row
SPANS = "ftstudio_sdpa_spans"
#: transformers' flash kernels that take cu_seqlens (varlen) as they are
FLASH = ("flash_attention_3", "flash_attention_2")
#: what model.attn_implementation may say (engine/config.py)
CHOICES = ("auto", "sdpa", "eager", "varlen")


def is_varlen(name: str) -> bool:
    """True when a model loaded with this attn_implementation takes flat packed batches."""
    return name == SPANS or name in FLASH


def flash_available(device: torch.device) -> str | None:
    """The flash kernel transformers can use on `device` ("flash_attention_3"/"_2"), or None."""
    if device.type != "cuda":
        return None
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if is_flash_attn_3_available():
        return "flash_attention_3"
    return "flash_attention_2" if is_flash_attn_2_available() else None


def choose_attention(requested: str, device: torch.device | str, packing: bool,
                     flash: str | None | bool = True) -> tuple[str, str]:
    """(attn_implementation to load the model with, a log line saying which and why).

    flash: the flash kernel available (a name, or None); True (default) looks it up."""
    device = torch.device(device)
    if flash is True:
        flash = flash_available(device)
    if requested in ("sdpa", "eager"):
        how = ("packed rows under a dense block-diagonal L x L mask" if packing else
               "one record per row")
        return requested, f"attention: {requested} (asked for; {how})"
    if requested == "auto" and not packing:
        return "sdpa", "attention: sdpa (auto: batches are not packed, nothing to skip)"
    if requested not in ("auto", "varlen"):
        raise ValueError(f"model.attn_implementation: {requested!r} is not one of "
                         f"{', '.join(CHOICES)}")
    if flash:
        return flash, (f"attention: {flash} varlen ({requested}: {device.type} with "
                       f"{flash.replace('_attention_', '-attn ')}; packed records as one flat "
                       "row with cu_seqlens, no mask)")
    where = ("CPU: FlexAttention has no backward there, and SDPA per span measured 12x "
             "faster than the dense mask at 4096 (bench/attention.py)" if device.type == "cpu" else
             f"{device.type} without flash-attn installed")
    return SPANS, (f"attention: SDPA per record span ({requested}: {where}; packed records as "
                   "one flat row with cu_seqlens, no L x L mask)")


# --------------------------------------------------------------------------- the kernel


def record_spans(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each record in the flat row from cu_seqlens [0, n1, n1+n2, ...]."""
    bounds = cu_seqlens.tolist()
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def spans_from_positions(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """Record spans of one row ([T]) whose positions restart at 0 for each record."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [position_ids.shape[-1]]
    return list(zip(starts, ends))


def spans_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs: Any):
    """An AttentionInterface function: query [B, H, T, D], key/value [B, Hkv, T, D] ->
    ([B, T, H, D], None), causal within each record span and nothing across.

    Spans come from cu_seq_lens_q (collate_flat: one flat row), else from position_ids
    restarting at 0 in each row. With a padding mask or a key/value cache it is plain SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    positions = kwargs.get("position_ids")
    flat = attention_mask is None and query.shape[2] == key.shape[2] and query.shape[2] > 1
    if not flat or (cu is None and positions is None) or (cu is not None and query.shape[0] > 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("varlen attention does not apply attention logit soft-capping; set "
                         "model.attn_implementation: eager for this model")
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    dropout = dropout if module.training else 0.0
    rows = []
    for b in range(query.shape[0]):
        spans = (record_spans(cu) if cu is not None else
                 spans_from_positions(positions[b if positions.shape[0] > 1 else 0]))
        rows.append(_row_spans(query[b:b + 1], key[b:b + 1], value[b:b + 1], spans, scaling,
                               dropout, window))
    return (torch.cat(rows) if len(rows) > 1 else rows[0]), None


def _row_spans(query, key, value, spans, scaling, dropout, window) -> torch.Tensor:
    """SDPA over the record spans of one row (query [1, H, T, D]) -> [1, T, H, D], causal
    (and within `window`) inside each span.

    Spans of similar length (within BUCKET of the longest) run as one batched SDPA call:
    each is right-padded to the longest of its bucket, which the causal mask makes exact (a
    real query sees only keys at or before it, all real); padded queries are dropped. So a
    row of a hundred records costs a few calls, not a hundred. One gather lays the buckets
    out and one gather puts the outputs back in token order (each a single scatter in
    backward)."""
    gqa = query.shape[1] != key.shape[1]
    buckets = length_buckets(spans)
    gather, real, sizes, at = [], [], [], 0
    for bucket in buckets:
        width = bucket[0][1] - bucket[0][0]
        for s, e in bucket:
            gather.extend(s + min(i, e - s - 1) for i in range(width))
            real.append((s, at, e - s))
            at += width
        sizes.append(len(bucket) * width)
    where = torch.empty(query.shape[2], dtype=torch.long)
    for s, p, n in real:
        where[s:s + n] = torch.arange(p, p + n)
    gather_at = torch.tensor(gather, device=query.device)
    # [1, H, T, D] -> [T, H, D] (the projections' own layout) -> buckets of [G, H, width, D]
    parts = [x[0].transpose(0, 1).index_select(0, gather_at).split(sizes)
             for x in (query, key, value)]
    outs = []
    for bucket, q, k, v in zip(buckets, *parts):
        width = bucket[0][1] - bucket[0][0]
        q, k, v = (x.unflatten(0, (len(bucket), width)).transpose(1, 2) for x in (q, k, v))
        mask, causal = None, True
        if window and width > window:   # causal and at most `window` back
            i = torch.arange(width, device=q.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            causal = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                             scale=scaling, is_causal=causal, enable_gqa=gqa)
        outs.append(out.transpose(1, 2).flatten(0, 1))           # [G * width, H, D]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.index_select(0, where.to(query.device))[None]   # [1, T, H, D], token order


#: spans in one batched SDPA call are at least this share of its longest
BUCKET = 0.8


def length_buckets(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Spans grouped longest first, each group's shortest at least BUCKET of its longest."""
    buckets: list[list[tuple[int, int]]] = []
    for span in sorted(spans, key=lambda se: se[0] - se[1]):
        n = span[1] - span[0]
        if buckets and n >= BUCKET * (buckets[-1][0][1] - buckets[-1][0][0]):
            buckets[-1].append(span)
        else:
            buckets.append([span])
    return buckets


def spans_mask(**kwargs: Any):
    """An AttentionMaskInterface function: no mask for a flat row (no padding mask given; the
    spans isolate the records), SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(**kwargs)


def register() -> None:
    """Make SPANS a valid attn_implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SPANS, spans_attention)
    AttentionMaskInterface.register(SPANS, spans_mask)


register()

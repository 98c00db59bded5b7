"""Attention kernels for one packed row, forward + backward: what engine/models/attention.py chose from.

Run as: python -m bench.attention [--lengths 512,2048,4096] [--threads 1] [--repeats 4]

One row of L tokens holds records of log-normal length (median 70, sigma 0.9, like
bench/dataset.py's), in the demo model's attention shape (8 query heads, 4 key/value heads,
head size 32), float32, on this process's device (CPU unless CUDA is there). Timed: the
forward and backward of

    dense     SDPA under the B x 1 x L x L block-diagonal float mask (model.attn_implementation
              sdpa with packing; the mask is built inside, as collation does)
    spans     engine.models.attention.spans_attention: SDPA per record span, similar lengths batched
    flex      FlexAttention with a document block mask, eager and torch.compile'd; on CPU it
              has no backward, and the table says so

Reported: the fastest of --repeats runs, in CPU time of this thread on CPU (steadier than wall
time on a shared machine; with --threads 1 it is all the work), wall time on a GPU.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM = 8, 4, 32


def record_lengths(total: int, seed: int = 0) -> list[int]:
    """Log-normal record lengths filling exactly `total` tokens."""
    rng = random.Random(seed)
    out: list[int] = []
    while sum(out) < total:
        n = max(4, round(rng.lognormvariate(math.log(70), 0.9)))
        out.append(min(n, total - sum(out)))
    return out


def kernels(lengths: list[int], device: torch.device) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from engine.models.attention import spans_attention

    total = sum(lengths)
    segment = torch.repeat_interleave(torch.arange(len(lengths)),
                                      torch.tensor(lengths)).to(device)[None]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)

    def dense(q, k, v):
        causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
        allowed = (segment[:, :, None] == segment[:, None, :]) & causal
        mask = torch.zeros(allowed.shape, device=device).masked_fill_(
            ~allowed, torch.finfo(torch.float32).min)[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    class Module(torch.nn.Module):
        sliding_window = None

    def spans(q, k, v):
        return spans_attention(Module(), q, k, v, None, cu_seq_lens_q=cu)[0]

    def document(b, h, qi, ki):
        return (segment[b, qi] == segment[b, ki]) & (qi >= ki)

    block = create_block_mask(document, 1, None, total, total, device=str(device))
    compiled = torch.compile(flex_attention, dynamic=False)
    return {"dense": dense, "spans": spans,
            "flex (eager)": lambda q, k, v: flex_attention(q, k, v, block_mask=block,
                                                           enable_gqa=True),
            "flex (compiled)": lambda q, k, v: compiled(q, k, v, block_mask=block,
                                                        enable_gqa=True)}


def timed(fn, q, k, v, repeats: int, device: torch.device) -> float:
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    best = math.inf
    for _ in range(repeats + 1):   # the first run warms up (and compiles)
        q.grad = k.grad = v.grad = None
        start = clock()
        fn(q, k, v).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,2048,4096")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"| L | records | dense mask | spans | flex (eager) | flex (compiled) |  ({device}, "
          f"{args.threads} thread(s), ms forward + backward)")
    print("| --- | --- | --- | --- | --- | --- |")
    for total in (int(x) for x in args.lengths.split(",")):
        lengths = record_lengths(total)
        shape = lambda h: torch.randn(1, h, total, HEAD_DIM, device=device, requires_grad=True)
        q, k, v = shape(HEADS), shape(KV_HEADS), shape(KV_HEADS)
        cells = []
        for name, fn in kernels(lengths, device).items():
            try:
                cells.append(f"{timed(fn, q, k, v, args.repeats, device) * 1000:,.1f}")
            except NotImplementedError as e:   # flex on CPU: no backward
                cells.append("no backward" if "backward" in str(e) else type(e).__name__)
        print(f"| {total} | {len(lengths)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

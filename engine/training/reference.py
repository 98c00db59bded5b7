"""DPO's reference log-probabilities computed once before training (train.precompute_reference):
each pair's summed answer log-probs under the reference (the model with its adapter disabled, or
for full fine-tuning the starting model itself), for the train and the eval batches, attached to
them (Batches.reference_logps: [N, 2], chosen then rejected) so every collated batch carries
`ref_logps` and PreferenceLoss runs the model once per step instead of twice. Full fine-tuning
then needs no frozen copy of the model.

The values are cached beside the tokenized data, under $FTSTUDIO_HOME/cache/reference-<key>
.safetensors, keyed by the pairs' tokens and everything that decides the reference: the model
(name, revision, and for a local folder each weight file's name, size and modification time),
model and method settings (dtype, quantization) and the precision. A resumed or repeated run
with the same data and base loads them instead of computing again. Written to a temporary file
and renamed, so concurrent jobs never read half an entry.

Use:
    from engine.training.reference import precompute
    precompute(cfg, loss, [train_batches, eval_batches], log=print, main_first=acc.main_process_first)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

#: bump when the computed values change for the same inputs
REFERENCE_VERSION = 1
ROWS = 16          # pairs scored per forward pass (sorted by length, so padding stays small)


def model_fingerprint(cfg) -> dict[str, Any]:
    """What decides the reference model's outputs besides the data."""
    name = str(cfg.model.name)
    files = []
    folder = Path(name).expanduser()
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")):
            st = f.stat()
            files.append([f.name, st.st_size, st.st_mtime_ns])
    return {"model": dataclasses.asdict(cfg.model), "files": files, "method": cfg.method.kind,
            "bits": cfg.method.quant_bits if cfg.method.kind == "qlora" else None,
            "precision": cfg.train.precision}


def data_digest(dataset) -> str:
    """sha256 of the pairs' token and label columns (offsets included), read from Arrow."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    h = hashlib.sha256()
    for column in ("input_ids", "labels", "rejected_input_ids", "rejected_labels"):
        col = table[column].combine_chunks()
        h.update(column.encode())
        h.update(pc.list_value_length(col).to_numpy(zero_copy_only=False).tobytes())
        h.update(pc.list_flatten(col).to_numpy(zero_copy_only=False).tobytes())
    return h.hexdigest()


def cache_file(cfg, dataset, cache_dir: Path | None = None) -> Path:
    from engine.data.cache import default_cache_dir

    material = {"v": REFERENCE_VERSION, "model": model_fingerprint(cfg),
                "data": data_digest(dataset)}
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir or default_cache_dir()) / f"reference-{key[:32]}.safetensors"


def compute(loss, batches, *, full: bool, device, rows: int = ROWS) -> torch.Tensor:
    """[N, 2] reference log-probs (chosen, rejected) of every pair of `batches`' dataset, with
    the model in eval mode (put back as it was)."""
    from engine.data.batching import collate_pairs

    data = batches.dataset
    n = len(data)
    lengths = batches.lengths
    order = sorted(range(n), key=lambda i: lengths[i])
    out = torch.empty((n, 2), dtype=torch.float32)
    model, was_training = loss.model, loss.model.training
    model.eval()
    try:
        for at in range(0, n, rows):
            chunk = order[at:at + rows]
            got = data[chunk]
            batch = collate_pairs(list(zip(zip(got["input_ids"], got["labels"]),
                                           zip(got["rejected_input_ids"],
                                               got["rejected_labels"]))), batches.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), (contextlib.nullcontext() if full else
                                   model.disable_adapter()):
                logps = loss._logps(model, batch, grad=False)[0].float().cpu()
            b = len(chunk)
            out[chunk, 0], out[chunk, 1] = logps[:b], logps[b:]
    finally:
        model.train(was_training)
    return out


def precompute(cfg, loss, batch_sets: list, *, log: Callable[[str], None] = print,
               main_first: Callable[[], Any] = contextlib.nullcontext, device=None,
               cache_dir: Path | None = None) -> list[bool]:
    """Attach the reference log-probs to each Batches of `batch_sets` (None entries skipped),
    from the cache or computed (by the main process first, the others then read its entry);
    returns, per set, whether it came from the cache."""
    from safetensors.torch import load_file, save_file

    full = cfg.method.kind == "full"
    device = device or next(loss.model.parameters()).device
    hits = []
    for batches in batch_sets:
        if batches is None:
            continue
        path = cache_file(cfg, batches.dataset, cache_dir)
        with main_first():
            hit = path.is_file()
            if hit:
                try:
                    values = load_file(str(path))["logps"]
                    hit = values.shape == (len(batches.dataset), 2)
                except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
                    log(f"reference: cache entry {path.name} is unreadable ({exc}); "
                        "computing again")
                    hit = False
            if not hit:
                started = time.perf_counter()
                values = compute(loss, batches, full=full, device=device)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                save_file({"logps": values.contiguous()}, str(tmp))
                os.replace(tmp, path)
                log(f"reference: computed the log-probs of {len(values)} pairs once in "
                    f"{time.perf_counter() - started:.1f}s -> {path.name}")
            else:
                log(f"reference: {len(values)} pairs' log-probs from the cache ({path.name})")
        batches.reference_logps = values
        hits.append(hit)
    return hits

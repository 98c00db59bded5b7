"""Structured pruning: a smaller model folder made from a bigger one, by dropping whole
transformer layers or narrowing every MLP, measured on a calibration sample of the user's data.

Run as: ftstudio prune SOURCE --drop-layers N | --param-budget X [--by layers|mlp] [--data FILE]
Use from Python:
    from engine.models.prune import prune
    result = prune("studio-data/models/smollm2", drop_layers=8, data="my.jsonl", log=print)
    result.folder        # FTSTUDIO_HOME/models/<name>: safetensors, tokenizer, template, card
    result.removed_layers, result.distances, result.params_before, result.params_after

Layers (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): for a block
of n consecutive layers starting at layer l, the angular distance between the hidden state that
enters layer l and the one that leaves layer l + n - 1, d = arccos(cos(x_l, x_l+n)) / π, at each
calibration sequence's last token (as in the paper), averaged over the sequences. The block with
the smallest distance changes the representation least, and is removed. A parameter budget
drops the fewest layers that bring the model under it.

MLP width: each MLP neuron's importance is the mean |activation| entering down_proj over the
calibration tokens times the norm of its down_proj column (what it contributes to the residual
stream); every layer keeps its `width` most important neurons (the same width in every layer,
since config.json holds one intermediate_size). A parameter budget picks the widest width under
it (a multiple of 8 when the MLP is at least 64 wide).

The result is a normal from_pretrained folder (safetensors in the source's dtype, its tokenizer
and chat template, generation config) with a README card saying what was removed and what was
measured, and ftstudio-pruned.json, under FTSTUDIO_HOME/models where the studio lists it as a
base model. Architectures with model.model.layers and gate/up/down (or up/down) MLPs are
supported: Llama, Mistral, Qwen2/3, SmolLM, Gemma; others are refused with a PruneError.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

Log = Callable[[str], None]
#: calibration sequences and their longest length, by default
CALIBRATION_RECORDS = 64
CALIBRATION_MAX_LEN = 512
PRUNED_FILE = "ftstudio-pruned.json"
#: calibration data when none is given: the bundled alpaca example
BUNDLED = Path(__file__).resolve().parents[2] / "static" / "examples" / "alpaca.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PruneError(ValueError):
    """A pruning that cannot be done; the message says why and what to do."""


@dataclass
class PruneResult:
    folder: Path
    source: str
    by: str                                  # layers | mlp
    layers_before: int
    layers_after: int
    removed_layers: list[int] = field(default_factory=list)
    #: layers: the angular distance of each block of len(removed_layers) layers, by its start
    distances: list[float] = field(default_factory=list)
    mlp_width: tuple[int, int] | None = None  # (before, after)
    params_before: int = 0
    params_after: int = 0
    bytes_after: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["folder"] = str(self.folder)
        return out


# --------------------------------------------------------------------------- the measurements


def decoder_layers(model) -> torch.nn.ModuleList:
    """model.model.layers, or a PruneError naming what this architecture has instead."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise PruneError(f"{type(model).__name__} keeps no decoder layers at model.model.layers; "
                         "pruning supports Llama-style models (Llama, Mistral, Qwen, SmolLM, "
                         "Gemma)")
    return layers


def _mlp_parts(layer) -> tuple[list[torch.nn.Linear], torch.nn.Linear]:
    """(the MLP's input projections: gate and up, or up alone; its down projection)."""
    mlp = getattr(layer, "mlp", None)
    down = getattr(mlp, "down_proj", None)
    ins = [getattr(mlp, n) for n in ("gate_proj", "up_proj") if hasattr(mlp, n)]
    if not isinstance(down, torch.nn.Linear) or not ins:
        raise PruneError(f"{type(mlp).__name__} has no up_proj/down_proj linear layers; MLP "
                         "pruning supports Llama-style MLPs; drop layers instead (--drop-layers)")
    return ins, down


@torch.no_grad()
def block_distances(model, batches: list[dict[str, torch.Tensor]], n: int) -> list[float]:
    """[L - n + 1] the mean angular distance (0..1) between the hidden state entering layer l
    and the one leaving layer l + n - 1, at each sequence's last real token."""
    layers = decoder_layers(model)
    count = len(layers)
    states: list[list[torch.Tensor]] = [[] for _ in range(count + 1)]
    last: dict[str, torch.Tensor] = {}

    def hook(index):
        def take(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            rows = torch.arange(x.shape[0])
            if index == 0:
                states[0].append(x[rows, last["at"]].float())
            states[index + 1].append(y[rows, last["at"]].float())
        return take

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            last["at"] = batch["attention_mask"].sum(-1) - 1
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    x = [torch.cat(s) for s in states]
    out = []
    for start in range(count - n + 1):
        cos = torch.nn.functional.cosine_similarity(x[start], x[start + n], dim=-1)
        out.append(float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()))
    return out


@torch.no_grad()
def mlp_importance(model, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Per layer, [intermediate] each neuron's mean |input to down_proj| over the real tokens
    times the norm of its down_proj column."""
    layers = decoder_layers(model)
    sums = [None] * len(layers)
    tokens = {"mask": None, "n": 0}

    def hook(index):
        def take(module, args):
            act = args[0].float().abs()
            mask = tokens["mask"].to(act.dtype)[..., None]
            part = (act * mask).sum(dim=(0, 1))
            sums[index] = part if sums[index] is None else sums[index] + part
        return take

    handles = [_mlp_parts(layer)[1].register_forward_pre_hook(hook(i))
               for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            tokens["mask"] = batch["attention_mask"]
            tokens["n"] += int(batch["attention_mask"].sum())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [s / max(tokens["n"], 1) * _mlp_parts(layer)[1].weight.float().norm(dim=0)
            for s, layer in zip(sums, layers)]


# --------------------------------------------------------------------------- the surgery


def remove_layers(model, drop: list[int]) -> None:
    """Remove the decoder layers `drop` (indices) in place, renumbering the rest."""
    layers = decoder_layers(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config
    config.num_hidden_layers = len(keep)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) == len(layers):
        config.layer_types = [types[i] for i in keep]


def narrow_mlps(model, width: int, importance: list[torch.Tensor]) -> None:
    """Keep the `width` most important neurons (in their order) of every layer's MLP."""
    for layer, score in zip(decoder_layers(model), importance):
        keep = score.topk(width).indices.sort().values
        ins, down = _mlp_parts(layer)
        for lin in ins:
            _slice_linear(lin, keep, rows=True)
        _slice_linear(down, keep, rows=False)
    model.config.intermediate_size = width


def _slice_linear(lin: torch.nn.Linear, keep: torch.Tensor, rows: bool) -> None:
    w = lin.weight.data
    lin.weight = torch.nn.Parameter((w[keep] if rows else w[:, keep]).clone())
    if rows:
        lin.out_features = len(keep)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias.data[keep].clone())
    else:
        lin.in_features = len(keep)


# --------------------------------------------------------------------------- targets


def parse_budget(text: str | float | int, total: int) -> int:
    """A parameter budget: a count (135000000, 100M, 1.5B, 800k) or a share of the model's
    parameters (0.75, 75%)."""
    raw = str(text).strip().lower().replace("_", "").replace(",", "")
    try:
        if raw.endswith("%"):
            return int(total * float(raw[:-1]) / 100)
        scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(raw[-1:], 1)
        value = float(raw[:-1] if scale != 1 else raw)
    except ValueError:
        raise PruneError(f"parameter budget {text!r}: give a count (100M, 1.5B, 800k) or a share "
                         "of the model (0.75 or 75%)") from None
    if scale == 1 and 0 < value <= 1:
        return int(total * value)
    if value <= 0:
        raise PruneError(f"parameter budget {text!r} must be positive")
    return int(value * scale)


def layers_for_budget(total: int, per_layer: int, count: int, budget: int) -> int:
    n = max(0, math.ceil((total - budget) / max(per_layer, 1)))
    if n >= count:
        raise PruneError(f"a budget of {budget:,} parameters leaves no decoder layer (the model "
                         f"has {total:,} in {count} layers of {per_layer:,}); give a larger "
                         "budget")
    return n


def width_for_budget(total: int, width: int, per_neuron: int, budget: int) -> int:
    cut = max(0, math.ceil((total - budget) / max(per_neuron, 1)))
    new = width - cut
    if new >= 64:
        new = new // 8 * 8
    if new < 1:
        raise PruneError(f"a budget of {budget:,} parameters cannot be met by narrowing the MLPs "
                         f"alone (each neuron is {per_neuron:,} parameters over all layers); "
                         "drop layers instead, or give a larger budget")
    return new


# --------------------------------------------------------------------------- calibration


def calibration_batches(source: str, tokenizer, data: str | None, *, records: int,
                        max_seq_len: int, log: Log, rows: int = 8
                        ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The first `records` records of `data` (any training format; the bundled alpaca example
    when None), tokenized as training would (chat template), as padded batches of `rows`."""
    from engine.config import TrainConfig
    from engine.data import collate_padded, prepare

    cfg = TrainConfig()
    cfg.model.name = source
    cfg.data.train = str(data or BUNDLED)
    cfg.data.val_fraction = 0.0
    cfg.data.max_seq_len = max_seq_len
    cfg.data.train_on_prompt = True
    prepared = prepare(cfg, tokenizer, log=lambda line: None)
    ids = prepared.train["input_ids"][:records]
    if not ids:
        raise PruneError(f"{cfg.data.train} has no records to calibrate on")
    batches = []
    for at in range(0, len(ids), rows):
        chunk = ids[at:at + rows]
        batch = collate_padded([(x, x) for x in chunk], tokenizer.pad_token_id or 0)
        batches.append({"input_ids": batch["input_ids"],
                        "attention_mask": batch["attention_mask"]})
    info = {"data": cfg.data.train, "bundled": data is None, "records": len(ids),
            "tokens": sum(len(x) for x in ids), "max_seq_len": max_seq_len}
    log(f"prune: calibrating on {len(ids)} records ({info['tokens']:,} tokens) of "
        f"{cfg.data.train}{' (the bundled example: pass --data for your own)' if data is None else ''}")
    return batches, info


# --------------------------------------------------------------------------- the whole


def prune(source: str, *, drop_layers: int | None = None, param_budget: str | float | None = None,
          by: str = "layers", data: str | None = None, name: str | None = None,
          out: str | Path | None = None, records: int = CALIBRATION_RECORDS,
          max_seq_len: int = CALIBRATION_MAX_LEN, overwrite: bool = False,
          log: Log = print) -> PruneResult:
    """Prune the model `source` (a local folder or a hub id) to `drop_layers` fewer layers or
    under `param_budget` parameters (by layers or by MLP width), measured on `data`, into
    `out` (default FTSTUDIO_HOME/models/NAME, NAME default '<source>-pruned')."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models.catalog import models_dir

    started = time.monotonic()
    if (drop_layers is None) == (param_budget is None):
        raise PruneError("give exactly one target: --drop-layers N or --param-budget X")
    if by not in ("layers", "mlp"):
        raise PruneError(f"--by {by!r}: prune by layers or mlp")
    if drop_layers is not None and by != "layers":
        raise PruneError("--drop-layers drops layers; to narrow the MLPs give --param-budget")
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.rstrip("/")).name)[:50] \
        + "-pruned"
    if not _NAME.fullmatch(name):
        raise PruneError(f"model name {name!r} cannot be a folder name: use up to 64 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    target = Path(out) if out is not None else models_dir() / name
    if target.exists() and not overwrite:
        raise PruneError(f"{target} already exists; choose another name (--name) or replace it "
                         "(--force)")
    log(f"prune: loading {source} in float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                     use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise PruneError(f"cannot load {source}: {exc}") from None
    saved_dtype = _source_dtype(source)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layers = decoder_layers(model)
    count = len(layers)
    total = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in layers[0].parameters())
    batches, calibration = calibration_batches(source, tokenizer, data, records=records,
                                               max_seq_len=max_seq_len, log=log)
    result = PruneResult(folder=target, source=source, by=by, layers_before=count,
                         layers_after=count, params_before=total, calibration=calibration)
    if by == "layers":
        n = drop_layers if drop_layers is not None else layers_for_budget(
            total, per_layer, count, parse_budget(param_budget, total))
        if not 1 <= n < count:
            raise PruneError(f"--drop-layers {n}: the model has {count} layers; drop 1 to "
                             f"{count - 1}")
        distances = block_distances(model, batches, n)
        start = min(range(len(distances)), key=distances.__getitem__)
        drop = list(range(start, start + n))
        log(f"prune: angular distance of each block of {n} layers, by first layer: " +
            ", ".join(f"{i}:{d:.3f}" for i, d in enumerate(distances)))
        log(f"prune: dropping layers {drop[0]}-{drop[-1]} (distance {distances[start]:.3f}, "
            f"the least change)")
        remove_layers(model, drop)
        result.removed_layers, result.distances = drop, distances
        result.layers_after = count - n
    else:
        ins, down = _mlp_parts(layers[0])
        width = down.in_features
        per_neuron = count * (len(ins) * ins[0].in_features + down.out_features)
        new = width_for_budget(total, width, per_neuron, parse_budget(param_budget, total))
        if new >= width:
            raise PruneError(f"the model ({total:,} parameters) is already within the budget")
        importance = mlp_importance(model, batches)
        log(f"prune: narrowing every MLP from {width} to {new} neurons by importance")
        narrow_mlps(model, new, importance)
        result.mlp_width = (width, new)
    result.params_after = sum(p.numel() for p in model.parameters())
    log(f"prune: {total:,} -> {result.params_after:,} parameters "
        f"({result.params_after / total:.1%})")
    _save(model, tokenizer, target, saved_dtype, result, overwrite, log)
    result.bytes_after = sum(f.stat().st_size for f in target.glob("*.safetensors"))
    result.seconds = round(time.monotonic() - started, 1)
    (target / PRUNED_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n",
                                      encoding="utf-8")
    log(f"prune: {target} ready in {result.seconds:.1f}s (use it as model.name)")
    return result


def _source_dtype(source: str) -> torch.dtype:
    from engine.models.presets import read_config

    config = read_config(source) or {}
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return getattr(torch, name, torch.float32)


def _save(model, tokenizer, target: Path, dtype: torch.dtype, result: PruneResult,
          overwrite: bool, log: Log) -> None:
    """The folder, written beside the target and moved into place when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".prune-{target.name}-", dir=target.parent))
    try:
        model.to(dtype)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card(result, dtype), encoding="utf-8")
        if target.exists() and overwrite:
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prune: saved safetensors ({str(dtype).removeprefix('torch.')}), tokenizer and card")


def card(r: PruneResult, dtype: torch.dtype | None = None) -> str:
    """The README of a pruned folder: what was removed, what was measured."""
    cal = r.calibration
    weights = f" Weights: safetensors, {str(dtype).removeprefix('torch.')}." if dtype else ""
    lines = [f"# {r.folder.name}", "",
             f"Pruned by ftstudio from `{r.source}`.{weights}", "",
             "| | before | after |", "| --- | --- | --- |",
             f"| parameters | {r.params_before:,} | {r.params_after:,} "
             f"({r.params_after / max(r.params_before, 1):.1%}) |",
             f"| decoder layers | {r.layers_before} | {r.layers_after} |"]
    if r.mlp_width:
        lines.append(f"| MLP width | {r.mlp_width[0]} | {r.mlp_width[1]} |")
    lines += ["", "## What was removed", ""]
    if r.by == "layers":
        d = r.distances[r.removed_layers[0]] if r.distances else float("nan")
        lines += [f"Layers {r.removed_layers[0]} to {r.removed_layers[-1]} (of 0 to "
                  f"{r.layers_before - 1}): the block of {len(r.removed_layers)} consecutive "
                  "layers whose output differs least from its input (angular distance "
                  f"{d:.4f}, Gromov et al. 2024), measured at each calibration sequence's last "
                  "token.", "",
                  "Angular distance of each block, by first layer: " +
                  ", ".join(f"{i}: {x:.4f}" for i, x in enumerate(r.distances)) + "."]
    else:
        lines += [f"In every layer the MLP keeps its {r.mlp_width[1]} most important of "
                  f"{r.mlp_width[0]} neurons (mean |activation| into down_proj on the "
                  "calibration tokens times the norm of the neuron's down_proj column)."]
    lines += ["", "## Calibration", "",
              f"{cal.get('records')} records ({cal.get('tokens', 0):,} tokens, at most "
              f"{cal.get('max_seq_len')} each) of `{cal.get('data')}`"
              + (" (the bundled example, not the user's data)" if cal.get("bundled") else "")
              + ".", "",
              "A pruned model loses quality until it is healed: fine-tune it, or distill it "
              "from the original (`train.objective: distill`, `train.teacher` the original).",
              ""]
    return "\n".join(lines)

"""What a run leaves on disk: resumable checkpoints, metrics.jsonl and run.json.

Use from Python:
    from engine.training.checkpoint import TrainState, save_checkpoint, load_checkpoint, find_checkpoint
    folder = save_checkpoint(out / "checkpoints", model, optimizer, scheduler, state, rng)
    state = load_checkpoint(find_checkpoint("latest", out), model, optimizer, scheduler)

A checkpoint is output_dir/checkpoints/step-N/ holding:
    trainable.safetensors   the trainable weights only (the frozen base comes from model.name)
    optimizer.pt            optimizer state (torch.save; loaded with weights_only=True)
    sharded/                instead of those two under FSDP: every process's shards of both
                            (torch.distributed.checkpoint; engine/training/parallel.py)
    scheduler.pt            learning-rate scheduler state (same)
    rng-rank{R}.json        RNG states of process R: torch, python random, numpy, cuda (lists)
    state.json              TrainState: step, data position, early-stopping counters
It is written into step-N.tmp and renamed, so a folder named step-N is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.config import ConfigError, Problem, TrainConfig
from engine.training.reporter import Reporter

STEP_PREFIX = "step-"


@dataclass
class TrainState:
    """Where training is: enough to continue exactly (with the saved weights and RNG)."""

    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # epoch of the next micro-batch
    batch_index: int = 0           # index of the next micro-batch in that epoch's plan
    micro_steps: int = 0           # micro-batches done in total
    trained_tokens: int = 0        # tokens that carried loss so far (all processes)
    seen_tokens: int = 0           # real (non-padding) tokens computed so far, prompts included
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    best_metric: float | None = None   # of a generation early_stopping_metric (higher: better)
    last_gen_step: int = -1            # step of the last generation evaluation
    best_step: int = -1                # step of the best early_stopping_metric so far

    def advance(self, epoch: int, batch_index: int, micro_steps: int, tokens: int,
                seen: int = 0) -> None:
        """One optimizer step done; (epoch, batch_index) is the next micro-batch."""
        self.step += 1
        self.epoch, self.batch_index = epoch, batch_index
        self.micro_steps += micro_steps
        self.trained_tokens += tokens
        self.seen_tokens += seen

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG state that training draws from (cheap: taken after every step; turned into
    plain lists only when a checkpoint is written)."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])


def _lists(value: Any) -> Any:
    """RNG states as JSON: tuples, arrays and tensors become lists."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- weights


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (shared tensors appear once)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    missing, unknown = names - tensors.keys(), tensors.keys() - names
    if missing or unknown:
        raise ValueError(f"the checkpoint does not fit this model: {len(missing)} trainable "
                         f"weights missing (e.g. {sorted(missing)[:2]}), {len(unknown)} unknown "
                         f"(e.g. {sorted(unknown)[:2]}); was it saved with another model.name "
                         "or method?")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(root: Path, model, optimizer, scheduler, state: TrainState,
                    rng: dict[str, Any], *, rank: int = 0, barrier=lambda: None,
                    sharded: bool = False) -> Path:
    """Write checkpoints/step-N: rank 0 writes everything, then every other rank its RNG file.
    `barrier` is the processes' wait_for_everyone (a no-op in one process or on interrupt).
    sharded (FSDP): every rank first writes its shards of the weights and optimizer state."""
    final = Path(root) / f"{STEP_PREFIX}{state.step}"
    tmp = final.with_name(final.name + ".tmp")
    if sharded:
        from engine.training.parallel import SHARDED, save_sharded

        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        save_sharded(tmp / SHARDED, model, optimizer)   # collective: every rank writes
        barrier()
    if rank == 0:
        if not sharded:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(trainable_state_dict(model), str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        _write_json(tmp / "rng-rank0.json", _lists(rng))
        _write_json(tmp / "state.json", {**state.to_dict(), "saved_at": stamp(time.time())})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    barrier()
    if rank != 0 and final.is_dir():
        _write_json(final / f"rng-rank{rank}.json", _lists(rng))
    barrier()
    return final


def load_checkpoint(folder: Path, model, optimizer, scheduler, *, rank: int = 0
                    ) -> tuple[TrainState, dict[str, Any] | None]:
    """Load weights, optimizer and scheduler; return the TrainState and this rank's RNG
    states (None when the checkpoint has none for this rank). Restore the RNG last, just
    before training continues, with restore_rng."""
    folder = Path(folder)
    from engine.training.parallel import SHARDED, load_sharded

    if (folder / SHARDED).is_dir():   # written under FSDP: loads on any number of processes
        load_sharded(folder / SHARDED, model, optimizer)
    else:
        load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True,
                                             map_location="cpu"))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    state = TrainState.from_dict(json.loads((folder / "state.json").read_text()))
    rng_file = folder / f"rng-rank{rank}.json"
    rng = json.loads(rng_file.read_text()) if rng_file.is_file() else None
    return state, rng


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under output_dir/checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / "state.json").is_file()
             and p.name.removeprefix(STEP_PREFIX).isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(STEP_PREFIX)))


def latest_step(output_dir: str | Path) -> int | None:
    """The step of the newest complete checkpoint under output_dir/checkpoints, or None."""
    found = list_checkpoints(output_dir)
    return int(found[-1].name.removeprefix(STEP_PREFIX)) if found else None


def find_checkpoint(resume_from: str, output_dir: str | Path | None) -> Path:
    """The folder train.resume_from names: a checkpoint folder, or latest under output_dir."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir) if output_dir else []
        if not found:
            raise ConfigError([Problem("train.resume_from", f"latest: there is no checkpoint "
                                       f"under {output_dir}/checkpoints yet; start without "
                                       "train.resume_from")])
        return found[-1]
    folder = Path(resume_from)
    if not (folder / "state.json").is_file():
        raise ConfigError([Problem("train.resume_from", f"{resume_from} is not a checkpoint "
                                   "folder (no state.json); use output_dir/checkpoints/step-N "
                                   "or latest")])
    return folder


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted folders."""
    old = list_checkpoints(output_dir)[:-keep] if keep > 0 else []
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


# --------------------------------------------------------------------------- run files


class RunFiles:
    """metrics.jsonl and run.json in output_dir; the main process writes, all report."""

    def __init__(self, out: Path, main: bool, reporter: Reporter, resumed_at: int | None):
        """resumed_at: the checkpoint's step (later records are dropped), or None for a fresh
        run, which first clears metrics and checkpoints an earlier run left in `out`."""
        self.out, self.main, self.reporter = out, main, reporter
        self.record: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.last_epoch = 0.0
        if not main:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None:
            truncate_metrics(out / "metrics.jsonl", resumed_at)
            return
        (out / "metrics.jsonl").unlink(missing_ok=True)
        old = prune_checkpoints(out, 0)
        if old:
            reporter.on_log(f"output: removed {len(old)} checkpoint(s) of an earlier run in {out} "
                            "(resume one with train.resume_from instead)")

    def metrics(self, record: dict[str, Any]) -> None:
        self.last.update({k: v for k, v in record.items() if k not in ("epoch", "total_steps")})
        self.last_epoch = record.get("epoch", self.last_epoch)
        if self.main:
            append_metrics(self.out / "metrics.jsonl", record)
            self.reporter.on_metrics(record)

    def final_metrics(self) -> dict[str, Any]:
        return dict(self.last)

    def update(self, **fields: Any) -> None:
        self.record.update(fields)
        if self.main:
            write_run_json(self.out / "run.json", self.record)


def run_facts(cfg: TrainConfig, info: dict[str, Any], report: dict[str, Any]
              ) -> dict[str, Any]:
    """What run.json records about the inputs: config, data hashes, versions, seed, model."""
    from engine.data import file_sha256

    files = [p for p in (cfg.data.train, cfg.data.validation) if p]
    return {"config": cfg.to_dict(), "data_sha256": {p: file_sha256(p) for p in files},
            "versions": package_versions(), "seed": cfg.train.seed, "model": info,
            "trainable_params": info["trainable_params"], "total_params": info["total_params"],
            "data_report": report}


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the records of metrics.jsonl up to last_step (resuming repeats nothing); returns
    how many were dropped."""
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= last_step]
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    return len(lines) - len(kept)


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def write_run_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")

"""Several processes for one run: DDP, or FSDP2 sharding through accelerate (parallel.*).

Use from Python (engine/training/loop.py does, in this order):
    strategy, why = choose_strategy(cfg, processes=launched_processes())
    accelerator = make_accelerator(cfg, strategy, mixed)   # refuses a silent fallback to DDP
    ...load the model...; model, optimizer = accelerator.prepare(model, optimizer)
    check_sharded(model)                                   # fsdp: every weight a shard, or an error
    keep_quant_state(model)                                # qlora under fsdp
    tensors = gathered_state_dict(model, trainable_only)   # every process calls it (full tensors)
    save_sharded(folder, model, optimizer); load_sharded(folder, model, optimizer)

How a job gets its processes: `launch_command(n, [...])` is the one `accelerate launch` command
line (jobs/tasks.py starts every multi-process job with it). The run itself builds accelerate's
FSDP2 plugin from parallel.* (fully_shard on every transformer layer the model names in
_no_split_modules, then on the whole model), so the same command trains DDP or FSDP.

accelerate shards only on accelerators: where it cannot (on CPU, or one process without a
distributed launch) it quietly prepares the model as DDP or as a plain module. make_accelerator
refuses that when parallel.strategy is fsdp (a ConfigError naming parallel.strategy) instead of
training unsharded under an FSDP label.

QLoRA under FSDP stores its 4-bit weights in the compute dtype (bnb_4bit_quant_storage, as PEFT's
FSDP+QLoRA guide requires: fully_shard shards floating tensors only); engine.models.load asks for
it when the loop passes sharded=True. The combinations PEFT documents as broken are refused at the door
by engine.config's _check_parallel.

Checkpoints under FSDP are torch.distributed.checkpoint folders: every process writes its own
shards of the trainable weights and of the optimizer state (checkpoints/step-N/sharded/), and a
run resumes from them on any number of processes. The adapter (or the full model) is gathered to
full tensors before it is written, so adapter/ and every export are ordinary safetensors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from engine.config import ConfigError, Problem, TrainConfig

#: the `accelerate launch` options every multi-process run is started with (jobs/tasks.py)
LAUNCH = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]
SHARDED = "sharded"   # the torch.distributed.checkpoint folder inside a checkpoint


def launch_command(processes: int, target: list[str], port: int | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... <target>` for `processes` processes on this
    machine; target: what each process runs, e.g. ["-m", "jobs.runner", JOB_ID]. Mixed
    precision and FSDP come from the config inside the run, not from this command."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH,
           "--num_processes", str(processes)]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd + list(target)


# --------------------------------------------------------------------------- the strategy


def launched_processes() -> int:
    """How many processes this run was launched with (WORLD_SIZE, set by `accelerate launch`),
    read before accelerate's state exists (creating it here would fix its layout too early)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def choose_strategy(cfg: TrainConfig, processes: int, estimate_of: Callable | None = None
                    ) -> tuple[str, str]:
    """(none | ddp | fsdp, why) for this run on `processes` processes. auto picks fsdp only
    when the memory estimate says the model does not fit one GPU and sharding over the job's
    processes makes it fit; ddp with several processes otherwise; none in one process."""
    par = cfg.parallel
    if par.strategy == "fsdp":
        return "fsdp", f"parallel.strategy fsdp over {processes} process(es)"
    if processes < 2:
        if par.strategy == "ddp":
            return "none", "one process: ddp has nothing to split"
        return "none", "parallel.strategy auto: one process, nothing to split"
    if par.strategy == "ddp":
        return "ddp", f"parallel.strategy ddp over {processes} processes"
    from engine.models.estimate import estimate_for, plan_for

    try:
        est = (estimate_of or estimate_for)(cfg)
    except Exception as exc:  # noqa: BLE001 - an odd config.json: no estimate, plain ddp
        return "ddp", f"parallel.strategy auto: ddp (no memory estimate: {exc})"
    if est is None:
        return "ddp", ("parallel.strategy auto: ddp (the model's shape is unknown, so the "
                       "estimate cannot say it needs sharding)")
    if est.device.kind != "cuda":
        return "ddp", "parallel.strategy auto: ddp (processes on CPU: nothing to shard for)"
    plan = plan_for(est, processes, cpu_offload=par.cpu_offload,
                    reshard=par.reshard_after_forward)
    if plan.fits_one:
        return "ddp", (f"parallel.strategy auto: ddp (the estimate, {plan.peak_gib('ddp'):.1f} "
                       f"GiB per GPU, fits one {est.device.name})")
    if plan.fits("fsdp"):
        return "fsdp", (f"parallel.strategy auto: fsdp (a whole copy needs "
                        f"{plan.peak_gib('ddp'):.1f} GiB, more than one {est.device.name}; "
                        f"sharded over {processes} GPUs about {plan.peak_gib('fsdp'):.1f} GiB each)")
    return "ddp", (f"parallel.strategy auto: ddp (the estimate, {plan.peak_gib('ddp'):.1f} GiB, "
                   f"does not fit one GPU, and sharding over {processes} does not make it fit "
                   f"either ({plan.peak_gib('fsdp'):.1f} GiB each); set parallel.strategy fsdp "
                   "with parallel.cpu_offload, or more parallel.gpus)")


def fsdp_plugin(cfg: TrainConfig):
    """accelerate's FSDP2 plugin for parallel.*: every transformer layer (the classes the model
    names in _no_split_modules) sharded on its own, then the rest with the root."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    par = cfg.parallel
    # offloaded states in pinned memory where a GPU copies from them (pinning needs CUDA)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if par.cpu_offload \
        else False
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=par.reshard_after_forward,
        cpu_offload=offload, auto_wrap_policy="transformer_based_wrap",
        state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False,
        activation_checkpointing=False)   # train.gradient_checkpointing is the model's own


def make_accelerator(cfg: TrainConfig, strategy: str, mixed_precision: str):
    """The run's Accelerator; with fsdp, one that really shards, or a ConfigError that says why
    accelerate would not (it falls back to DDP on CPU without a word)."""
    from accelerate import Accelerator

    plugin = fsdp_plugin(cfg) if strategy == "fsdp" else None
    # accelerate reads ACCELERATE_USE_FSDP (an FSDP1 plugin of its own when set) and sets it
    # when given a plugin: parallel.strategy decides, and the mark does not outlive the
    # Accelerator's construction. With offload, FSDP_OFFLOAD_PARAMS makes it start NCCL with
    # gloo beside it for the collectives over CPU tensors (clipping offloaded gradients).
    flags = {"ACCELERATE_USE_FSDP": None,
             "FSDP_OFFLOAD_PARAMS": "true" if plugin and cfg.parallel.cpu_offload else None}
    saved = {k: os.environ.pop(k, None) for k in flags}
    os.environ.update({k: v for k, v in flags.items() if v is not None})
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision,
                                  cpu=not torch.cuda.is_available(), fsdp_plugin=plugin)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    if plugin is not None and not accelerator.is_fsdp2:
        layout = accelerator.distributed_type.value
        where = ("it shards only on GPUs; on CPU it falls back to DDP"
                 if layout == "MULTI_CPU" else
                 "one process without a distributed launch runs as a plain module"
                 if accelerator.num_processes == 1 else "this layout cannot be sharded")
        raise ConfigError([Problem("parallel.strategy", (
            f"fsdp was asked for, but accelerate prepared this run as {layout} with "
            f"{accelerator.num_processes} process(es) ({where}); it would train unsharded under "
            "an FSDP label. Run it on GPUs through a worker (it starts every job with `accelerate "
            "launch`), or set parallel.strategy to ddp or auto"))])
    return accelerator


def check_sharded(model) -> str:
    """After accelerator.prepare under fsdp: every parameter must be a DTensor shard; returns
    a line for the log. A model prepared otherwise is a ConfigError (never train unsharded
    under an FSDP label)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    whole = [n for n, p in model.named_parameters() if not isinstance(p, DTensor)]
    if whole:
        raise ConfigError([Problem("parallel.strategy", (
            f"fsdp was asked for, but {len(whole)} of {len(params)} weights were left whole "
            f"(e.g. {whole[0]}); this model cannot be sharded here: use parallel.strategy ddp"))])
    from torch.distributed.fsdp import FSDPModule

    units = [type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)][1:]
    world = params[0].device_mesh.size() if params else 1
    kinds = ", ".join(sorted(set(units))) or "none"
    return (f"parallel: fsdp over {world} process(es): {len(units)} layers ({kinds}) sharded "
            f"one by one, then the rest; weights, gradients and optimizer state split {world} "
            "ways")


def keep_quant_state(model) -> int:
    """QLoRA under FSDP: give each gathered 4-bit weight its quantization state before the
    layer computes. fully_shard hands a bitsandbytes Linear4bit a plain gathered tensor; its
    forward would then wrap that tensor in a new Params4bit (bitsandbytes' own FSDP repair),
    which takes the weight out of FSDP's hands: the second forward computed with stale data
    (measured: logits off by 0.67 on the tiny test model). Returns the layers hooked."""
    hooked = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and hasattr(module, "quant_state"):
            module.register_forward_pre_hook(_attach_quant_state)
            hooked += 1
    return hooked


def _attach_quant_state(module, args) -> None:
    weight = module.weight
    if getattr(weight, "quant_state", None) is None and module.quant_state is not None:
        weight.quant_state = module.quant_state


def is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


# --------------------------------------------------------------------------- weights


def gathered_state_dict(model, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full tensors of the model (trainable_only: its trainable parameters, as an adapter
    holds them), on the CPU of the main process; empty elsewhere. Every process must call it
    (each tensor is gathered from its shards)."""
    from torch.distributed.tensor import DTensor

    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only \
        else None
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if keep is not None and name not in keep:
            continue
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if rank == 0:
            out[name] = full.detach().cpu().clone()
    return out


def _trainable_keys(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def save_sharded(folder: Path, model, optimizer) -> None:
    """The trainable weights and the optimizer state, each process writing its own shards
    (torch.distributed.checkpoint); every process must call it, with the same folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    keys = _trainable_keys(model)
    dcp.save({"model": {k: v for k, v in weights.items() if k in keys}, "optimizer": optim},
             checkpoint_id=str(folder))


def load_sharded(folder: Path, model, optimizer) -> None:
    """Put a save_sharded checkpoint back into the model and optimizer, on any number of
    processes (torch.distributed.checkpoint reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                         set_state_dict)

    weights, optim = get_state_dict(model, optimizer)
    keys = _trainable_keys(model)
    state = {"model": {k: v for k, v in weights.items() if k in keys}, "optimizer": optim}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))

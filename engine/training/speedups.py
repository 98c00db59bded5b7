"""Optional speed-ups: Liger's Triton kernels and torch.compile (train.kernels, train.compile).

Use from Python (engine/models/load.py and engine/training/loop.py do this):
    from engine.training.speedups import use_liger, apply_liger, compile_body
    on, why = use_liger(cfg.train.kernels, device, model_type)   # ConfigError if asked and impossible
    if on:
        apply_liger(base, log)              # before peft wraps the model
    compile_body(model, log)                # with train.compile: the decoder body, in place

- kernels: "auto" uses Liger (fused RMSNorm, RoPE, SwiGLU/GeGLU, and a fused linear
  cross-entropy in engine/training/loss.py) when the run is on a CUDA GPU, the `liger-kernel` package is
  installed (`pip install "ftstudio[gpu]"`) and supports the model type; otherwise it stays off
  and the log says why. "liger" insists: a CPU run or a missing package is a config error with
  the fix. "none" turns it off. Liger's kernels are Triton kernels: they do not run on CPU.
- compile: torch.compile of the decoder body (the model without its lm_head, which
  engine/training/loss.py reroutes), in place, so parameter names, checkpoints and saved adapters are
  unchanged. Off by default: the first steps compile for a while (about 40 s for a 2-layer model
  on CPU, more for real ones), and every new sequence length until the shapes turn dynamic.
  It works on CPU as well (with a C compiler), which is how the tests check it.

Neither changes what is trained: tests compare losses with and without.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Callable

import torch

from engine.config import ConfigError, Problem



def liger_version() -> str | None:
    """The installed liger-kernel version, or None (found without importing it: importing
    pulls in Triton)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        return importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def liger_model_types() -> set[str]:
    """The model types the installed Liger patches (imports it, and so Triton)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def use_liger(kernels: str, device: torch.device | str, model_type: str) -> tuple[bool, str]:
    """(use Liger's kernels?, why, for the log) for train.kernels on this device and model.
    train.kernels=liger where that cannot work raises ConfigError naming the fix."""
    device = torch.device(device)
    if kernels == "none":
        return False, "kernels: off (train.kernels=none)"
    reasons = []
    if device.type != "cuda":
        reasons.append("Liger's Triton kernels need a CUDA GPU and this run is on "
                       f"{device.type}")
    version = liger_version()
    if version is None and device.type == "cuda":     # install advice only where it can help
        reasons.append('liger-kernel is not installed: pip install "ftstudio[gpu]"')
    if not reasons and model_type not in liger_model_types():
        reasons.append(f"Liger {version} has no kernels for model type {model_type!r}")
    if not reasons:
        return True, (f"kernels: Liger {version} (fused RMSNorm, RoPE, MLP activation and "
                      "linear cross-entropy)")
    if kernels == "liger":
        raise ConfigError([Problem("train.kernels", "; ".join(reasons) + ". Use "
                                   "train.kernels=auto to use Liger only where it works.")])
    return False, f"kernels: plain PyTorch - {'; '.join(reasons)}"


def apply_liger(base, log: Callable[[str], None] = print) -> None:
    """Swap Liger's kernels into the loaded model (before peft wraps it). The loss stays
    engine/training/loss.py's: Liger's own loss-in-forward patch is not applied."""
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(base, fused_linear_cross_entropy=False, cross_entropy=False)
    log(f"kernels: Liger kernels applied to {getattr(base.config, 'model_type', '?')}")


def liger_fused_loss(head: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """Liger's fused linear cross-entropy (summed) over a plain nn.Linear lm_head: the logits
    are never materialized. None when the head is anything else (adapted, quantized)."""
    if type(head) is not torch.nn.Linear or not head.weight.is_floating_point():
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def fused(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(head.weight, hidden, targets, head.bias)

    return fused


def decoder_body(model) -> torch.nn.Module | None:
    """The transformer body under the lm_head (LlamaModel in LlamaForCausalLM), through peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    return body if isinstance(body, torch.nn.Module) and body is not base else None


def compile_body(model, log: Callable[[str], None] = print) -> bool:
    """torch.compile the decoder body in place (train.compile). False when there is none."""
    body = decoder_body(model)
    if body is None:
        log("compile: off (no decoder body found under the lm_head to compile)")
        return False
    body.compile()
    log(f"compile: torch.compile on {type(body).__name__}; the first steps (and each new "
        "sequence length until shapes turn dynamic) compile before they run")
    return True

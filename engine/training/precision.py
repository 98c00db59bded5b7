"""The one precision policy: weight dtype, compute dtype and accelerate's mixed-precision mode,
from model.dtype, train.precision, the method and the device. Training (engine.training.loop,
engine.models.load), the memory estimate (engine.models.estimate) and generation (engine.evaluation.generate) all ask
here, so they cannot disagree.

Use from Python:
    from engine.training.precision import resolve, this_device
    p = resolve("auto", "auto", "lora", *this_device())   # Precision(weights, compute, mixed)
    p.weights, p.compute, p.mixed, p.weight_bytes          # "bfloat16", "bfloat16", "bf16", 2

The rules:
    weights  model.dtype when given; auto: float32 on CPU, bfloat16 on GPUs that support it,
             float16 on older GPUs (T4, V100) except for full fine-tuning there, which keeps
             float32 (fp16 weights do not train: updates underflow)
    mixed    train.precision fp32: none; bf16/fp16 as given; auto: none on CPU, bf16 on GPUs
             that support it, else fp16
    compute  the dtype activations (and packed attention masks) are in: mixed's, else weights'
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Precision:
    weights: str           # float32 | bfloat16 | float16
    compute: str
    mixed: str             # accelerate's mixed_precision: no | bf16 | fp16

    @property
    def weight_bytes(self) -> int:
        return SIZES[self.weights]

    @property
    def compute_bytes(self) -> int:
        return SIZES[self.compute]

    def torch_weights(self):
        import torch

        return getattr(torch, self.weights)

    def torch_compute(self):
        import torch

        return getattr(torch, self.compute)


def weight_dtype(model_dtype: str, method: str | None, device: str, bf16: bool) -> str:
    """model.dtype as a dtype name (see the module docstring); method None: inference."""
    if model_dtype != "auto":
        return model_dtype
    if device != "cuda":
        return "float32"
    if bf16:
        return "bfloat16"
    return "float32" if method == "full" else "float16"


def mixed_mode(precision: str, device: str, bf16: bool) -> str:
    """train.precision as accelerate's mixed_precision."""
    if precision == "auto":
        return "no" if device != "cuda" else ("bf16" if bf16 else "fp16")
    return "no" if precision == "fp32" else precision


def resolve(model_dtype: str, precision: str, method: str | None, device: str, bf16: bool
            ) -> Precision:
    weights = weight_dtype(model_dtype, method, device, bf16)
    mixed = mixed_mode(precision, device, bf16)
    compute = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed, weights)
    return Precision(weights, compute, mixed)


def this_device() -> tuple[str, bool]:
    """("cuda" | "cpu", whether the GPU computes in bfloat16) of this process."""
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    return "cpu", False

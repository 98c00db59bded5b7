"""Trainable parameters and peak training memory, by arithmetic on config.json and TrainConfig.

Use from Python:
    from engine.models.estimate import estimate
    est = estimate(cfg, model_config)    # model_config: the model's config.json as a dict
    # or, from a model name (a local folder, a cached hub config, a preset's shape):
    from engine.models.estimate import estimate_for; est = estimate_for(cfg)
    print(est.trainable_params, est.peak_bytes, est.verdict)   # verdict: fits | tight | exceeds

Nothing is loaded: the numbers come from the model's shape, the method, the batch and the
precision. Peak memory is the sum of

    weights       every parameter at its loaded size (QLoRA: linear layers at 4 or 8 bits)
    adapter       trainable PEFT parameters (kept in float32)
    gradients     one per trainable parameter
    optimizer     AdamW: two float32 moments per trainable parameter; 8-bit optimizers less
    activations   saved for the backward pass, batch x sequence tokens per layer
                  (with gradient checkpointing: the layer inputs plus one layer recomputed)
    logits        one chunk of engine/training/loss.py's chunked loss (tokens x vocabulary), upcast to
                  float32, its log-softmax and gradient
    teacher       distill (engine/training/distill.py) without train.teacher_topk_cache: the
                  frozen teacher's weights and one chunk of its logits
    slack         the allocator's: memory freed is not all reused at once (CPU_SLACK)
    runtime       what the process holds before it loads anything: the Python process with
                  torch and friends imported (CPU), or the CUDA context (GPU)

What it means: peak_bytes is the most memory the training process will hold, runtime included,
so that "fits / tight / exceeds" compares it with what the device has (a GPU's memory, or the
RAM available now). tests/engine/test_estimate.py holds the training part (peak_bytes less
runtime) within 25% of the measured peak RSS less an imports-only process's RSS, on CPU runs of
two model sizes with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072; with the
default, dynamic one a CPU run peaked 1.1-1.9x higher, but ran 2.4x faster: the engine keeps
glibc's default and the estimate says so in a note on CPU; see CPU_SLACK);
activations are counted as autograd saves them (saved-tensor hooks, same file).
It says whether a run fits; it does not budget the last megabyte. The device is the first CUDA
GPU, or this machine's RAM. estimate_time() turns a measured throughput into time per epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.config import TrainConfig, VIRTUAL_TOKEN_METHODS, packing_applies

GiB = 1024 ** 3
#: share of the device a run may use and still be called a comfortable fit
FIT_SHARE = 0.85
#: on CPU, peak RSS exceeds live tensors by about this share of activations and logits, with
#: glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072): fitted to the runs of
#: tests/engine/test_estimate.py (0.0-0.13). With glibc's default, dynamic threshold, freed
#: activations may stay in the heap: the same LoRA run peaked at 619 or 883 MiB over its
#: baseline from one run to the next (574 MiB every time with the threshold fixed).
CPU_SLACK = 0.1
#: what the process holds before training: Python with torch, transformers, peft, accelerate
#: and datasets imported (measured 0.47 GiB of RSS, CPU); on a GPU, the CUDA context
RUNTIME_BYTES = {"cpu": int(0.5 * GiB), "cuda": int(0.75 * GiB)}
_NOT_GATED = {"gpt2", "gpt_neox", "gptj", "opt", "phi", "bloom", "falcon", "gpt_bigcode",
              "starcoder2"}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_GATED = ("gate_proj", "up_proj", "down_proj")
MLP_PLAIN = ("up_proj", "down_proj")


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    gated: bool
    experts: int = 1

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Shape:
        c = {**c, **(c.get("text_config") or {})}
        hidden = int(c.get("hidden_size") or c.get("n_embd") or c.get("d_model") or 0)
        heads = int(c.get("num_attention_heads") or c.get("n_head") or 1)
        return cls(
            hidden=hidden,
            intermediate=int(c.get("intermediate_size") or c.get("n_inner") or 4 * hidden),
            layers=int(c.get("num_hidden_layers") or c.get("n_layer") or 0),
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or (hidden // heads if heads else 0)),
            vocab=int(c.get("vocab_size") or 0),
            tied=bool(c.get("tie_word_embeddings", True)),
            gated=c.get("model_type") not in _NOT_GATED,
            experts=int(c.get("num_local_experts") or c.get("num_experts") or 1),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module in one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv),
                  "v_proj": (self.hidden, kv), "o_proj": (q, self.hidden)}
        for name in (MLP_GATED if self.gated else MLP_PLAIN):
            shapes[name] = (self.intermediate, self.hidden) if name == "down_proj" else \
                (self.hidden, self.intermediate)
        return shapes


@dataclass
class ParamCounts:
    embeddings: int
    layers_linear: int       # the decoder layers' linear weights (what QLoRA quantizes)
    layers_other: int        # norms and biases
    lm_head: int             # 0 when tied to the embeddings

    @property
    def total(self) -> int:
        return self.embeddings + self.layers_linear + self.layers_other + self.lm_head


def count_params(model_config: dict[str, Any]) -> ParamCounts:
    s = Shape.from_config(model_config)
    per_layer = 0
    for name, (i, o) in s.linears().items():
        per_layer += i * o * (s.experts if name in MLP_GATED + MLP_PLAIN else 1)
    router = s.hidden * s.experts if s.experts > 1 else 0
    other = 2 * s.hidden + router
    if model_config.get("attention_bias"):
        other += s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim
    return ParamCounts(embeddings=s.vocab * s.hidden, layers_linear=per_layer * s.layers,
                       layers_other=other * s.layers + s.hidden,
                       lm_head=0 if s.tied else s.vocab * s.hidden)


def trainable_params(cfg: TrainConfig, model_config: dict[str, Any]) -> tuple[int, list[str]]:
    """Parameters the method trains, and notes on anything it could not count."""
    s, m, notes = Shape.from_config(model_config), cfg.method, []
    linears = s.linears()
    if m.kind == "full":
        return count_params(model_config).total, notes
    if m.kind == "prompt_tuning":
        return m.num_virtual_tokens * s.hidden, notes
    if m.kind == "prefix_tuning":
        return m.num_virtual_tokens * s.layers * 2 * s.kv_heads * s.head_dim, notes
    if m.kind == "ia3":  # a vector per module: inputs of feed-forward outputs, else outputs
        names = ["k_proj", "v_proj", "down_proj"] if m.target_modules == "all-linear" else \
            _targets(m.target_modules, linears, notes)
        return s.layers * sum(linears[n][0] if n == "down_proj" else linears[n][1]
                              for n in names), notes
    targets = _targets(m.target_modules, linears, notes)
    per_layer = 0
    for name in targets:
        i, o = linears[name]
        experts = s.experts if name in MLP_GATED + MLP_PLAIN else 1
        per_layer += experts * (m.r * (i + o) + (o if m.kind == "dora" else 0))
    return per_layer * s.layers, notes


def _targets(target_modules: str | list[str], linears: dict[str, tuple[int, int]],
             notes: list[str]) -> list[str]:
    if target_modules == "all-linear":
        return list(linears)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    found = [n for n in names if n in linears]
    unknown = [n for n in names if n not in linears]
    if unknown:
        notes.append(f"not counted (names this estimate does not know): {', '.join(unknown)}")
    return found


@dataclass
class Device:
    kind: str          # cuda | cpu
    name: str
    total_bytes: int
    available_bytes: int
    bf16: bool = True  # a GPU that computes in bfloat16 (False: T4, V100); ignored on CPU

    @property
    def capacity_bytes(self) -> int:
        """What a run can use: a GPU's whole memory, or the RAM available now."""
        return self.total_bytes if self.kind == "cuda" else self.available_bytes


def detect_device() -> Device:
    """The first CUDA GPU when there is one, else this machine's RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            free, total = torch.cuda.mem_get_info(0)
            return Device("cuda", props.name, int(total), int(free),
                          bool(torch.cuda.is_bf16_supported()))
    except Exception:  # noqa: BLE001 - a broken CUDA install still leaves the CPU
        pass
    total, available = _ram()
    return Device("cpu", "CPU RAM", total, available)


def gpu_count() -> int:
    """CUDA GPUs this machine has (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install: no GPUs
        return 0


def _ram() -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:
        pass
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))


@dataclass
class Estimate:
    total_params: int
    trainable_params: int
    parts: dict[str, int]            # weights, adapter, gradients, optimizer, activations, ...
    device: Device
    notes: list[str] = field(default_factory=list)
    layers: int = 1                  # decoder layers: FSDP gathers one (or two) at a time

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def verdict(self) -> str:
        return classify(self.peak_bytes, self.device.capacity_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"total_params": self.total_params, "trainable_params": self.trainable_params,
                "trainable_share": self.trainable_share, "peak_bytes": self.peak_bytes,
                "parts": dict(self.parts), "verdict": self.verdict, "device": vars(self.device),
                "notes": list(self.notes)}


def classify(peak_bytes: int, capacity_bytes: int) -> str:
    """fits (under FIT_SHARE of the device), tight (under all of it) or exceeds."""
    if capacity_bytes <= 0:
        return "tight"
    if peak_bytes <= FIT_SHARE * capacity_bytes:
        return "fits"
    return "tight" if peak_bytes <= capacity_bytes else "exceeds"


def estimate(cfg: TrainConfig, model_config: dict[str, Any] | None,
             device: Device | None = None) -> Estimate | None:
    """The estimate for `cfg` on a model of `model_config` (its config.json as a dict; the
    estimate_for resolves names), or None when the shape is unknown."""
    if not model_config:
        return None
    device = device or detect_device()
    s, m, t = Shape.from_config(model_config), cfg.method, cfg.train
    counts = count_params(model_config)
    trainable, notes = trainable_params(cfg, model_config)
    policy = _precision(cfg, device)
    cbytes, wbytes = policy.compute_bytes, policy.weight_bytes
    full = m.kind == "full"

    if m.kind == "qlora":
        linear = counts.layers_linear * (m.quant_bits / 8 + (0.016 if m.quant_bits == 4 else
                                                              0.03))
        weights = linear + (counts.total - counts.layers_linear) * 2
    else:
        weights = counts.total * wbytes
    adapter = 0 if full else trainable * 4
    grad_bytes = wbytes if full else 4
    gradients = trainable * grad_bytes
    optimizer = trainable * _optimizer_bytes(t.optimizer)
    if full and wbytes == 2 and t.optimizer in ("adamw", "sgd"):
        notes.append("full fine-tuning in 16-bit without a float32 master copy; mixed precision "
                     "with float32 weights needs about twice the weight memory")

    seq = cfg.data.max_seq_len + (m.num_virtual_tokens if m.kind in VIRTUAL_TOKEN_METHODS else 0)
    pairs = t.objective in ("dpo", "orpo", "simpo")
    tokens = t.batch_size * seq * (2 if pairs else 1)   # a pair is two rows
    if t.batch_tokens:   # engine/batching.py: packed, whole rows in the budget; else padded rows
        tokens = max(t.batch_tokens // seq * seq if cfg.data.packing else t.batch_tokens, seq)
    per_layer = _activation_elems_per_token(s, cfg, full, seq, device.kind)
    if t.gradient_checkpointing and m.kind != "prefix_tuning":  # engine.models.load turns it off
        acts = tokens * (s.layers * s.hidden + per_layer) * cbytes
    else:
        acts = tokens * s.layers * per_layer * cbytes
    # packed rows under the dense block-diagonal mask (sdpa/eager asked for): one rows x L x L
    # mask per batch, kept through the backward; the varlen path (auto) builds none
    if packing_applies(cfg)[0] and cfg.model.attn_implementation in ("sdpa", "eager"):
        width = seq * (2 if pairs else 1)     # packed pairs: rows hold both sides
        mask = tokens // width * width * width * cbytes
        acts += mask
        notes.append(f"packed rows under a dense {width} x {width} mask "
                     f"(model.attn_implementation {cfg.model.attn_implementation}) take "
                     f"{human_bytes(mask)} per batch, growing with max_seq_len squared; auto "
                     "(varlen attention) builds no mask")
    # engine/training/loss.py: logits only at trained positions, CHUNK_LOGITS at a time (the rest are
    # recomputed in backward): one chunk's logits, float32 copy (none in float32), log-softmax
    # and gradient. All positions are counted as trained (completion-only data trains fewer).
    from engine.training.loss import CHUNK_LOGITS

    logit_tokens = min(tokens, max(64, CHUNK_LOGITS // max(s.vocab, 1)))
    logits = logit_tokens * s.vocab * (cbytes + (4 if cbytes != 4 else 0) + 4 + 4)
    if t.objective != "sft":   # engine/training/preference.py: full logits of every row
        logits = tokens * s.vocab * (cbytes + 4 + 4)

    parts = {"weights": int(weights), "adapter": int(adapter), "gradients": int(gradients),
             "optimizer": int(optimizer), "activations": int(acts), "logits": int(logits)}
    if t.objective == "grpo":
        # engine/training/grpo.py: the generation batch (batch_size x grad_accum completions)
        # is sampled at once with the KV cache (keys and values of every layer for prompt +
        # completion), and each step's float32 logits of its completions are kept for backward
        rows = t.batch_size * t.grad_accum
        kv = rows * seq * s.layers * 2 * s.kv_heads * s.head_dim * cbytes
        parts["kv_cache"] = int(kv)
        parts["logits"] = int(t.batch_size * min(t.max_completion_len, seq) * s.vocab *
                              (cbytes + 4 + 4))
        notes.append(f"grpo samples {rows} completions per generation batch (train.batch_size "
                     f"x train.grad_accum) with a {human_bytes(kv)} KV cache")
        if full and t.beta:
            parts["reference"] = int(counts.total * wbytes)
            notes.append("grpo with a KL term (train.beta) after full fine-tuning keeps a frozen "
                         "copy of the starting model as its reference")
    if full and t.objective in ("dpo", "kto") and not t.precompute_reference:
        # the frozen reference copy (engine.training.loop); precomputed log-probs need none
        parts["reference"] = int(counts.total * wbytes)
        notes.append(f"{t.objective} after full fine-tuning keeps a frozen copy of the starting "
                     "model as its reference")
    if t.objective == "distill" and t.teacher and not t.teacher_topk_cache:
        # engine/training/distill.py: the frozen teacher beside the student, in the student's
        # weight dtype, and one chunk of its logits next to the student's
        from engine.models.presets import read_config

        teacher = read_config(t.teacher)
        if teacher:
            parts["teacher"] = int(count_params(teacher).total * wbytes + logit_tokens *
                                   Shape.from_config(teacher).vocab * 8)
            notes.append("distill keeps the teacher in memory; train.teacher_topk_cache frees "
                         "it after caching its top-k once")
        else:
            notes.append(f"distill keeps the teacher {t.teacher} in memory, whose size is "
                         "unknown here and not counted")
    if device.kind == "cuda":   # the caching allocator's slack
        slack = 0.05 * sum(parts.values())
    else:   # what backward frees is not all reused at once (see CPU_SLACK)
        slack = 0.05 * sum(parts.values()) + CPU_SLACK * (acts + logits)
    parts["slack"] = int(slack)
    parts["runtime"] = RUNTIME_BYTES["cuda" if device.kind == "cuda" else "cpu"]
    if device.kind != "cuda" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        notes.append("on CPU, glibc keeps freed activations in its heap: the peak can reach "
                     "about twice the activations' share; MALLOC_MMAP_THRESHOLD_=131072 in the "
                     "worker's environment holds it to this estimate, at 2-2.5x the time per "
                     "step")
    if m.kind == "qlora" and device.kind != "cuda":
        notes.append("QLoRA needs a CUDA GPU (bitsandbytes); on this machine it cannot run")
    if s.experts > 1:
        notes.append(f"mixture of {s.experts} experts: activations assume every expert runs")
    return Estimate(counts.total, trainable, parts, device, notes, layers=max(s.layers, 1))


#: what FSDP splits across GPUs: the model's states
MODEL_STATES = ("weights", "adapter", "gradients", "optimizer", "reference")


def per_gpu_bytes(est: Estimate, strategy: str, gpus: int, reshard: bool = True) -> int:
    """Peak memory of one GPU of `gpus` under ddp (every GPU a whole copy), fsdp (the model's
    weights, gradients and optimizer state split `gpus` ways, plus the layers gathered at
    once: two with resharding after forward, all of them without) or fsdp_offload (the
    sharded states live in CPU memory: a GPU holds the gathered layers and the activations)."""
    states = sum(est.parts.get(k, 0) for k in MODEL_STATES)
    rest = est.peak_bytes - states - est.parts.get("slack", 0)
    if strategy == "ddp" or gpus < 1:
        return est.peak_bytes
    layer = (est.parts["weights"] + est.parts.get("adapter", 0)) / est.layers
    gathered = layer * (2 if reshard else est.layers)
    if strategy == "fsdp":
        held = states / gpus + gathered
    elif strategy == "fsdp_offload":
        held = gathered * 2   # the layers' weights and their gradients before they leave
    else:
        raise ValueError(f"unknown strategy {strategy!r}: ddp, fsdp or fsdp_offload")
    return int((held + rest) * 1.05)


@dataclass
class ParallelPlan:
    """Per-GPU peaks of one config under ddp, fsdp and fsdp_offload on `gpus` GPUs of the
    estimate's device, and what a person should do (advice)."""

    est: Estimate
    gpus: int
    per_gpu: dict[str, int]
    advice: str

    @property
    def capacity(self) -> int:
        return self.est.device.capacity_bytes

    def fits(self, strategy: str) -> bool:
        return self.per_gpu[strategy] <= self.capacity

    @property
    def fits_one(self) -> bool:
        return self.est.peak_bytes <= self.capacity

    def peak_gib(self, strategy: str) -> float:
        return self.per_gpu[strategy] / GiB

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "per_gpu": dict(self.per_gpu), "advice": self.advice,
                "capacity_bytes": self.capacity}


def plan_for(est: Estimate, gpus: int, cpu_offload: bool = False, reshard: bool = True,
             max_gpus: int | None = None) -> ParallelPlan:
    """The per-GPU peaks for `gpus` GPUs and the advice: "fits on 1 GPU", "needs N GPUs with
    FSDP" (the fewest of up to max_gpus, default 8, that fit), "needs offload" (FSDP with
    parallel.cpu_offload) or "does not fit"."""
    per = {k: per_gpu_bytes(est, k, gpus, reshard) for k in ("ddp", "fsdp", "fsdp_offload")}
    cap, name = est.device.capacity_bytes, est.device.name
    most = max(max_gpus or 8, gpus)
    if est.peak_bytes <= cap:
        advice = f"fits on 1 GPU ({human_bytes(est.peak_bytes)} of {human_bytes(cap)})"
    else:
        need = next((n for n in range(2, most + 1)
                     if per_gpu_bytes(est, "fsdp", n, reshard) <= cap), None)
        if need is not None:
            advice = (f"needs {need} GPUs with FSDP (about "
                      f"{human_bytes(per_gpu_bytes(est, 'fsdp', need, reshard))} per GPU; one "
                      f"copy needs {human_bytes(est.peak_bytes)})")
        elif per_gpu_bytes(est, "fsdp_offload", gpus, reshard) <= cap:
            advice = (f"needs offload: FSDP with parallel.cpu_offload (about "
                      f"{human_bytes(per['fsdp_offload'])} per GPU; "
                      f"{human_bytes(per_gpu_bytes(est, 'fsdp', most, reshard))} each even "
                      f"over {most} GPUs without it)")
        else:
            advice = (f"does not fit: {human_bytes(per['fsdp_offload'])} per GPU even with "
                      f"FSDP and offload; use a smaller batch, max_seq_len or model, or "
                      f"gradient checkpointing")
    if cpu_offload and "offload" not in advice and not est.peak_bytes <= cap:
        advice += "; with parallel.cpu_offload on"
    return ParallelPlan(est, gpus, per, f"{advice} on {name}")


def estimate_time(tokens_per_epoch: int, tokens_per_s: float | None, epochs: float = 1
                  ) -> float | None:
    """Seconds for `epochs` passes over tokens_per_epoch trained tokens at a measured
    throughput (a finished run's timings.tokens_per_s on the same model and machine); None
    when no throughput has been measured."""
    if not tokens_per_s or tokens_per_s <= 0:
        return None
    return tokens_per_epoch * epochs / tokens_per_s


def _activation_elems_per_token(s: Shape, cfg: TrainConfig, full: bool, seq: int,
                                device_kind: str = "cuda") -> float:
    """Values saved for backward per token per decoder layer (SDPA attention), counted with
    autograd's saved-tensor hooks on Llama-shaped models (tests/engine/test_estimate.py)."""
    q, kv, h, i = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden, s.intermediate
    mlp_i = i * (3 if s.gated else 2)
    # norms (input and scale), q/k/v before and after rotary, attention output, MLP activations
    elems = 4 * h + 3 * q + 3 * kv + mlp_i
    if full:
        elems += 2 * h + i                  # inputs of trainable linears not otherwise kept
    m = cfg.method
    if m.kind in ("lora", "dora", "qlora"):
        targets = _targets(m.target_modules, s.linears(), [])
        elems += h + m.r * len(targets)     # adapter inputs and low-rank outputs
        if m.dropout > 0:                   # dropout outputs feeding the adapters, and masks
            elems += sum(s.linears()[n][0] for n in targets) * 1.25
        if m.kind == "dora":
            elems += sum(s.linears()[n][1] for n in targets)  # the weight-normed outputs
    if cfg.model.attn_implementation == "eager":
        elems += s.heads * seq              # attention probabilities
    elif device_kind != "cuda" and packing_applies(cfg)[0] \
            and cfg.model.attn_implementation in ("auto", "varlen"):
        elems += q + kv                     # SDPA per span: q/k/v gathered into buckets
    return elems


def _precision(cfg: TrainConfig, device: Device):
    """engine.training.precision's policy for this config on `device` (the one training uses)."""
    from engine.training.precision import resolve

    return resolve(cfg.model.dtype, cfg.train.precision, cfg.method.kind, device.kind,
                   device.bf16)


def _optimizer_bytes(optimizer: str) -> float:
    return {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "lion_8bit": 1,
            "adafactor": 0.5, "sgd": 0}.get(optimizer, 8)


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1024 ** 4), ("GB", GiB), ("MB", 1024 ** 2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def estimate_for(cfg, device=None):
    """estimate() for cfg.model.name, its shape read here (a local folder's
    config.json, a cached hub config, or a preset's); None when the shape is unknown."""
    from engine.models.presets import read_config

    return estimate(cfg, read_config(cfg.model.name), device)

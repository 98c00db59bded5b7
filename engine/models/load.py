"""The base model and the fine-tuning method put on it.

Use from Python:
    from engine.models.load import load_model, save_trained
    model, tokenizer, info = load_model(cfg, log=print)   # info: trainable/total params, ...
    save_trained(model, tokenizer, "runs/x/adapter")     # PEFT adapter, or a full model folder

Weights load from safetensors only (never pickled .bin files). Each method is one function of
the same shape, `method(base, cfg) -> model`, listed in METHODS: lora, dora, qlora (LoRA over a
4- or 8-bit bitsandbytes base; the quantization itself happens while loading, see
`quantization_for`), prompt_tuning, prefix_tuning, ia3 and full.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from engine.models.attention import choose_attention
from engine.config import PEFT_METHODS, TrainConfig, packing_applies
from engine.training.speedups import apply_liger, use_liger

# bitsandbytes' CPU backend warns on import that it cannot fetch an optional kernel from the hub;
# that kernel is never downloaded here, and the warning would open every run's log
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

#: IA3 scales the inputs of these (feed-forward) modules and the outputs of the others
FEEDFORWARD_NAMES = ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h", "wo", "fc_out")
#: IA3 targets when the model type is unknown to peft: keys, values and the feed-forward output
IA3_FALLBACK = ("k_proj", "v_proj", "key", "value", "down_proj", "fc2", "w2", "dense_4h_to_h")


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer, right-padding, with pad = eos when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision,
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def pick_dtype(name: str, kind: str = "lora", device: torch.device | None = None) -> torch.dtype:
    """model.dtype as a torch dtype, by engine.training.precision's policy for this device."""
    from engine.training.precision import weight_dtype

    device = device or default_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return getattr(torch, weight_dtype(name, kind, device.type, bf16))


def quantization_for(cfg: TrainConfig, compute_dtype: torch.dtype, sharded: bool = False):
    """The BitsAndBytesConfig for qlora (NF4 + double quantization, or 8-bit), else None.
    sharded (FSDP, engine/training/parallel.py): the 4-bit weights are stored in the compute
    dtype, as PEFT's FSDP+QLoRA guide requires (fully_shard shards floating tensors only)."""
    if cfg.method.kind != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.method.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              **({"bnb_4bit_quant_storage": compute_dtype} if sharded else {}))


def load_model(cfg: TrainConfig, log: Callable[[str], None] = print,
               device: torch.device | str | None = None, sharded: bool = False
               ) -> tuple[Any, Any, dict[str, Any]]:
    """(model ready to train, tokenizer, info) for cfg.model and cfg.method. sharded: for FSDP
    (engine/training/parallel.py): QLoRA's 4-bit weights stored in the compute dtype; the others
    stay on the CPU until fully_shard moves each process's shards to the device."""
    from transformers import AutoModelForCausalLM

    m, kind = cfg.model, cfg.method.kind
    device = torch.device(device) if device is not None else default_device()
    tokenizer = load_tokenizer(m.name, m.revision, m.trust_remote_code)
    dtype = pick_dtype(m.dtype, kind, device)
    quantization = quantization_for(cfg, dtype, sharded)
    attention, why = choose_attention(m.attn_implementation, device, packing_applies(cfg)[0])
    log(why)
    extra: dict[str, Any] = {"attn_implementation": attention}
    if quantization is not None:  # bitsandbytes quantizes while placing the weights
        extra.update(quantization_config=quantization, device_map={"": device})
    base = AutoModelForCausalLM.from_pretrained(
        m.name, dtype=dtype, revision=m.revision, trust_remote_code=m.trust_remote_code,
        use_safetensors=True, **extra)
    base.config.use_cache = False
    model_type = getattr(base.config, "model_type", "?")
    liger, why = use_liger(cfg.train.kernels, device, model_type)  # ConfigError: asked, can't
    log(why)
    if liger:
        apply_liger(base, log)
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(base, kind, log)
    model = METHODS[kind](base, cfg)
    trainable, total = count_parameters(model)
    info = {"method": kind, "model_type": model_type, "kernels": "liger" if liger else "none",
            "attention": attention,
            "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "trainable_params": trainable, "total_params": total,
            "quantized": f"{cfg.method.quant_bits}-bit" if quantization is not None else None}
    log(f"model: {m.name} ({info['model_type']}, {info['dtype']}"
        f"{', ' + info['quantized'] + ' base' if info['quantized'] else ''}) with {kind}: "
        f"{trainable:,} of {total:,} parameters trainable ({trainable / max(total, 1):.2%})")
    return model, tokenizer, info


def enable_gradient_checkpointing(base, kind: str, log: Callable[[str], None] = print) -> None:
    """Recompute activations in backward (non-reentrant, so frozen inputs are fine).

    Prefix tuning feeds its prefix through the key/value cache, which transformers drops inside
    checkpointed layers, so it trains without checkpointing (and says so)."""
    if kind == "prefix_tuning":
        log("model: gradient checkpointing is off for prefix_tuning (checkpointed layers drop "
            "the key/value cache that carries the prefix)")
        return
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before activation_checkpointing_enable existed
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kind in PEFT_METHODS:
        base.enable_input_require_grads()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; peft counts packed 4-bit weights at their real size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- the methods


def _target_modules(cfg: TrainConfig) -> str | list[str]:
    t = cfg.method.target_modules
    return "all-linear" if t == "all-linear" else list(t)


def lora(base, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    m = cfg.method
    return get_peft_model(base, LoraConfig(
        task_type="CAUSAL_LM", r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=_target_modules(cfg)))


def dora(base, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    m = cfg.method
    return get_peft_model(base, LoraConfig(
        task_type="CAUSAL_LM", r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=_target_modules(cfg), use_dora=True))


def qlora(base, cfg: TrainConfig):
    """LoRA over the quantized base (quantized by load_model through quantization_for)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    m = cfg.method
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return get_peft_model(base, LoraConfig(
        task_type="CAUSAL_LM", r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=_target_modules(cfg)))


def prompt_tuning(base, cfg: TrainConfig):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    m = cfg.method
    init = {}
    if m.prompt_init_text:
        init = dict(prompt_tuning_init=PromptTuningInit.TEXT,
                    prompt_tuning_init_text=m.prompt_init_text,
                    tokenizer_name_or_path=cfg.model.name)
    return get_peft_model(base, PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=m.num_virtual_tokens, **init))


def prefix_tuning(base, cfg: TrainConfig):
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(base, PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=cfg.method.num_virtual_tokens))


def ia3(base, cfg: TrainConfig):
    from peft import IA3Config, get_peft_model

    targets = ia3_targets(base, cfg.method.target_modules)
    feedforward = [t for t in targets if t.split(".")[-1] in FEEDFORWARD_NAMES]
    return get_peft_model(base, IA3Config(
        task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward))


def full(base, cfg: TrainConfig):
    """Every weight trains; the model is trained directly."""
    for p in base.parameters():
        p.requires_grad_(True)
    return base


METHODS: dict[str, Callable[[Any, TrainConfig], Any]] = {
    "lora": lora, "dora": dora, "qlora": qlora, "prompt_tuning": prompt_tuning,
    "prefix_tuning": prefix_tuning, "ia3": ia3, "full": full}


def ia3_targets(base, target_modules: str | list[str]) -> list[str]:
    """IA3 modules: the given list, else peft's choice for the model type (keys, values and the
    feed-forward output), else those names among the model's linear layers."""
    if target_modules != "all-linear":
        return list(target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as known

    model_type = getattr(base.config, "model_type", "")
    if model_type in known:
        return list(known[model_type])
    present = {name.split(".")[-1] for name, mod in base.named_modules()
               if isinstance(mod, torch.nn.Linear)}
    found = [n for n in IA3_FALLBACK if n in present]
    if not found:
        raise ValueError(f"ia3 does not know which modules to scale in a {model_type} model; set "
                         f"method.target_modules to some of: {', '.join(sorted(present))}")
    return found


# --------------------------------------------------------------------------- saving


def save_trained(model, tokenizer, folder: str | Path,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """A PEFT adapter folder (PeftModel.from_pretrained(base, folder)), or for full fine-tuning
    a whole model folder (AutoModelForCausalLM.from_pretrained(folder)); the tokenizer beside
    it. Safetensors only. state_dict: the weights to write instead of the model's own (FSDP
    gathers them from their shards: engine.training.parallel.gathered_state_dict)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out)
    return out

"""The Train form as data: which config keys it shows, in which groups, and form <-> TrainConfig.

Widgets are made from the config contract itself: a Literal key becomes a dropdown, a bool a
checkbox, a number a number box; every widget's label is `label_for(key)` and its info line
`help_for(key)`, both from the field's metadata. So adding a field to engine/config.py is all
it takes for the form to offer it (add it to a group below).
"""

from __future__ import annotations

from dataclasses import fields

from typing import Any

from engine.config import (TRACKERS, ConfigError, Problem, TrainConfig, all_keys, choices_for,
                           default_for, fields_of, from_dict, help_for, validate)
from engine.config import label_for as config_label_for

METHOD_LABELS = {
    "lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "prompt_tuning": "Prompt tuning",
    "prefix_tuning": "Prefix tuning", "ia3": "IA³", "full": "Full fine-tuning",
}
METHOD_BLURBS = {
    "lora": "Low-rank adapters on the linear layers: small, fast, the usual first choice.",
    "dora": "LoRA with a learned magnitude per output: often a little better, a little slower.",
    "qlora": "LoRA over a 4- or 8-bit base: the least GPU memory for big models (CUDA only).",
    "prompt_tuning": "Learns a few virtual tokens in front of every input; the model is untouched.",
    "prefix_tuning": "Learns key/value prefixes in every attention layer.",
    "ia3": "Learns a scaling vector per key, value and feed-forward layer: tiny adapters.",
    "full": "Trains every weight: the most capable and by far the most memory. Use a low "
            "learning rate (about 2e-5).",
}
#: the method settings, and the methods each one applies to
METHOD_KEYS = {
    "method.r": ("lora", "dora", "qlora"),
    "method.alpha": ("lora", "dora", "qlora"),
    "method.dropout": ("lora", "dora", "qlora"),
    "method.target_modules": ("lora", "dora", "qlora", "ia3"),
    "method.quant_bits": ("qlora",),
    "method.num_virtual_tokens": ("prompt_tuning", "prefix_tuning"),
    "method.prompt_init_text": ("prompt_tuning",),
}

# The form's groups; every key the form edits is in exactly one.
MODEL_ADVANCED = ["model.dtype", "model.attn_implementation", "model.revision",
                  "model.trust_remote_code"]
DATA_MAIN = ["data.format", "data.max_seq_len", "data.val_fraction"]
DATA_ADVANCED = ["data.validation", "data.train_on_prompt", "data.packing", "data.dedupe",
                 "data.on_bad_record", "data.order", "data.min_tokens", "data.max_tokens",
                 "data.system_prompt"]
#: which file column holds each field (shown next to the upload, app/studio/train_tab.py)
DATA_COLUMNS = ["data.columns"]
TRAIN_MAIN = ["train.epochs", "train.max_steps", "train.lr", "train.batch_size",
              "train.grad_accum", "train.scheduler"]
TRAIN_ADVANCED = ["train.warmup_ratio", "train.optimizer", "train.precision",
                  "train.gradient_checkpointing", "train.kernels", "train.compile",
                  "train.weight_decay", "train.max_grad_norm",
                  "train.eval_every", "train.save_every", "train.keep_checkpoints",
                  "train.early_stopping_patience", "train.neftune_alpha", "train.log_every",
                  "train.seed"]
#: the objectives' own settings (preference: engine/training/preference.py; grpo:
#: engine/training/grpo.py), and the objectives each one applies to (the form shows only the
#: chosen objective's)
OBJECTIVE_KEYS = {
    "train.rewards": ("grpo",),
    "train.num_generations": ("grpo",),
    "train.max_completion_len": ("grpo",),
    "train.grpo_loss_type": ("grpo",),
    "train.temperature": ("grpo",),
    "train.top_p": ("grpo",),
    "train.epsilon": ("grpo",),
    "train.epsilon_high": ("grpo",),
    "train.num_iterations": ("grpo",),
    "train.scale_rewards": ("grpo",),
    "train.beta": ("dpo", "orpo", "simpo", "kto", "grpo"),
    "train.dpo_loss_type": ("dpo",),
    "train.label_smoothing": ("dpo", "simpo"),
    "train.simpo_gamma": ("simpo",),
    "train.kto_desirable_weight": ("kto",),
    "train.kto_undesirable_weight": ("kto",),
    # distillation (engine/training/distill.py)
    "train.teacher": ("distill",),
    "train.distill_loss": ("distill",),
    "train.distill_temperature": ("distill",),
    "train.distill_alpha": ("distill",),
    "train.gkd_beta": ("distill",),
    "train.teacher_topk_cache": ("distill",),
}
TRAIN_OBJECTIVE = ["train.objective", *OBJECTIVE_KEYS]
#: the Parallelism section (shown where the workers have GPUs; engine/training/parallel.py)
PARALLEL_KEYS = ["parallel.gpus", "parallel.strategy", "parallel.cpu_offload",
                 "parallel.reshard_after_forward"]
#: TensorBoard, MLflow, W&B (engine/training/trackers.py)
TRAIN_TRACKERS = ["train.report_to", "train.tracker_experiment"]
#: every key in the form, in the order handlers receive their values
FORM_KEYS = (["model.name", "data.train", "method.kind"] + MODEL_ADVANCED + DATA_MAIN +
             DATA_ADVANCED + DATA_COLUMNS + list(METHOD_KEYS) + TRAIN_MAIN + TRAIN_ADVANCED + TRAIN_OBJECTIVE +
             TRAIN_TRACKERS + PARALLEL_KEYS)
#: keys that change the memory estimate
ESTIMATE_KEYS = {"model.name", "model.dtype", "model.attn_implementation", "data.max_seq_len",
                 "method.kind", "method.r", "method.target_modules", "method.quant_bits",
                 "method.num_virtual_tokens", "method.dropout", "train.batch_size",
                 "train.optimizer", "train.precision", "train.gradient_checkpointing",
                 "train.objective", "train.num_generations", "train.max_completion_len",
                 "train.grad_accum", *PARALLEL_KEYS}
#: keys that change the data report and preview
DATA_KEYS = {"model.name", "data.train", "data.format", "data.max_seq_len",
             "data.train_on_prompt", "data.system_prompt", "data.dedupe", "data.min_tokens",
             "data.max_tokens", "data.val_fraction", "data.validation", "train.objective",
             "data.columns"}



def _int_keys() -> set[str]:
    from typing import get_args, get_type_hints

    from engine.config import SECTIONS

    out = set()
    for section, cls in SECTIONS.items():
        for name, tp in get_type_hints(cls).items():
            if tp is int or (int in get_args(tp) and float not in get_args(tp)):
                out.add(f"{section}.{name}")
    return out


#: keys typed int (their number boxes take no decimals)
INT_KEYS = _int_keys()
#: keys whose value may be empty (None) and take a number when given
NUMBER_KEYS = {"train.max_steps", "train.early_stopping_patience", "data.max_tokens",
               "train.neftune_alpha", "train.max_grad_norm", "train.epsilon_high",
               "train.teacher_topk_cache"}


def label_for(key: str) -> str:
    """A config key's label from its field's metadata (engine.config.label_for); any other key a
    problem may name (a sweep's, a file's) reads as its last part."""
    try:
        return config_label_for(key)
    except KeyError:
        return key.rsplit(".", 1)[-1].replace("_", " ").capitalize()


def widget_spec(key: str) -> dict[str, Any]:
    """What widget shows `key`: {'type': dropdown|checkbox|number|text, ...}, from the contract."""
    default = default_for(key)
    spec: dict[str, Any] = {"key": key, "label": label_for(key), "info": help_for(key)}
    choices = choices_for(key)
    if key == "train.report_to":
        return {**spec, "type": "dropdown", "choices": list(TRACKERS), "value": [],
                "multiselect": True}
    if key == "method.quant_bits":
        return {**spec, "type": "dropdown", "choices": [4, 8], "value": default}
    if choices:
        return {**spec, "type": "dropdown", "choices": list(choices), "value": default}
    if isinstance(default, bool):
        return {**spec, "type": "checkbox", "value": default}
    if key in NUMBER_KEYS:  # optional numbers: a text box, so "empty" can be typed
        return {**spec, "type": "text", "value": "" if default is None else str(default),
                "placeholder": "empty: off"}
    if key in INT_KEYS or isinstance(default, (int, float)):
        return {**spec, "type": "number", "value": default,
                "precision": 0 if key in INT_KEYS else None}
    if key == "method.target_modules":
        return {**spec, "type": "text", "value": "all-linear",
                "placeholder": "all-linear, or q_proj, v_proj"}
    if key == "train.rewards":
        return {**spec, "type": "text", "value": "",
                "placeholder": "[{name: numeric_match, args: {column: answer}}]"}
    return {**spec, "type": "text", "value": "" if default is None else str(default)}


def columns_text(columns: dict[str, str] | None) -> str:
    """data.columns as the form's text (and --set's value): "instruction=question, ..."."""
    return ", ".join(f"{k}={v}" for k, v in (columns or {}).items())


def form_to_values(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Positional form values (in FORM_KEYS order) to {key: value}, empties as None."""
    out = {}
    for key, value in zip(FORM_KEYS, values):
        if isinstance(value, str):
            value = value.strip()
            if value == "" or (value.lower() in ("none", "null") and default_for(key) is None):
                value = None
        if key == "train.rewards" and value is None:
            value = []
        if isinstance(value, float) and key in INT_KEYS and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def build_config(values: dict[str, Any], base: TrainConfig | None = None
                 ) -> tuple[TrainConfig, list[Problem]]:
    """A TrainConfig from form values, and every problem converting them (bad keys keep the
    value of `base`, or the default, so validate() can still look at the rest)."""
    data = (base or TrainConfig()).to_dict()
    problems: list[Problem] = []
    for key, value in values.items():
        section, _, name = key.partition(".")
        if value is None and default_for(key) is not None:
            problems.append(Problem(key, f"needs a value (default {default_for(key)!r})"))
            continue
        try:
            from_dict({section: {name: value}})
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        data[section][name] = value
    return from_dict(data), problems


def check_form(values: dict[str, Any], base: TrainConfig | None = None
               ) -> tuple[TrainConfig, list[Problem]]:
    """build_config, then validate(): every problem at once, one per key at most first."""
    cfg, problems = build_config(values, base)
    bad = {p.key for p in problems}
    problems += [p for p in validate(cfg) if p.key not in bad]
    return cfg, problems


def config_to_form(cfg: TrainConfig) -> list[Any]:
    """The form values (FORM_KEYS order) showing `cfg`."""
    out = []
    for key in FORM_KEYS:
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if key == "method.target_modules" and isinstance(value, list):
            value = ", ".join(value)
        elif key == "train.rewards":
            import json

            value = json.dumps(value) if value else ""
        elif isinstance(value, dict):          # data.columns: field=column, ...
            value = columns_text(value)
        elif widget_spec(key)["type"] == "text":
            value = "" if value is None else str(value)
        out.append(value)
    return out


def overrides(cfg: TrainConfig) -> list[str]:
    """`key=value` for every key that differs from the defaults (what --set needs)."""
    default, out = TrainConfig().to_dict(), []
    now = cfg.to_dict()
    for key in all_keys():
        if key == "output_dir":
            if cfg.output_dir:
                out.append(f"output_dir={cfg.output_dir}")
            continue
        section, _, name = key.partition(".")
        value = now[section][name]
        if value != default[section][name]:
            if key == "train.rewards":
                import json

                text = json.dumps(value)
            elif isinstance(value, list):
                text = ",".join(value)
            elif isinstance(value, dict):
                text = columns_text(value).replace(" ", "")
            elif value is None:
                text = "null"
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            out.append(f"{key}={text}")
    return out

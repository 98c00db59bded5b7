"""The one training config: four typed sections whose field docs are the help text everywhere.

Use from Python:
    from engine.config import TrainConfig, load_config, validate
    cfg = load_config("run.yaml", overrides=["train.lr=1e-4", "method.kind=qlora"])
    problems = validate(cfg)          # every problem at once, each naming its key and the fix

The UI's tooltips, `ftstudio config --keys` and the README table all read `help_for(key)`,
so the text below is the only place a setting is explained.

About 800 lines: the four typed sections with the help text of every field, their coercion and
their validation are the config contract, and live together so a field and its checks are
changed in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
#: methods whose trainable parameters live in peft modules over a frozen base
PEFT_METHODS = ("lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "ia3")
#: methods that prepend virtual tokens instead of changing weights
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "prefix_tuning")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text travels in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f("studio-data/models/demo",
                   "Base model: a Hugging Face hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local "
                   "folder with config.json, tokenizer files and *.safetensors weights.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Weight dtype when loading: auto picks bfloat16 on GPUs that support it, "
                "float16 on older GPUs and float32 on CPU.")
    trust_remote_code: bool = _f(False, "Run Python code shipped with the model repository. Off "
                                        "by default; only enable it for repositories you trust.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) to load; ignored for "
                                    "local folders.")
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager"] = _f(
        "auto", "Attention kernel. varlen: packed records as one flat row whose attention runs "
                "per record (flash-attn varlen on CUDA where installed, SDPA per record span "
                "elsewhere), never over what the packing hides. sdpa / eager: PyTorch SDPA or "
                "plain attention, packed rows under a dense block-diagonal mask. auto: varlen "
                "when records are packed, sdpa otherwise; the log says which and why.")


@dataclass
class DataConfig:
    train: str = _f("static/examples/alpaca.json",
                    "Training data file: .json (an array of records), .jsonl (one record per "
                    "line), .csv or .parquet.")
    validation: str | None = _f(None, "Validation file in the same formats. When empty, "
                                      "val_fraction of the training records is held out.")
    val_fraction: float = _f(0.1, "Share of training records held out for evaluation when no "
                                  "validation file is given (0 turns evaluation off).")
    format: Literal["auto", "alpaca", "chat", "sharegpt", "completion", "text", "preference",
                    "kto"] = _f(
        "auto", "Record format: alpaca (instruction/input/output), chat (messages), sharegpt "
                "(conversations), completion (prompt/completion), text (raw text for continued "
                "pre-training), preference (prompt/chosen/rejected, or messages/chosen/"
                "rejected: pairs for dpo, orpo, simpo), kto (prompt/completion/label), or auto "
                "to detect it from the fields.")
    columns: dict[str, str] | None = _f(
        None, "Which of the file's columns holds each field a record format reads, when the "
              "file names them otherwise: a mapping field: column, e.g. {instruction: question, "
              "output: answer} (or, after --set, instruction=question,output=answer). Fields: "
              "instruction, input, output, system (alpaca); prompt, completion (completion, "
              "kto); messages; conversations; text; chosen, rejected; label. Empty: the file's "
              "own names.", label="Column mapping")
    max_seq_len: int = _f(512, "Longest sequence in tokens; longer records are truncated and "
                               "counted in the data report.")
    train_on_prompt: bool = _f(False, "Also compute loss on prompt and template tokens. Off: only "
                                      "assistant/response tokens are trained.")
    packing: bool = _f(True, "Pack several records into each sequence (attention never crosses "
                             "records). Turned off automatically for prompt and prefix tuning.")
    on_bad_record: Literal["error", "skip"] = _f(
        "error", "What a malformed record does: error stops with its file, line and field; skip "
                 "leaves it out and counts it in the report.")
    dedupe: bool = _f(False, "Drop records that are exact duplicates of an earlier one.")
    min_tokens: int = _f(0, "Drop records shorter than this many tokens (0 keeps all).")
    max_tokens: int | None = _f(None, "Drop (rather than truncate) records longer than this many "
                                      "tokens; empty keeps all.")
    order: Literal["shuffle", "shortest_first", "as_is"] = _f(
        "shuffle", "Order of training records: shuffle (by seed, each epoch), shortest_first (a "
                   "simple curriculum), or as_is (file order).")
    system_prompt: str | None = _f(None, "System message added to records that have none.")


@dataclass
class MethodConfig:
    kind: Literal["lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "ia3", "full"] = _f(
        "lora", "Fine-tuning method: lora, dora (weight-decomposed LoRA), qlora (LoRA over a 4- or "
                "8-bit quantized base), prompt_tuning, prefix_tuning, ia3, or full (all weights).")
    r: int = _f(16, "LoRA/DoRA/QLoRA rank: the width of the low-rank update.")
    alpha: float = _f(32, "LoRA scaling numerator: the update is scaled by alpha / r.")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training.")
    target_modules: str | list[str] = _f(
        "all-linear", "Modules to adapt: all-linear, or a list of module names such as "
                      "[q_proj, v_proj].")
    quant_bits: int = _f(4, "QLoRA base quantization: 4 (NF4 with double quantization) or 8.")
    num_virtual_tokens: int = _f(20, "Prompt and prefix tuning: number of virtual tokens learned.")
    prompt_init_text: str | None = _f(None, "Prompt tuning: initialise the virtual tokens from "
                                            "this text instead of randomly.")


#: every method.kind, from its Literal (the one list)
METHODS: tuple[str, ...] = get_args(get_type_hints(MethodConfig)["kind"])


@dataclass
class TrainSection:
    epochs: float = _f(1, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps; empty: run epochs.")
    lr: float = _f(2e-4, "Peak learning rate (after warmup).")
    batch_size: int = _f(4, "Sequences per device per forward pass.")
    batch_tokens: int | None = _f(None, "Size batches by tokens instead of rows: each batch "
                                        "holds as many rows as fit in this many (padded) "
                                        "tokens; empty uses train.batch_size.")
    grad_accum: int = _f(1, "Forward passes accumulated into one optimizer step; the effective "
                            "batch is batch_size x grad_accum x processes.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "cosine", "Learning-rate schedule after warmup.")
    warmup_ratio: float = _f(0.03, "Share of the steps spent warming the learning rate up from 0.")
    weight_decay: float = _f(0.0, "Decoupled weight decay (not applied to biases and norms).")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "lion_8bit",
                       "sgd"] = _f("adamw", "Optimizer; the 8-bit and paged ones come from "
                                            "bitsandbytes and save optimizer memory.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto", "Mixed precision: auto picks bf16 on GPUs that support it and fp32 on CPU.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: much "
                                             "less memory for about 30% more time.")
    kernels: Literal["auto", "liger", "none"] = _f(
        "auto", "Fused GPU kernels: auto uses Liger's (RMSNorm, RoPE, MLP, fused "
                "cross-entropy) on CUDA GPUs when liger-kernel is installed (pip install "
                "\"ftstudio[gpu]\"); liger insists on them; none turns them off.")
    compile: bool = _f(False, "Compile the model body with torch.compile: faster steps after a "
                              "slow start (the first steps, and new lengths, compile first).")
    objective: Literal["sft", "dpo", "orpo", "kto", "simpo"] = _f(
        "sft", "Training objective: sft (next-token loss on the answers), or preference tuning "
               "from pairs of a chosen and a rejected answer: dpo (against a reference: the "
               "base, i.e. the same model with its adapter disabled), orpo (odds ratio plus the "
               "chosen answer's loss, no reference), simpo (length-normalised margin, no "
               "reference), or kto (single answers labelled desirable or not, against the "
               "reference). Pairs need preference data, kto its own format.")
    beta: float | None = _f(None, "Preference strength (dpo, kto: how far the tuned model may "
                                  "drift from the reference, 0.1; orpo: the odds-ratio weight, "
                                  "0.1; simpo: the reward scale, 2.0). Empty: the objective's "
                                  "default.")
    label_smoothing: float = _f(0.0, "For dpo (sigmoid) and simpo: the share of pairs "
                                     "assumed mislabelled (conservative DPO); 0: off.")
    dpo_loss_type: Literal["sigmoid", "ipo", "hinge"] = _f(
        "sigmoid", "For dpo: the loss of the reward margin: sigmoid (DPO), ipo (squared, length-"
                   "normalised) or hinge.")
    simpo_gamma: float = _f(0.5, "For simpo: the target margin between the rewards.")
    kto_desirable_weight: float = _f(1.0, "For kto: the weight of desirable answers (raise it "
                                          "when they are fewer).")
    kto_undesirable_weight: float = _f(1.0, "For kto: the weight of undesirable answers.")
    precompute_reference: bool = _f(False, "For dpo: compute the reference log-probabilities "
                                           "of every train and eval pair once before training "
                                           "(cached under FTSTUDIO_HOME/cache with the "
                                           "tokenized data), so each step runs the model once "
                                           "instead of twice, and full fine-tuning keeps no "
                                           "frozen copy in memory.")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this value; empty: no "
                                          "clipping.")
    eval_every: int = _f(50, "Evaluate on the validation split every N optimizer steps (and at "
                             "the end); 0: only at the end.")
    save_every: int = _f(100, "Save a resumable checkpoint every N optimizer steps (and at the "
                              "end); 0: only at the end.")
    keep_checkpoints: int = _f(2, "How many of the newest step checkpoints to keep on disk.")
    early_stopping_patience: int | None = _f(
        None, "Stop when train.early_stopping_metric has not improved for this many "
              "evaluations; the best adapter is kept. Empty: off.")
    early_stopping_metric: Literal["eval_loss", "gen_exact_match", "gen_token_f1",
                                   "gen_rouge_l", "gen_chrf", "gen_bleu"] = _f(
        "eval_loss", "What early stopping watches: eval_loss (lower is better, every "
                     "train.eval_every steps) or a generation metric of train.eval_generate "
                     "every N (higher is better, every N steps).")
    eval_generate: str = _f(
        "end", "Answer held-out prompts greedily with the base and the tuned model and score "
               "the answers against the references (exact match, token F1, ROUGE-L, chrF, "
               "BLEU, with 95% intervals): end (once training ends), every N (also every N "
               "steps, drawn as live curves), or off. Needs a validation split.")
    eval_generate_max: int = _f(100, "The most held-out records train.eval_generate answers "
                                     "(the first ones of the split).")
    eval_generate_max_new_tokens: int | None = _f(
        None, "The longest answer train.eval_generate lets a model write, in tokens; empty: "
              "1.25 x the longest reference + 16, at most 256.")
    neftune_alpha: float | None = _f(None, "NEFTune: add uniform noise of this scale to "
                                           "embeddings while training (5 is typical). Empty: off.")
    log_every: int = _f(1, "Report training metrics every N optimizer steps.")
    report_to: list[str] = _f(
        [], "Also send the metrics (every metrics.jsonl record: loss, lr, throughput, eval and "
            "gen_* metrics) and the config as hyperparameters to these trackers: tensorboard "
            "(event files in output_dir/tb), mlflow (MLFLOW_TRACKING_URI, else a SQLite store "
            "in FTSTUDIO_HOME/mlflow), wandb (output_dir/wandb, offline unless WANDB_API_KEY is "
            "set). A list, or names separated by commas; empty: none. Needs pip install "
            "\"ftstudio[trackers]\"; a tracker that fails is logged once and training goes on.")
    tracker_experiment: str | None = _f(
        None, "The MLflow experiment and the W&B group the run is logged under (train.report_to); "
              "empty: ftstudio, or for the jobs of a sweep the sweep's name.")
    seed: int = _f(42, "Random seed for data order, the validation split, initialisation and "
                       "dropout.")
    resume_from: str | None = _f(None, "Checkpoint folder to continue from exactly, or 'latest' "
                                       "for the newest under output_dir/checkpoints.")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainSection = field(default_factory=TrainSection)
    output_dir: str | None = field(default=None, metadata={
        "help": "Folder for checkpoints, adapter/, metrics.jsonl and run.json. Set by the queue; "
                "required for `ftstudio train`."})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> "TrainConfig":
        return from_dict(self.to_dict())


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
                             "train": TrainSection}


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: which key, what is wrong, and what to do about it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(ValueError):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the config:\n{lines}")


# --------------------------------------------------------------------------- introspection


def fields_of(section: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(SECTIONS[section]))


def all_keys() -> list[str]:
    """Every dotted key, in declaration order: model.name, ..., output_dir."""
    keys = [f"{s}.{f.name}" for s in SECTIONS for f in fields_of(s)]
    return keys + ["output_dir"]


def help_for(key: str) -> str:
    """The help text of a dotted key, e.g. help_for('train.lr')."""
    if key == "output_dir":
        return TrainConfig.__dataclass_fields__["output_dir"].metadata["help"]
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise KeyError(key)
    for f in fields_of(section):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(key)


def choices_for(key: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal-typed key, or None for free values."""
    tp = _type_of(key)
    if get_origin(tp) is Literal:
        return tuple(get_args(tp))
    return None


def default_for(key: str) -> Any:
    if key == "output_dir":
        return None
    section, _, name = key.partition(".")
    return getattr(SECTIONS[section](), name)


def _type_of(key: str) -> Any:
    if key == "output_dir":
        return str | None
    section, _, name = key.partition(".")
    return get_type_hints(SECTIONS[section], include_extras=False)[name]


# --------------------------------------------------------------------------- load / save / override


def from_dict(data: dict[str, Any] | None, *, source: str = "config") -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown keys are a ConfigError naming them."""
    data = dict(data or {})
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        raw = data.pop(section, None) or {}
        if not isinstance(raw, dict):
            problems.append(Problem(section, f"must be a mapping of settings, got {raw!r}"))
            raw = {}
        known = {f.name for f in dataclasses.fields(cls)}
        for k in raw:
            if k not in known:
                problems.append(Problem(f"{section}.{k}", f"unknown setting in {source}; "
                                        f"{section} has: {', '.join(sorted(known))}"))
        values = {}
        for k, v in raw.items():
            if k in known:
                try:
                    values[k] = _coerce(f"{section}.{k}", v)
                except ValueError as exc:
                    problems.append(Problem(f"{section}.{k}", str(exc)))
        sections[section] = cls(**values)
    output_dir = data.pop("output_dir", None)
    for k in data:
        problems.append(Problem(k, f"unknown top-level key in {source}; expected model, data, "
                                   "method, train or output_dir"))
    if problems:
        raise ConfigError(problems)
    return TrainConfig(**sections, output_dir=None if output_dir is None else str(output_dir))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> TrainConfig:
    """Load YAML or JSON (by suffix) and apply `key=value` overrides; no path: the defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([Problem("config", f"file {p} does not exist")])
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError([Problem("config", f"{p} is not valid "
                                       f"{'JSON' if p.suffix == '.json' else 'YAML'}: {exc}")])
        if data is not None and not isinstance(data, dict):
            raise ConfigError([Problem("config", f"{p} must hold a mapping with model, data, "
                                                 "method and train sections")])
    cfg = from_dict(data, source=str(path or "config"))
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json":
        p.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    else:
        p.write_text(to_yaml(cfg), encoding="utf-8")
    return p


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.key=value` strings (as typed after --set), converting to each field's type."""
    problems: list[Problem] = []
    data = cfg.to_dict()
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            problems.append(Problem(key or item, "an override must look like section.key=value, "
                                                 "e.g. train.lr=1e-4"))
            continue
        if key not in all_keys():
            section = key.partition(".")[0]
            hint = (f"{section} has: {', '.join(f.name for f in fields_of(section))}"
                    if section in SECTIONS else "sections are model, data, method, train")
            problems.append(Problem(key, f"unknown setting; {hint}"))
            continue
        try:
            value = _coerce(key, yaml.safe_load(text) if text.strip() else None)
        except (ValueError, yaml.YAMLError) as exc:
            problems.append(Problem(key, str(exc)))
            continue
        if key == "output_dir":
            data["output_dir"] = value
        else:
            section, _, name = key.partition(".")
            data[section][name] = value
    if problems:
        raise ConfigError(problems)
    return from_dict(data)


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise ValueError saying what fits."""
    if key == "train.report_to":  # a list, "tensorboard,mlflow", or none / empty
        if value is None or isinstance(value, str):
            value = [] if value is None or value.strip().lower() in ("", "none", "null") else \
                value.split(",")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise ValueError(f"{value!r} is not a list of tracker names ({', '.join(TRACKERS)})")
    if key == "data.columns":
        return _columns(value)
    tp = _type_of(key)
    args = get_args(tp)
    optional = type(None) in args
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")
                         and optional):
        if optional:
            return None
        raise ValueError(f"needs a value (default {default_for(key)!r})")
    inner = [a for a in args if a is not type(None)] if args and get_origin(tp) is not Literal \
        else [tp]
    if key == "method.target_modules" and isinstance(value, str) and value != "all-linear":
        names = [v.strip() for v in value.split(",") if v.strip()]
        if names:
            return names
    for t in inner:
        if get_origin(t) is Literal:
            if value in get_args(t):
                return value
            continue
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on",
                                                            "off", "1", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            continue
        if t is int:
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    continue
            continue
        if t is float:
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    continue
            continue
        if t is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
            continue
        if get_origin(t) is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            continue
    choices = choices_for(key)
    if choices:
        raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
    want = " or ".join(_type_name(t) for t in inner) + (" or null" if optional else "")
    raise ValueError(f"{value!r} is not a valid {want}")


#: the record fields data.columns may map a file's columns to (engine.data.formats reads them)
COLUMN_FIELDS = ("instruction", "input", "output", "system", "prompt", "completion", "messages",
                 "conversations", "text", "chosen", "rejected", "label")


def _columns(value: Any) -> dict[str, str] | None:
    """data.columns from YAML (a mapping) or text ("instruction=question, output=answer";
    empty or none: no mapping); ValueError naming what is wrong and the fields that exist."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none",
                                                                                "null")):
        return None
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            field_name, sep, column = part.replace(":", "=", 1).partition("=")
            if not sep or not field_name.strip() or not column.strip():
                raise ValueError(f"{part.strip()!r} is not field=column; write e.g. "
                                 "instruction=question, output=answer")
            pairs[field_name.strip()] = column.strip()
        value = pairs
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise ValueError(f"{value!r} is not a mapping of field: column names")
    unknown = [k for k in value if k not in COLUMN_FIELDS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a record field; map columns to "
                         f"{', '.join(COLUMN_FIELDS)}")
    return dict(value) or None


def _type_name(t: Any) -> str:
    if get_origin(t) is list:
        return "list of names"
    return {bool: "true/false", int: "integer", float: "number", str: "text"}.get(t, str(t))


# --------------------------------------------------------------------------- validation


def validate(cfg: TrainConfig, *, check_files: bool = True, require_output_dir: bool = False
             ) -> list[Problem]:
    """Every problem with `cfg`, each naming its key and the fix. Empty list: good to go."""
    p: list[Problem] = []
    m, d, meth, t = cfg.model, cfg.data, cfg.method, cfg.train

    # enumerations (from_dict checks these too, but configs can be built in code)
    for key in all_keys():
        choices = choices_for(key)
        if choices is not None:
            section, _, name = key.partition(".")
            value = getattr(getattr(cfg, section), name)
            if value not in choices:
                p.append(Problem(key, f"{value!r} is not one of: {', '.join(choices)}"))

    # model
    if not str(m.name).strip():
        p.append(Problem("model.name", "is empty; give a hub id or a local model folder (run "
                                       "`ftstudio demo-model studio-data/models/demo` for an "
                                       "offline demo)"))
    elif check_files:
        p.extend(_check_model_source(m.name))
    model_cfg = _read_model_config(m.name) if check_files else None

    # data
    p.extend(_check_data_file("data.train", d.train, check_files, required=True))
    if d.validation:
        p.extend(_check_data_file("data.validation", d.validation, check_files, required=False))
    if not 0 <= d.val_fraction < 1:
        p.append(Problem("data.val_fraction", f"{d.val_fraction} must be at least 0 and below 1 "
                                              "(0.1 holds out a tenth)"))
    if d.max_seq_len < 16:
        p.append(Problem("data.max_seq_len", f"{d.max_seq_len} is too small to hold a prompt and "
                                             "a response; use at least 16 (512 is typical)"))
    if model_cfg:
        limit = model_cfg.get("max_position_embeddings")
        extra = meth.num_virtual_tokens if meth.kind in VIRTUAL_TOKEN_METHODS else 0
        if isinstance(limit, int) and d.max_seq_len + extra > limit:
            p.append(Problem("data.max_seq_len", f"{d.max_seq_len}{f' + {extra} virtual tokens' if extra else ''} "
                                                 f"exceeds the model's {limit} positions; use at "
                                                 f"most {limit - extra}"))
    if d.min_tokens < 0:
        p.append(Problem("data.min_tokens", "must be 0 or more"))
    if d.max_tokens is not None and d.max_tokens <= d.min_tokens:
        p.append(Problem("data.max_tokens", f"{d.max_tokens} must be above data.min_tokens "
                                            f"({d.min_tokens}), or empty to keep all lengths"))

    # method
    if meth.kind in ("lora", "dora", "qlora"):
        if meth.r < 1:
            p.append(Problem("method.r", f"{meth.r} must be a positive rank (8-64 is typical)"))
        if meth.alpha <= 0:
            p.append(Problem("method.alpha", f"{meth.alpha} must be positive (often 2 x r)"))
    if not 0 <= meth.dropout < 1:
        p.append(Problem("method.dropout", f"{meth.dropout} must be at least 0 and below 1"))
    if meth.quant_bits not in (4, 8):
        p.append(Problem("method.quant_bits", f"{meth.quant_bits} is not supported; use 4 or 8"))
    elif meth.quant_bits != 4 and meth.kind != "qlora":
        p.append(Problem("method.quant_bits", f"quantizing the base to {meth.quant_bits} bits "
                                              f"only applies to method.kind=qlora (now "
                                              f"{meth.kind}); set method.kind=qlora or leave "
                                              "quant_bits at 4"))
    if meth.kind in VIRTUAL_TOKEN_METHODS and meth.num_virtual_tokens < 1:
        p.append(Problem("method.num_virtual_tokens", "must be at least 1 (20 is typical)"))
    if meth.prompt_init_text and meth.kind != "prompt_tuning":
        p.append(Problem("method.prompt_init_text", f"only applies to prompt_tuning (method is "
                                                    f"{meth.kind}); clear it or switch method"))
    if isinstance(meth.target_modules, str) and meth.target_modules != "all-linear":
        p.append(Problem("method.target_modules", f"{meth.target_modules!r}: use all-linear or a "
                                                  "list of module names like [q_proj, v_proj]"))
    if isinstance(meth.target_modules, list) and not meth.target_modules:
        p.append(Problem("method.target_modules", "is an empty list; name modules or use "
                                                  "all-linear"))
    if model_cfg is not None:
        p.extend(_check_method_for_model(meth, model_cfg))

    # train
    if not (isinstance(t.lr, (int, float)) and math.isfinite(t.lr) and t.lr > 0):
        p.append(Problem("train.lr", f"{t.lr} must be a positive number (2e-4 is typical for "
                                     "LoRA, 2e-5 for full fine-tuning)"))
    elif t.lr >= 1:
        p.append(Problem("train.lr", f"{t.lr} is far too large and will diverge; rates that "
                                     "train run from about 2e-5 (full fine-tuning) through 2e-4 "
                                     "(LoRA) to 3e-2 (prompt tuning): the studio suggests one "
                                     "for your method and model"))
    if t.epochs <= 0 and t.max_steps is None:
        p.append(Problem("train.epochs", f"{t.epochs} must be positive, or set train.max_steps"))
    if t.max_steps is not None and t.max_steps < 1:
        p.append(Problem("train.max_steps", f"{t.max_steps} must be at least 1, or empty to run "
                                            "train.epochs"))
    for key in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        if getattr(t, key) < 1:
            p.append(Problem(f"train.{key}", f"{getattr(t, key)} must be at least 1"))
    if t.batch_tokens is not None and t.batch_tokens < 1:
        p.append(Problem("train.batch_tokens", f"{t.batch_tokens} must be at least 1, or empty "
                                               "to use train.batch_size"))
    for key in ("eval_every", "save_every"):
        if getattr(t, key) < 0:
            p.append(Problem(f"train.{key}", f"{getattr(t, key)} must be 0 (only at the end) or "
                                             "more"))
    if not 0 <= t.warmup_ratio < 1:
        p.append(Problem("train.warmup_ratio", f"{t.warmup_ratio} must be at least 0 and below "
                                               "1 (0.03 is typical)"))
    if t.weight_decay < 0:
        p.append(Problem("train.weight_decay", "must be 0 or more"))
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        p.append(Problem("train.max_grad_norm", "must be positive, or empty for no clipping"))
    if t.early_stopping_patience is not None:
        if t.early_stopping_patience < 1:
            p.append(Problem("train.early_stopping_patience", "must be at least 1, or empty"))
        if not d.validation and d.val_fraction == 0:
            p.append(Problem("train.early_stopping_patience", "needs evaluation: give "
                                                              "data.validation or a "
                                                              "data.val_fraction above 0"))
    p.extend(_check_objective(cfg))
    every = eval_generate_every(t.eval_generate)
    if every is None and t.eval_generate not in ("off", "end"):
        p.append(Problem("train.eval_generate", f"{t.eval_generate!r}: use off, end or "
                                                "'every N' (e.g. every 50)"))
    if every is not None and every < 1:
        p.append(Problem("train.eval_generate", f"{t.eval_generate!r}: N must be at least 1"))
    if t.eval_generate_max < 1:
        p.append(Problem("train.eval_generate_max", f"{t.eval_generate_max} must be at least 1 "
                                                    "(100 is typical)"))
    if t.eval_generate_max_new_tokens is not None and t.eval_generate_max_new_tokens < 1:
        p.append(Problem("train.eval_generate_max_new_tokens", "must be at least 1, or empty"))
    if t.early_stopping_metric.startswith("gen_") and t.early_stopping_patience is not None \
            and not every:
        p.append(Problem("train.early_stopping_metric", f"{t.early_stopping_metric} is measured "
                                                        "only with train.eval_generate 'every "
                                                        "N'; set that, or watch eval_loss"))
    p.extend(_check_trackers(t))
    if t.neftune_alpha is not None and t.neftune_alpha <= 0:
        p.append(Problem("train.neftune_alpha", "must be positive (5 is typical), or empty"))
    if t.optimizer in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit") and not _has("bitsandbytes"):
        p.append(Problem("train.optimizer", f"{t.optimizer} needs bitsandbytes; pip install "
                                            "bitsandbytes or use adamw"))
    if meth.kind == "qlora" and not _has("bitsandbytes"):
        p.append(Problem("method.kind", "qlora needs bitsandbytes; pip install bitsandbytes"))
    if t.resume_from and t.resume_from != "latest" and check_files:
        if not (Path(t.resume_from) / "state.json").is_file():
            p.append(Problem("train.resume_from", f"{t.resume_from} is not a checkpoint folder "
                                                  "(no state.json); point at output_dir/"
                                                  "checkpoints/step-N or use latest"))
    if t.resume_from == "latest" and not cfg.output_dir:
        p.append(Problem("train.resume_from", "latest needs output_dir to find checkpoints in"))

    if require_output_dir and not cfg.output_dir:
        p.append(Problem("output_dir", "is required; e.g. --set output_dir=runs/my-run"))
    return p


#: train.report_to's trackers, and the modules each needs (pip install "ftstudio[trackers]";
#: MLflow's default SQLite store needs SQLAlchemy and Alembic)
TRACKERS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"),
            "wandb": ("wandb",)}


def _check_trackers(t: TrainSection) -> list[Problem]:
    p: list[Problem] = []
    names = t.report_to if isinstance(t.report_to, list) else [t.report_to]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        p.append(Problem("train.report_to", f"{', '.join(map(repr, unknown))}: use a list of "
                                            f"{', '.join(TRACKERS)} (or leave it empty)"))
    if len(set(names)) < len(names):
        p.append(Problem("train.report_to", f"{names}: names a tracker twice"))
    missing = [m for n in dict.fromkeys(names) for m in TRACKERS.get(n, ()) if not _has(m)]
    if missing:
        p.append(Problem("train.report_to", f"{', '.join(missing)} not installed; pip install "
                                            "\"ftstudio[trackers]\""))
    if t.tracker_experiment is not None and not t.tracker_experiment.strip():
        p.append(Problem("train.tracker_experiment", "is blank; give a name or leave it empty "
                                                     "for ftstudio"))
    elif t.tracker_experiment is not None and len(t.tracker_experiment) > 128:
        p.append(Problem("train.tracker_experiment", f"is {len(t.tracker_experiment)} "
                                                     "characters; W&B groups take at most 128"))
    return p


#: objectives trained from (chosen, rejected) pairs, and their data formats
PAIR_OBJECTIVES = ("dpo", "orpo", "simpo")
#: the default train.beta of each preference objective
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}


def _check_objective(cfg: TrainConfig) -> list[Problem]:
    """Wrong combinations of train.objective with its settings, the data format and the method,
    each naming its key."""
    t, p, obj = cfg.train, [], cfg.train.objective
    fmt = cfg.data.format
    wants = "kto" if obj == "kto" else "preference" if obj in PAIR_OBJECTIVES else None
    if wants and fmt not in ("auto", wants):
        p.append(Problem("data.format", f"{fmt} records cannot train train.objective={obj}; "
                                        f"{obj} needs {wants} records (or data.format auto)"))
    if obj == "sft" and fmt in ("preference", "kto"):
        p.append(Problem("train.objective", f"sft cannot learn from {fmt} records; set "
                                            f"train.objective to "
                                            f"{'kto' if fmt == 'kto' else 'dpo, orpo or simpo'}"))
    if obj != "sft" and cfg.method.kind in VIRTUAL_TOKEN_METHODS:
        p.append(Problem("train.objective", f"{obj} is not supported with {cfg.method.kind} "
                                            "(virtual tokens) yet; use lora, dora, qlora, ia3 "
                                            "or full"))
    if t.beta is not None and not (math.isfinite(t.beta) and t.beta > 0):
        p.append(Problem("train.beta", f"{t.beta} must be positive (0.1 is typical), or empty"))
    if not 0 <= t.label_smoothing < 0.5:
        p.append(Problem("train.label_smoothing", f"{t.label_smoothing} must be at least 0 and "
                                                  "below 0.5"))
    elif t.label_smoothing and not (obj == "simpo" or (obj == "dpo" and
                                                         t.dpo_loss_type == "sigmoid")):
        p.append(Problem("train.label_smoothing", f"applies to dpo with dpo_loss_type sigmoid "
                                                  f"and to simpo, not {obj}; set it to 0"))
    if t.dpo_loss_type != "sigmoid" and obj != "dpo":
        p.append(Problem("train.dpo_loss_type", f"applies to train.objective dpo, not {obj}; "
                                                "leave it at sigmoid"))
    if t.simpo_gamma < 0:
        p.append(Problem("train.simpo_gamma", f"{t.simpo_gamma} must be 0 or more"))
    for key in ("kto_desirable_weight", "kto_undesirable_weight"):
        if getattr(t, key) <= 0:
            p.append(Problem(f"train.{key}", f"{getattr(t, key)} must be positive"))
    if t.precompute_reference and obj != "dpo":
        why = ("kto's reference point is measured on each batch's mismatched rows, so it "
               "cannot be computed ahead" if obj == "kto" else f"{obj} has no reference model")
        p.append(Problem("train.precompute_reference", f"applies to dpo only: {why}; set it to "
                                                       "false"))
    return p


def packing_applies(cfg) -> tuple[bool, str]:
    """(whether batches are packed for this config, why not when they are not)."""
    if not cfg.data.packing:
        return False, "data.packing is off"
    if cfg.train.objective == "kto":
        return False, ("kto's reference point pairs each prompt with another record's answer, "
                       "row by row, so each answer keeps a row of its own")
    if cfg.method.kind in VIRTUAL_TOKEN_METHODS:
        return False, (f"{cfg.method.kind} prepends virtual tokens and needs one record per "
                       "row with a plain attention mask")
    return True, ""


def eval_generate_every(value: str) -> int | None:
    """N of train.eval_generate 'every N' (None for off, end, or anything else)."""
    words = str(value).split()
    if len(words) == 2 and words[0] == "every" and words[1].lstrip("-").isdigit():
        return int(words[1])
    return None


def check(cfg: TrainConfig, **kw: Any) -> TrainConfig:
    """validate() and raise ConfigError with every problem; returns cfg when clean."""
    problems = validate(cfg, **kw)
    if problems:
        raise ConfigError(problems)
    return cfg


def is_local_model(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def _check_model_source(name: str) -> list[Problem]:
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists() or \
        name.count("/") != 1
    if not looks_local:
        return []  # a hub id: resolved at load time where a network exists
    if not path.is_dir():
        return [Problem("model.name", f"{name} is neither a local folder nor a hub id "
                                      "(owner/name); run `ftstudio demo-model "
                                      f"{name}` to build the offline demo model there")]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(Problem("model.name", f"{name} has no config.json; it does not look like "
                                              "a saved transformers model"))
    if not list(path.glob("*.safetensors")):
        found = sorted(x.name for x in path.iterdir())[:8]
        problems.append(Problem("model.name", f"{name} has no *.safetensors weights (found: "
                                              f"{', '.join(found) or 'nothing'}); only "
                                              "safetensors are loaded, convert .bin files first"))
    return problems


def _read_model_config(name: str) -> dict | None:
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _check_method_for_model(meth: MethodConfig, model_cfg: dict) -> list[Problem]:
    p = []
    model_type = model_cfg.get("model_type", "?")
    if meth.kind == "prefix_tuning" and model_type in ("gemma2", "gemma3", "qwen3_next"):
        p.append(Problem("method.kind", f"prefix_tuning does not support the {model_type} "
                                        "architecture's cache; use prompt_tuning or lora"))
    return p


def _check_data_file(key: str, path: str | None, check_files: bool, required: bool
                     ) -> list[Problem]:
    if not path:
        return [Problem(key, "is empty; give a .json, .jsonl, .csv or .parquet file")] \
            if required else []
    suffix = Path(path).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        return [Problem(key, f"{path}: unsupported file type {suffix or '(none)'}; use "
                             f"{', '.join(DATA_SUFFIXES)}")]
    if check_files and not Path(path).is_file():
        return [Problem(key, f"{path} does not exist; check the path (relative paths are from "
                             f"{os.getcwd()})")]
    return []


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def reference_markdown() -> str:
    """The README's config reference, generated from the field docs (tests keep it in sync).

    Regenerate with: python -m engine.config
    """
    rows = ["| key | default | what it does |", "| --- | --- | --- |"]
    for key in all_keys():
        default = default_for(key)
        shown = "null" if default is None else json.dumps(default) if not isinstance(
            default, str) else default
        choices = choices_for(key)
        extra = f" One of: {', '.join(choices)}." if choices else ""
        rows.append(f"| `{key}` | `{shown}` | {help_for(key)}{extra} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")

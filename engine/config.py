"""The one training config: four typed sections whose field docs are the help text everywhere.

Use from Python:
    from engine.config import TrainConfig, load_config, validate
    cfg = load_config("run.yaml", overrides=["train.lr=1e-4", "method.kind=qlora"])
    problems = validate(cfg)          # every problem at once, each naming its key and the fix

The UI's labels and tooltips, `ftstudio config --keys` and docs/config.md (`python -m
engine.config`) all read `label_for(key)` and `help_for(key)`, so the text below is the only
place a setting is named and explained.

About 800 lines: the four typed sections with the help text of every field, their coercion and
their validation are the config contract, and live together so a field and its checks are
changed in one place.
"""

from __future__ import annotations

import dataclasses
import functools
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


def _f(default: Any, help: str, *, label: str, **kw: Any) -> Any:
    """A dataclass field whose help text and short form label travel in its metadata (the
    studio's form, `--help` and docs/config.md read them from there: `help_for`, `label_for`)."""
    meta = {"help": help, "label": label, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = _f("studio-data/models/demo",
                   "Base model: a Hugging Face hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local "
                   "folder with config.json, tokenizer files and *.safetensors weights.",
                   label="Base model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Weight dtype when loading: auto picks bfloat16 on GPUs that support it, "
                "float16 on older GPUs and float32 on CPU.", label="Weight dtype")
    trust_remote_code: bool = _f(False, "Run Python code shipped with the model repository. Off "
                                        "by default; only enable it for repositories you trust.",
                                        label="Trust remote code")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) to load; ignored for "
                                    "local folders.", label="Hub revision")
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager"] = _f(
        "auto", "Attention kernel. varlen: packed records as one flat row whose attention runs "
                "per record (flash-attn varlen on CUDA where installed, SDPA per record span "
                "elsewhere), never over what the packing hides. sdpa / eager: PyTorch SDPA or "
                "plain attention, packed rows under a dense block-diagonal mask. auto: varlen "
                "when records are packed, sdpa otherwise; the log says which and why.",
                label="Attention kernel")


@dataclass
class DataConfig:
    train: str = _f("static/examples/alpaca.json",
                    "Training data file: .json (an array of records), .jsonl (one record per "
                    "line), .csv or .parquet.", label="Training file")
    validation: str | None = _f(None, "Validation file in the same formats. When empty, "
                                      "val_fraction of the training records is held out.",
                                      label="Validation file")
    val_fraction: float = _f(0.1, "Share of training records held out for evaluation when no "
                                  "validation file is given (0 turns evaluation off).",
                                  label="Held-out share")
    format: Literal["auto", "alpaca", "chat", "sharegpt", "completion", "text", "preference",
                    "kto"] = _f(
        "auto", "Record format: alpaca (instruction/input/output), chat (messages), sharegpt "
                "(conversations), completion (prompt/completion), text (raw text for continued "
                "pre-training), preference (prompt/chosen/rejected, or messages/chosen/"
                "rejected: pairs for dpo, orpo, simpo), kto (prompt/completion/label), or auto "
                "to detect it from the fields.", label="Record format")
    columns: dict[str, str] | None = _f(
        None, "Which of the file's columns holds each field a record format reads, when the "
              "file names them otherwise: a mapping field: column, e.g. {instruction: question, "
              "output: answer} (or, after --set, instruction=question,output=answer). Fields: "
              "instruction, input, output, system (alpaca); prompt, completion (completion, "
              "kto); messages; conversations; text; chosen, rejected; label. Empty: the file's "
              "own names.", label="Column mapping")
    max_seq_len: int = _f(512, "Longest sequence in tokens; longer records are truncated and "
                               "counted in the data report.", label="Max sequence length")
    train_on_prompt: bool = _f(False, "Also compute loss on prompt and template tokens. Off: only "
                                      "assistant/response tokens are trained.",
                                      label="Train on prompt tokens")
    packing: bool = _f(True, "Pack several records into each sequence (attention never crosses "
                             "records). Turned off automatically for prompt and prefix tuning.",
                             label="Pack sequences")
    on_bad_record: Literal["error", "skip"] = _f(
        "error", "What a malformed record does: error stops with its file, line and field; skip "
                 "leaves it out and counts it in the report.", label="Malformed records")
    dedupe: bool = _f(False, "Drop records that are exact duplicates of an earlier one.",
                             label="Drop duplicates")
    min_tokens: int = _f(0, "Drop records shorter than this many tokens (0 keeps all).",
                            label="Min tokens")
    max_tokens: int | None = _f(None, "Drop (rather than truncate) records longer than this many "
                                      "tokens; empty keeps all.", label="Max tokens (drop longer)")
    order: Literal["shuffle", "shortest_first", "as_is"] = _f(
        "shuffle", "Order of training records: shuffle (by seed, each epoch), shortest_first (a "
                   "simple curriculum), or as_is (file order).", label="Record order")
    system_prompt: str | None = _f(None, "System message added to records that have none.",
                                         label="Default system prompt")


@dataclass
class MethodConfig:
    kind: Literal["lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "ia3", "full"] = _f(
        "lora", "Fine-tuning method: lora, dora (weight-decomposed LoRA), qlora (LoRA over a 4- or "
                "8-bit quantized base), prompt_tuning, prefix_tuning, ia3, or full (all weights).",
                label="Method")
    r: int = _f(16, "LoRA/DoRA/QLoRA rank: the width of the low-rank update.", label="Rank r")
    alpha: float = _f(32, "LoRA scaling numerator: the update is scaled by alpha / r.",
                          label="Alpha")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training.", label="Dropout")
    target_modules: str | list[str] = _f(
        "all-linear", "Modules to adapt: all-linear, or a list of module names such as "
                      "[q_proj, v_proj].", label="Target modules")
    quant_bits: int = _f(4, "QLoRA base quantization: 4 (NF4 with double quantization) or 8.",
                            label="Quantization bits")
    num_virtual_tokens: int = _f(20, "Prompt and prefix tuning: number of virtual tokens learned.",
                                     label="Virtual tokens")
    prompt_init_text: str | None = _f(None, "Prompt tuning: initialise the virtual tokens from "
                                            "this text instead of randomly.",
                                            label="Initialise from text")


#: every method.kind, from its Literal (the one list)
METHODS: tuple[str, ...] = get_args(get_type_hints(MethodConfig)["kind"])


@dataclass
class TrainSection:
    epochs: float = _f(1, "Passes over the training data (ignored when max_steps is set).",
                          label="Epochs")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps; empty: run epochs.",
                                     label="Max steps")
    lr: float = _f(2e-4, "Peak learning rate (after warmup).", label="Learning rate")
    batch_size: int = _f(4, "Sequences per device per forward pass.", label="Batch size")
    batch_tokens: int | None = _f(None, "Size batches by tokens instead of rows: each batch "
                                        "holds as many rows as fit in this many (padded) "
                                        "tokens; empty uses train.batch_size.",
                                        label="Batch tokens")
    grad_accum: int = _f(1, "Forward passes accumulated into one optimizer step; the effective "
                            "batch is batch_size x grad_accum x processes.",
                            label="Gradient accumulation")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "cosine", "Learning-rate schedule after warmup.", label="LR schedule")
    warmup_ratio: float = _f(0.03, "Share of the steps spent warming the learning rate up from 0.",
                                   label="Warmup share")
    weight_decay: float = _f(0.0, "Decoupled weight decay (not applied to biases and norms).",
                                  label="Weight decay")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "lion_8bit",
                       "sgd"] = _f("adamw", "Optimizer; the 8-bit and paged ones come from "
                                            "bitsandbytes and save optimizer memory.",
                                            label="Optimizer")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto", "Mixed precision: auto picks bf16 on GPUs that support it and fp32 on CPU.",
        label="Precision")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: much "
                                             "less memory for about 30% more time.",
                                             label="Gradient checkpointing")
    kernels: Literal["auto", "liger", "none"] = _f(
        "auto", "Fused GPU kernels: auto uses Liger's (RMSNorm, RoPE, MLP, fused "
                "cross-entropy) on CUDA GPUs when liger-kernel is installed (pip install "
                "\"ftstudio[gpu]\"); liger insists on them; none turns them off.",
                label="Fused GPU kernels")
    compile: bool = _f(False, "Compile the model body with torch.compile: faster steps after a "
                              "slow start (the first steps, and new lengths, compile first).",
                              label="torch.compile")
    objective: Literal["sft", "dpo", "orpo", "kto", "simpo", "grpo", "distill"] = _f(
        "sft", "Training objective: sft (next-token loss on the answers), distill (learn the "
               "answers' next-token distributions of train.teacher, mixed with the next-token "
               "loss: engine/training/distill.py), or preference tuning "
               "from pairs of a chosen and a rejected answer: dpo (against a reference: the "
               "base, i.e. the same model with its adapter disabled), orpo (odds ratio plus the "
               "chosen answer's loss, no reference), simpo (length-normalised margin, no "
               "reference), or kto (single answers labelled desirable or not, against the "
               "reference). Pairs need preference data, kto its own format. grpo: "
               "reinforcement learning from train.rewards on sampled answers to prompts "
               "(prompt, chat or alpaca records; see docs/grpo.md).", label="Objective")
    beta: float | None = _f(None, "Preference strength (dpo, kto: how far the tuned model may "
                                  "drift from the reference, 0.1; orpo: the odds-ratio weight, "
                                  "0.1; simpo: the reward scale, 2.0; grpo: the KL penalty "
                                  "against the reference, 0 = none, 0.04 is a common choice). "
                                  "Empty: the objective's default.", label="Preference beta")
    label_smoothing: float = _f(0.0, "For dpo (sigmoid) and simpo: the share of pairs "
                                     "assumed mislabelled (conservative DPO); 0: off.",
                                     label="Label smoothing")
    dpo_loss_type: Literal["sigmoid", "ipo", "hinge"] = _f(
        "sigmoid", "For dpo: the loss of the reward margin: sigmoid (DPO), ipo (squared, length-"
                   "normalised) or hinge.", label="DPO loss")
    simpo_gamma: float = _f(0.5, "For simpo: the target margin between the rewards.",
                                 label="SimPO margin gamma")
    kto_desirable_weight: float = _f(1.0, "For kto: the weight of desirable answers (raise it "
                                          "when they are fewer).", label="KTO desirable weight")
    kto_undesirable_weight: float = _f(1.0, "For kto: the weight of undesirable answers.",
                                            label="KTO undesirable weight")
    precompute_reference: bool = _f(False, "For dpo: compute the reference log-probabilities "
                                           "of every train and eval pair once before training "
                                           "(cached under FTSTUDIO_HOME/cache with the "
                                           "tokenized data), so each step runs the model once "
                                           "instead of twice, and full fine-tuning keeps no "
                                           "frozen copy in memory.", label="Precompute reference")
    rewards: list[dict] = _f(
        [], "For grpo: the reward functions, a weighted list; each {name, weight (default 1), "
            "args}. Built-ins: exact_match, contains, regex, json_valid, numeric_match, "
            "length_penalty; custom ones FILE.FUNCTION, installed by an admin (`ftstudio "
            "rewards ls`). E.g. [{name: numeric_match, args: {column: answer}}, {name: regex, "
            "weight: 0.2, args: {pattern: '^\\d+$', full: true}}]. Other record fields reach "
            "the functions by name, as in TRL.", label="Reward functions")
    num_generations: int = _f(4, "For grpo: completions sampled per prompt (a group; "
                                 "advantages compare within it). train.batch_size x "
                                 "train.grad_accum must be a multiple of it.",
                              label="Completions per prompt")
    max_completion_len: int = _f(256, "For grpo: the most new tokens a sampled completion may "
                                      "have.", label="Max completion tokens")
    temperature: float = _f(1.0, "For grpo: sampling temperature (the log-probs are taken at "
                                 "it too, as TRL does).", label="Temperature")
    top_p: float = _f(1.0, "For grpo: nucleus sampling; 1.0 samples from the whole "
                           "distribution.", label="Top-p")
    grpo_loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = _f(
        "dapo", "For grpo: how token losses are averaged: dapo (over every completion token of "
                "the generation batch, TRL's default), grpo (per completion, then over "
                "completions: favours short right answers), dr_grpo (by a constant, "
                "completions x max_completion_len), bnpo (over the tokens of each "
                "micro-batch).", label="GRPO loss")
    epsilon: float = _f(0.2, "For grpo: the clip range below 1 of the probability ratio (and "
                             "above 1 when epsilon_high is empty).", label="Clip epsilon")
    epsilon_high: float | None = _f(None, "For grpo: the clip range above 1 (DAPO's clip-higher "
                                          "uses 0.28); empty: train.epsilon.",
                                    label="Clip epsilon (high)")
    num_iterations: int = _f(1, "For grpo: optimizer steps taken on each generation batch "
                                "(PPO's epochs; above 1 the ratio to the sampling policy is "
                                "clipped).", label="Passes per generation batch")
    scale_rewards: Literal["group", "batch", "none"] = _f(
        "group", "For grpo: divide advantages by the rewards' standard deviation in each group "
                 "(group), over the batch (batch), or not at all (none: Dr. GRPO's advice).",
        label="Scale rewards")
    teacher: str | None = _f(
        None, "For distill: the teacher model whose outputs the student learns: a hub id, a "
              "local folder (an imported GGUF model is one, under FTSTUDIO_HOME/models), or a "
              "finished job's id (the job's merged model). Its tokenizer must be the "
              "student's.", label="Teacher model")
    distill_loss: Literal["forward_kl", "gkd"] = _f(
        "forward_kl", "For distill: forward_kl (KL(teacher || student) of the temperature-"
                      "softened distributions, times temperature squared, as Hinton et al.) or "
                      "gkd (the generalized Jensen-Shannon divergence of GKD, Agarwal et al. "
                      "2024, with train.gkd_beta; TRL's generalized_jsd_loss), on the answer "
                      "tokens of the data.", label="Distillation loss")
    distill_temperature: float = _f(
        1.0, "For distill: the softmax temperature both models' logits are divided by before "
             "they are compared (above 1 shows the student more of the teacher's runner-up "
             "tokens; 1 to 2 is typical).", label="Distillation temperature")
    distill_alpha: float = _f(
        0.5, "For distill: the weight of the distillation term; the usual next-token loss on "
             "the references gets 1 - alpha (1: learn from the teacher alone).",
        label="Distillation weight")
    gkd_beta: float = _f(
        0.5, "For distill with distill_loss gkd: the interpolation coefficient of the "
             "generalized JSD (0: forward KL, 1: reverse KL, 0.5: symmetric JSD).",
        label="GKD beta")
    teacher_topk_cache: int | None = _f(
        None, "For distill: compute the teacher's top-k log-probabilities at every answer "
              "token once before training (cached under FTSTUDIO_HOME/cache with the tokenized "
              "data) and free the teacher, so it does not stay in memory while the student "
              "trains; the rest of the vocabulary counts as one bucket. k, e.g. 32; empty: the "
              "teacher stays loaded and the full distributions are compared.",
        label="Teacher top-k cache")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this value; empty: no "
                                          "clipping.", label="Max grad norm")
    eval_every: int = _f(50, "Evaluate on the validation split every N optimizer steps (and at "
                             "the end); 0: only at the end.", label="Evaluate every (steps)")
    save_every: int = _f(100, "Save a resumable checkpoint every N optimizer steps (and at the "
                              "end); 0: only at the end.", label="Checkpoint every (steps)")
    keep_checkpoints: int = _f(2, "How many of the newest step checkpoints to keep on disk.",
                                  label="Checkpoints kept")
    early_stopping_patience: int | None = _f(
        None, "Stop when train.early_stopping_metric has not improved for this many "
              "evaluations; the best adapter is kept. Empty: off.", label="Early-stopping patience")
    early_stopping_metric: Literal["eval_loss", "gen_exact_match", "gen_token_f1",
                                   "gen_rouge_l", "gen_chrf", "gen_bleu", "gen_reward"] = _f(
        "eval_loss", "What early stopping watches: eval_loss (lower is better, every "
                     "train.eval_every steps) or a generation metric of train.eval_generate "
                     "every N (higher is better, every N steps; gen_reward: a grpo run's mean "
                     "held-out reward).", label="Early-stopping metric")
    eval_generate: str = _f(
        "end", "Answer held-out prompts greedily with the base and the tuned model and score "
               "the answers against the references (exact match, token F1, ROUGE-L, chrF, "
               "BLEU, with 95% intervals): end (once training ends), every N (also every N "
               "steps, drawn as live curves), or off. Needs a validation split.",
               label="Generation eval")
    eval_generate_max: int = _f(100, "The most held-out records train.eval_generate answers "
                                     "(the first ones of the split).",
                                     label="Generation eval records")
    eval_generate_max_new_tokens: int | None = _f(
        None, "The longest answer train.eval_generate lets a model write, in tokens; empty: "
              "1.25 x the longest reference + 16, at most 256.",
              label="Generation eval max new tokens")
    neftune_alpha: float | None = _f(None, "NEFTune: add uniform noise of this scale to "
                                           "embeddings while training (5 is typical). Empty: off.",
                                           label="NEFTune alpha")
    log_every: int = _f(1, "Report training metrics every N optimizer steps.",
                           label="Log every (steps)")
    report_to: list[str] = _f(
        [], "Also send the metrics (every metrics.jsonl record: loss, lr, throughput, eval and "
            "gen_* metrics) and the config as hyperparameters to these trackers: tensorboard "
            "(event files in output_dir/tb), mlflow (MLFLOW_TRACKING_URI, else a SQLite store "
            "in FTSTUDIO_HOME/mlflow), wandb (output_dir/wandb, offline unless WANDB_API_KEY is "
            "set). A list, or names separated by commas; empty: none. Needs pip install "
            "\"ftstudio[trackers]\"; a tracker that fails is logged once and training goes on.",
            label="Send metrics to")
    tracker_experiment: str | None = _f(
        None, "The MLflow experiment and the W&B group the run is logged under (train.report_to); "
              "empty: ftstudio, or for the jobs of a sweep the sweep's name.",
              label="Experiment / group")
    seed: int = _f(42, "Random seed for data order, the validation split, initialisation and "
                       "dropout.", label="Seed")
    resume_from: str | None = _f(None, "Checkpoint folder to continue from exactly, or 'latest' "
                                       "for the newest under output_dir/checkpoints.",
                                       label="Resume from")


@dataclass
class ParallelConfig:
    strategy: Literal["auto", "ddp", "fsdp"] = _f(
        "auto", "How a job on several GPUs splits the work. ddp: every GPU holds the whole "
                "model, its gradients and optimizer state, and trains on its share of each "
                "batch. fsdp: FSDP2 shards parameters, gradients and optimizer state across "
                "the GPUs (each transformer layer gathered only while it computes), so a model "
                "bigger than one GPU trains. auto: fsdp only when the memory estimate says the "
                "model does not fit one GPU and sharding makes it fit, else ddp; the log says "
                "why.", label="Strategy")
    reshard_after_forward: bool = _f(
        True, "With fsdp, free each layer's gathered parameters after its forward and gather them "
              "again for backward (ZeRO-3-like, least memory). Off: keep them until backward "
              "(ZeRO-2-like: one all-gather fewer per layer, more memory).",
        label="Reshard after forward")
    cpu_offload: bool = _f(
        False, "With fsdp, keep the sharded parameters, gradients and optimizer state in CPU memory "
               "and bring each layer to the GPU only to compute (much less GPU memory, slower "
               "steps; the optimizer steps on the CPU).", label="CPU offload")
    gpus: int = _f(1, "GPUs this job needs. The worker hands it this many free GPUs of its pool "
                      "(the job waits while they are busy) and starts one process per GPU.",
                   label="GPUs")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output_dir: str | None = field(default=None, metadata={
        "help": "Folder for checkpoints, adapter/, metrics.jsonl and run.json. Set by the queue; "
                "required for `ftstudio train`.", "label": "Output folder"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> "TrainConfig":
        return from_dict(self.to_dict())


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
                             "train": TrainSection, "parallel": ParallelConfig}


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: which key, what is wrong, and what to do about it."""

    key: str
    message: str

    def __post_init__(self) -> None:  # never an unbounded value in a message (a hostile config)
        object.__setattr__(self, "key", _cut(str(self.key), 100))
        object.__setattr__(self, "message", _cut(str(self.message), MAX_PROBLEM_CHARS))

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


def _field(key: str) -> dataclasses.Field:
    if key == "output_dir":
        return TrainConfig.__dataclass_fields__["output_dir"]
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise KeyError(key)
    for f in fields_of(section):
        if f.name == name:
            return f
    raise KeyError(key)


def help_for(key: str) -> str:
    """The help text of a dotted key, e.g. help_for('train.lr')."""
    return _field(key).metadata["help"]


def label_for(key: str) -> str:
    """The short form label of a dotted key, e.g. label_for('train.lr') == 'Learning rate'."""
    return _field(key).metadata["label"]


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
    return _hints(SECTIONS[section])[name]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """get_type_hints of a section, once (it evaluates every annotation, ~2 ms a call)."""
    return get_type_hints(cls, include_extras=False)


# --------------------------------------------------------------------------- reading config text
#
# Config text comes from people, some of them hostile (a team server's /submit_job). It is read
# in two passes: a streaming pass over PyYAML's events (no recursion, no objects built) that
# refuses a file too big, nested too deep, whose aliases expand past a small budget ("billion
# laughs"), or that sets a key twice; then the ordinary safe load of what passed.

#: the largest config text read, in characters (a real config is a few hundred)
MAX_CONFIG_CHARS = 256 * 1024
#: the most nesting a config may have (model: {name: ...} is 2; a list value 3)
MAX_CONFIG_DEPTH = 16
#: the most values a config may expand to, each alias counted as everything it repeats
MAX_CONFIG_VALUES = 10_000
#: the most characters of text a config may expand to, aliases counted the same way
MAX_CONFIG_TEXT = 1_000_000
#: the longest a problem's message or key may be; a quoted value is cut shorter (_quote)
MAX_PROBLEM_CHARS = 400


def _quote(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters without ever building the whole of a big value."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else \
        f"{text[:limit - 40]}… ({len(text) - limit + 40} more characters cut)"


def parse_config_text(text: str, source: str = "config", *, as_json: bool = False
                      ) -> dict[str, Any]:
    """The mapping a YAML (or JSON) config text holds, or ConfigError naming every refusal:
    too long, nested deeper than MAX_CONFIG_DEPTH (the key named), aliases that expand past
    MAX_CONFIG_VALUES values or MAX_CONFIG_TEXT characters, a section or key set twice (both
    lines named), not valid YAML/JSON, or not a mapping. Cheap on any input: nothing is built
    until the text has passed."""
    data = _load_text(text, source, as_json=as_json)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("config", f"{source} must hold a mapping with model, data, "
                                             f"method and train sections, not "
                                             f"{_quote(data, 60)}")])
    return data


def _load_text(text: str, source: str, *, as_json: bool = False) -> Any:
    """What a YAML or JSON text holds, after the checks of parse_config_text."""
    text = text or ""
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError([Problem("config", f"{source} is {len(text):,} characters; a config "
                                             f"may have at most {MAX_CONFIG_CHARS:,}")])
    kind = "JSON" if as_json else "YAML"
    try:
        if as_json:
            data = json.loads(text or "{}", object_pairs_hook=_json_pairs(source))
        else:
            _scan_yaml(text, source)
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([Problem("config", f"{source} is not valid {kind}: "
                                             f"{_cut(str(exc), 300)}")]) from None
    except RecursionError:
        raise ConfigError([Problem("config", f"{source} is nested too deeply; a config has "
                                             "sections of settings, a few levels "
                                             "deep")]) from None
    return data


def _json_pairs(source: str):
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ConfigError([Problem(_cut(str(k), 100), f"is set twice in {source}; "
                                                               "the second would silently "
                                                               "replace the first: keep one")])
            out[k] = v
        return out
    return pairs


@dataclass
class _Level:
    """One open mapping or sequence in _scan_yaml."""
    path: str
    is_map: bool
    anchor: str | None
    values_at_start: int
    text_at_start: int
    keys: dict[str, int] = field(default_factory=dict)   # key -> line, in a mapping
    key: Any = None              # the key whose value comes next (a mapping), None: a key next
    index: int = 0               # the next item's index (a sequence)


def _scan_yaml(text: str, source: str) -> None:
    """Walk the YAML's events once and raise ConfigError at the first refusal (see
    parse_config_text). Aliases are counted as the values they stand for."""
    stack: list[_Level] = []
    anchors: dict[str, tuple[int, int]] = {}   # anchor -> (values, characters) it stands for
    values = chars = 0

    def child_path() -> str:
        if not stack:
            return ""
        top = stack[-1]
        if top.is_map:
            if top.key is None:
                return top.path
            return f"{top.path}.{top.key}" if top.path else str(top.key)
        return f"{top.path}[{top.index}]"

    def after_value() -> None:
        if stack:
            if stack[-1].is_map:
                stack[-1].key = None
            else:
                stack[-1].index += 1

    def refuse(path: str, message: str) -> None:  # the key named, without list positions
        raise ConfigError([Problem(path.split("[")[0] or "config", message)])

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        top = stack[-1] if stack else None
        wants_key = top is not None and top.is_map and top.key is None
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            n, c = anchors.get(event.anchor, (1, 0))
            values, chars = values + n, chars + c
            if wants_key:
                top.key = f"*{event.anchor}"
            else:
                after_value()
        elif isinstance(event, yaml.ScalarEvent):
            values, chars = values + 1, chars + len(event.value)
            if event.anchor:
                anchors[event.anchor] = (1, len(event.value))
            if wants_key:
                name = event.value
                if name in top.keys and name != "<<":
                    where = f"{top.path}.{name}" if top.path else name
                    what = "section" if not top.path else "key"
                    refuse(where, f"this {what} appears twice in {source} (lines "
                                  f"{top.keys[name]} and {line}); the second would silently "
                                  f"replace the first: merge them into one")
                top.keys[name] = line
                top.key = name
            else:
                after_value()
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if wants_key:
                refuse(top.path, f"line {line}: a key must be a plain name, not a "
                                 f"{'mapping' if isinstance(event, yaml.MappingStartEvent) else 'list'}")
            values += 1
            path = child_path()
            if len(stack) + 1 > MAX_CONFIG_DEPTH:
                refuse(path, f"is nested more than {MAX_CONFIG_DEPTH} levels deep (line "
                             f"{line}); a config's values are plain values or short lists")
            stack.append(_Level(path, isinstance(event, yaml.MappingStartEvent), event.anchor,
                                values - 1, chars))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            done = stack.pop()
            if done.anchor:
                anchors[done.anchor] = (values - done.values_at_start, chars - done.text_at_start)
            after_value()
        if values > MAX_CONFIG_VALUES or chars > MAX_CONFIG_TEXT:
            refuse(child_path() or "config",
                   f"{source} holds more than {MAX_CONFIG_VALUES:,} values or "
                   f"{MAX_CONFIG_TEXT:,} characters by line {line}, counting each alias as "
                   "all it repeats; a config needs far fewer: write the values out, without "
                   "nested anchors and aliases")


# --------------------------------------------------------------------------- load / save / override


def from_dict(data: dict[str, Any] | None, *, source: str = "config") -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown keys are a ConfigError naming them."""
    data = dict(data or {})
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        raw = data.pop(section, None) or {}
        if not isinstance(raw, dict):
            problems.append(Problem(section, f"must be a mapping of settings, got "
                                             f"{_quote(raw)}"))
            raw = {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in raw if k not in known]
        for k in unknown[:10]:
            problems.append(Problem(f"{section}.{k}", f"unknown setting in {source}; "
                                    f"{section} has: {', '.join(sorted(known))}"))
        if len(unknown) > 10:
            problems.append(Problem(section, f"{len(unknown) - 10} more unknown settings in "
                                             f"{source}"))
        values = {}
        for k, v in raw.items():
            if k in known:
                try:
                    values[k] = _coerce(f"{section}.{k}", v)
                except ValueError as exc:
                    problems.append(Problem(f"{section}.{k}", str(exc)))
        sections[section] = cls(**values)
    output_dir = data.pop("output_dir", None)
    for k in list(data)[:10]:
        problems.append(Problem(k, f"unknown top-level key in {source}; expected "
                                   f"{', '.join(SECTIONS)} or output_dir"))
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
        if p.stat().st_size > 4 * MAX_CONFIG_CHARS:   # never read a huge file whole
            raise ConfigError([Problem("config", f"{p} is {p.stat().st_size:,} bytes; a config "
                                                 f"may have at most {MAX_CONFIG_CHARS:,}")])
        data = parse_config_text(p.read_text(encoding="utf-8"), str(p),
                                 as_json=p.suffix == ".json")
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
                    if section in SECTIONS else f"sections are {', '.join(SECTIONS)}")
            problems.append(Problem(key, f"unknown setting; {hint}"))
            continue
        try:
            value = _override_value(key, text)
            if isinstance(value, bool) and _takes_words(key):  # YAML reads off/on/yes/no as
                value = text.strip()                            # booleans: keep the word
            value = _coerce(key, value)
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


def _override_value(key: str, text: str) -> Any:
    """The YAML value of one `key=value` override, read as safely as a config file."""
    if not text.strip():
        return None
    return _load_text(text, f"the value of {key}")


def _takes_words(key: str) -> bool:
    """Whether the field holds text rather than a boolean (train.eval_generate: off, end,
    every N), so a YAML boolean word typed for it means the word."""
    tp = _type_of(key)
    kinds = [a for a in get_args(tp) if a is not type(None)] or [tp]
    return bool not in kinds and any(k is str or get_origin(k) is Literal for k in kinds)


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise ValueError saying what fits."""
    if key == "train.rewards":   # a list of {name, weight, args}, names, or YAML text of one
        if isinstance(value, str):
            value = [] if not value.strip() or value.strip().lower() in ("none", "null") \
                else yaml.safe_load(value)
        if value is None:
            return []
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        raise ValueError(f"{value!r} is not a list of reward functions, e.g. "
                         "[{name: exact_match, args: {column: answer}}]")
    if key == "train.report_to":  # a list, "tensorboard,mlflow", or none / empty
        if value is None or isinstance(value, str):
            value = [] if value is None or value.strip().lower() in ("", "none", "null") else \
                value.split(",")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise ValueError(f"{_quote(value)} is not a list of tracker names "
                         f"({', '.join(TRACKERS)})")
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
            if isinstance(value, bool):  # `eval_generate: off` in a YAML file reads as False
                return "on" if value else "off"
            if isinstance(value, (str, int, float)):
                return str(value)
            continue
        if get_origin(t) is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            continue
    choices = choices_for(key)
    if choices:
        raise ValueError(f"{_quote(value)} is not one of: {', '.join(choices)}")
    want = " or ".join(_type_name(t) for t in inner) + (" or null" if optional else "")
    raise ValueError(f"{_quote(value)} is not a valid {want}")


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
    bounds = _check_bounds(cfg)     # ranges and lengths; a too-long path is never looked up
    too_long = {q.key for q in bounds if "characters long" in q.message}

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
    elif check_files and "model.name" not in too_long:
        p.extend(_check_model_source(m.name))
    model_cfg = _read_model_config(m.name) if check_files and not too_long else None

    # data
    p.extend(_check_data_file("data.train", d.train, check_files and not too_long,
                              required=True))
    if d.validation:
        p.extend(_check_data_file("data.validation", d.validation,
                                  check_files and not too_long, required=False))
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
    p.extend(_check_parallel(cfg))
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
    named = {q.key for q in p} - too_long  # a key's own message first, the range where none
    return [q for q in p if q.key not in too_long] + [q for q in bounds if q.key not in named]


#: the sane range of each numeric key, (lowest, highest, what is typical): validate() refuses a
#: value outside it naming the key, so nothing absurd (train.max_steps: 10**30, method.r: 1e9)
#: reaches the queue. A numeric key missing here must still be finite and within NUMERIC_LIMIT.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "data.val_fraction": (0, 0.99, "0.1 holds out a tenth"),
    "data.max_seq_len": (16, 1 << 20, "512 to 8192 is typical"),
    "data.min_tokens": (0, 1 << 20, "0 keeps all"),
    "data.max_tokens": (1, 1 << 20, "empty keeps all"),
    "method.r": (1, 4096, "8 to 64 is typical"),
    "method.alpha": (1e-6, 1e5, "often 2 x r"),
    "method.dropout": (0, 0.99, "0.05 is typical"),
    "method.num_virtual_tokens": (1, 4096, "20 is typical"),
    "method.quant_bits": (4, 8, "4 or 8"),
    "train.epochs": (1e-6, 10_000, "1 to 5 is typical"),
    "train.max_steps": (1, 100_000_000, "empty runs train.epochs"),
    "train.lr": (1e-12, 1, "2e-4 is typical for LoRA, 2e-5 for full fine-tuning"),
    "train.batch_size": (1, 65_536, "1 to 64 is typical"),
    "train.batch_tokens": (1, 100_000_000, "empty uses train.batch_size"),
    "train.grad_accum": (1, 65_536, "1 to 64 is typical"),
    "train.warmup_ratio": (0, 0.99, "0.03 is typical"),
    "train.weight_decay": (0, 10, "0 to 0.1 is typical"),
    "train.beta": (1e-9, 1000, "0.1 is typical"),
    "train.label_smoothing": (0, 0.49, "0 is typical"),
    "train.simpo_gamma": (0, 100, "0.5 is typical"),
    "train.kto_desirable_weight": (1e-9, 1000, "1 is typical"),
    "train.kto_undesirable_weight": (1e-9, 1000, "1 is typical"),
    "train.max_grad_norm": (1e-9, 1e6, "1.0 is typical; empty: no clipping"),
    "train.eval_every": (0, 100_000_000, "0: only at the end"),
    "train.save_every": (0, 100_000_000, "0: only at the end"),
    "train.keep_checkpoints": (1, 10_000, "2 is typical"),
    "train.early_stopping_patience": (1, 1_000_000, "3 to 10 is typical"),
    "train.eval_generate_max": (1, 1_000_000, "100 is typical"),
    "train.eval_generate_max_new_tokens": (1, 65_536, "empty: from the references"),
    "train.neftune_alpha": (1e-9, 1000, "5 is typical"),
    "train.log_every": (1, 100_000_000, "1 is typical"),
    "train.seed": (0, (1 << 32) - 1, "42"),
    "parallel.gpus": (1, 1024, "1; 2 to 8 to shard with FSDP"),
    "train.num_generations": (2, 1024, "4 to 16 is typical"),
    "train.max_completion_len": (1, 1 << 20, "64 to 1024 is typical"),
    "train.temperature": (1e-6, 100, "1.0 is typical"),
    "train.top_p": (1e-6, 1, "1.0 is typical"),
    "train.epsilon": (1e-6, 0.99, "0.2 is typical"),
    "train.epsilon_high": (1e-6, 10, "0.28 in DAPO; empty: train.epsilon"),
    "train.num_iterations": (1, 1000, "1 is typical"),
    "train.distill_temperature": (1e-3, 100, "1 to 2 is typical"),
    "train.distill_alpha": (0, 1, "0.5 is typical"),
    "train.gkd_beta": (0, 1, "0.5 is symmetric JSD"),
    "train.teacher_topk_cache": (1, 1 << 20, "32 is typical; empty keeps the teacher loaded"),
}
#: the bound of a numeric key without its own entry in BOUNDS
NUMERIC_LIMIT = 1e12
#: the longest text setting, in characters (paths, names); the prompts may be longer
MAX_TEXT_SETTING = 4096
LONG_TEXT_KEYS = {"data.system_prompt": 65_536, "method.prompt_init_text": 65_536}


def _numeric(key: str) -> bool:
    tp = _type_of(key)
    kinds = [a for a in get_args(tp) if a is not type(None)] or [tp]
    return any(k in (int, float) for k in kinds)


def _check_bounds(cfg: TrainConfig) -> list[Problem]:
    """Every numeric key outside its BOUNDS (or not finite), and every text key too long, each
    naming the key, its range and what is typical."""
    p: list[Problem] = []
    for key in all_keys():
        if key == "output_dir":
            value = cfg.output_dir
        else:
            section, _, name = key.partition(".")
            value = getattr(getattr(cfg, section), name)
        if isinstance(value, str):
            limit = LONG_TEXT_KEYS.get(key, MAX_TEXT_SETTING)
            if len(value) > limit:
                p.append(Problem(key, f"is {len(value):,} characters long; at most {limit:,}"))
            continue
        if value is None or isinstance(value, bool) or not _numeric(key) or \
                not isinstance(value, (int, float)):
            continue
        lo, hi, typical = BOUNDS.get(key, (-NUMERIC_LIMIT, NUMERIC_LIMIT, ""))
        finite = not isinstance(value, float) or math.isfinite(value)
        if not finite or not lo <= value <= hi:
            shown = _quote(value, 40) if finite else str(value)
            p.append(Problem(key, f"{shown} is out of range: use {_g(lo)} to {_g(hi)}"
                                  f"{f' ({typical})' if typical else ''}"))
    return p


def _g(x: float) -> str:
    return f"{x:,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


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


def objective_format_problem(objective: str, fmt: str) -> Problem | None:
    """Whether records of data.format `fmt` can train `objective`: the one rule, checked by
    validate() on the configured format and by the train loop again once data.format auto has
    been detected (engine/training/loop.py)."""
    wants = "kto" if objective == "kto" else "preference" if objective in PAIR_OBJECTIVES \
        else None
    if wants and fmt not in ("auto", wants):
        fields = "prompt, completion, label" if wants == "kto" else "prompt, chosen, rejected"
        return Problem("data.format", f"the records are {fmt}, but train.objective={objective} "
                                      f"needs {wants} records ({fields})")
    if objective in ("sft", "distill") and fmt in ("preference", "kto"):
        return Problem("train.objective", f"{objective} cannot learn from {fmt} records (preference "
                                          "data); set train.objective to "
                                          f"{'kto' if fmt == 'kto' else 'dpo, orpo or simpo'}")
    return None


def _check_objective(cfg: TrainConfig) -> list[Problem]:
    """Wrong combinations of train.objective with its settings, the data format and the method,
    each naming its key."""
    t, p, obj = cfg.train, [], cfg.train.objective
    problem = objective_format_problem(obj, cfg.data.format)
    if problem:
        p.append(problem)
    p.extend(_check_distill(cfg))
    if obj != "sft" and cfg.method.kind in VIRTUAL_TOKEN_METHODS:
        p.append(Problem("train.objective", f"{obj} is not supported with {cfg.method.kind} "
                                            "(virtual tokens) yet; use lora, dora, qlora, ia3 "
                                            "or full"))
    if t.beta is not None and obj == "grpo" and not (math.isfinite(t.beta) and t.beta >= 0):
        p.append(Problem("train.beta", f"{t.beta} must be 0 or more for grpo (0.04 is a "
                                       "common choice), or empty for 0"))
    elif t.beta is not None and obj != "grpo" and not (math.isfinite(t.beta) and t.beta > 0):
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
    p.extend(_check_grpo(cfg))
    if t.precompute_reference and obj != "dpo":
        why = ("kto's reference point is measured on each batch's mismatched rows, so it "
               "cannot be computed ahead" if obj == "kto" else f"{obj} has no reference model")
        p.append(Problem("train.precompute_reference", f"applies to dpo only: {why}; set it to "
                                                       "false"))
    return p


#: what FSDP (parallel.strategy=fsdp) trains: methods whose weights shard layer by layer
FSDP_METHODS = ("lora", "dora", "qlora", "full")


def _check_parallel(cfg: TrainConfig) -> list[Problem]:
    """parallel.*: GPU count, and the combinations FSDP cannot train (PEFT's FSDP guide)."""
    par, meth, t = cfg.parallel, cfg.method, cfg.train
    p: list[Problem] = []
    if not isinstance(par.gpus, int) or par.gpus < 1:
        p.append(Problem("parallel.gpus", f"{par.gpus} must be at least 1 (1: one GPU, or the "
                                          "CPU on a machine without GPUs)"))
    if par.strategy != "fsdp":
        for key in ("cpu_offload",):
            if getattr(par, key):
                p.append(Problem(f"parallel.{key}", f"only applies to parallel.strategy=fsdp "
                                                    f"(now {par.strategy}); set the strategy to "
                                                    "fsdp or turn it off"))
        return p
    if meth.kind not in FSDP_METHODS:
        p.append(Problem("parallel.strategy", f"fsdp trains method.kind {', '.join(FSDP_METHODS)}; "
                                              f"{meth.kind} is not sharded (its few weights fit "
                                              "every GPU): use ddp"))
    if meth.kind == "qlora" and meth.quant_bits != 4:
        p.append(Problem("method.quant_bits", "fsdp shards QLoRA's 4-bit base only (8-bit "
                                              "bitsandbytes weights cannot be sharded); use "
                                              "quant_bits 4, or parallel.strategy ddp"))
    if t.optimizer in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit"):
        p.append(Problem("train.optimizer", f"{t.optimizer} keeps bitsandbytes' 8-bit (and "
                                            "paged) state that FSDP cannot shard or checkpoint "
                                            "(PEFT documents it as broken with FSDP); use adamw "
                                            "(with parallel.cpu_offload for less GPU memory)"))
    if t.objective != "sft":
        p.append(Problem("train.objective", f"{t.objective} under fsdp is not supported yet "
                                            "(its reference forward would run on one process); "
                                            "use objective sft, or parallel.strategy ddp"))
    if eval_generate_every(t.eval_generate):
        p.append(Problem("train.eval_generate", f"{t.eval_generate!r}: generating answers while "
                                                "training needs the whole model in one "
                                                "process, which fsdp never holds; use off (or "
                                                "end, which fsdp skips: score the job "
                                                "afterwards with `ftstudio eval JOB`), or "
                                                "parallel.strategy ddp"))
    if t.compile:
        p.append(Problem("train.compile", "torch.compile over FSDP-sharded layers is not "
                                          "supported here; turn it off under fsdp"))
    return p


#: data formats GRPO reads prompts from (engine/data/prompts.py)
GRPO_FORMATS = ("auto", "completion", "chat", "alpaca")


def _check_grpo(cfg: TrainConfig) -> list[Problem]:
    """GRPO's settings (train.rewards and the sampling and loss settings), each naming its key."""
    t, p, fmt = cfg.train, [], cfg.data.format
    if t.objective != "grpo":
        if t.rewards:
            p.append(Problem("train.rewards", f"applies to train.objective grpo, not "
                                              f"{t.objective}; clear it or set the objective "
                                              "to grpo"))
        return p
    from engine.training.rewards import spec_problems

    if not t.rewards:
        p.append(Problem("train.rewards", "grpo needs at least one reward function, e.g. "
                                          "[{name: exact_match, args: {column: answer}}]"))
    p.extend(Problem("train.rewards", m) for m in spec_problems(t.rewards))
    if fmt not in GRPO_FORMATS:
        p.append(Problem("data.format", f"{fmt} records hold no prompts for grpo; use auto, "
                                        "completion (prompt records), chat or alpaca"))
    if t.num_generations < 2:
        p.append(Problem("train.num_generations", f"{t.num_generations}: grpo compares "
                                                  "completions of the same prompt, so it needs "
                                                  "at least 2 (4 to 16 is typical)"))
    elif (t.batch_size * t.grad_accum) % t.num_generations:
        p.append(Problem("train.num_generations", f"train.batch_size x train.grad_accum = "
                                                  f"{t.batch_size * t.grad_accum} completions "
                                                  f"is not a multiple of {t.num_generations}; "
                                                  "each generation batch holds whole groups"))
    if t.max_completion_len < 1:
        p.append(Problem("train.max_completion_len", "must be at least 1 token"))
    elif t.max_completion_len > cfg.data.max_seq_len - 8:
        p.append(Problem("train.max_completion_len", f"{t.max_completion_len} leaves no room "
                                                     f"for the prompt in data.max_seq_len "
                                                     f"{cfg.data.max_seq_len}; raise that or "
                                                     "lower this"))
    if not (math.isfinite(t.temperature) and t.temperature > 0):
        p.append(Problem("train.temperature", f"{t.temperature} must be above 0 (1.0 samples "
                                              "the model's own distribution)"))
    if not 0 < t.top_p <= 1:
        p.append(Problem("train.top_p", f"{t.top_p} must be above 0 and at most 1"))
    if not 0 < t.epsilon < 1:
        p.append(Problem("train.epsilon", f"{t.epsilon} must be above 0 and below 1 (0.2 is "
                                          "typical)"))
    if t.epsilon_high is not None and not 0 < t.epsilon_high < 10:
        p.append(Problem("train.epsilon_high", f"{t.epsilon_high} must be positive (0.28 in "
                                               "DAPO), or empty"))
    if t.num_iterations < 1:
        p.append(Problem("train.num_iterations", f"{t.num_iterations} must be at least 1"))
    if t.early_stopping_patience is not None and t.early_stopping_metric == "eval_loss":
        p.append(Problem("train.early_stopping_metric", "grpo has no eval loss; watch "
                                                        "gen_reward (with train.eval_generate "
                                                        "'every N')"))
    return p


def _check_distill(cfg: TrainConfig) -> list[Problem]:
    """train.objective distill and its settings: a teacher that exists and shares the student's
    tokenizer, sane temperature, weights and k."""
    t, p = cfg.train, []
    distill = t.objective == "distill"
    if distill and not t.teacher:
        p.append(Problem("train.teacher", "is empty; distill needs a teacher: a hub id, a local "
                                          "model folder, or a finished job's id"))
    if not distill:
        changed = [k for k in ("teacher", "teacher_topk_cache") if getattr(t, k) is not None]
        changed += [k for k in ("distill_loss", "distill_temperature", "distill_alpha",
                                "gkd_beta") if getattr(t, k) != default_for(f"train.{k}")]
        for key in changed:
            p.append(Problem(f"train.{key}", f"applies to train.objective distill, not "
                                             f"{t.objective}; set train.objective: distill or "
                                             "leave it at its default"))
    if not (math.isfinite(t.distill_temperature) and t.distill_temperature > 0):
        p.append(Problem("train.distill_temperature", f"{t.distill_temperature} must be "
                                                      "positive (1 to 2 is typical)"))
    if not 0 <= t.distill_alpha <= 1:
        p.append(Problem("train.distill_alpha", f"{t.distill_alpha} must be between 0 and 1"))
    if not 0 <= t.gkd_beta <= 1:
        p.append(Problem("train.gkd_beta", f"{t.gkd_beta} must be between 0 and 1 (0.5: "
                                           "symmetric JSD)"))
    if distill and t.gkd_beta != 0.5 and t.distill_loss != "gkd":
        p.append(Problem("train.gkd_beta", "applies to train.distill_loss gkd; set that, or "
                                           "leave gkd_beta at 0.5"))
    if t.teacher_topk_cache is not None and t.teacher_topk_cache < 1:
        p.append(Problem("train.teacher_topk_cache", f"{t.teacher_topk_cache} must be at least "
                                                     "1 (32 is typical), or empty"))
    job_id = bool(t.teacher) and len(t.teacher) == 10 and \
        all(c in "0123456789abcdef" for c in t.teacher) and not Path(t.teacher).exists()
    if distill and t.teacher and not job_id:   # a job's id: the queue puts its model in place
        p.extend(Problem("train.teacher", x.message) for x in _check_model_source(t.teacher))
        why = tokenizer_mismatch(cfg.model.name, t.teacher)
        if why:
            p.append(Problem("train.teacher", why))
    return p


def tokenizer_mismatch(student: str, teacher: str) -> str | None:
    """Why the two local models' tokenizers differ (read from tokenizer.json / config.json), or
    None when they match or cannot be read here (engine.training.distill checks the loaded
    tokenizers again)."""
    def vocab(name: str):
        path = Path(name).expanduser() / "tokenizer.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        model = data.get("model") or {}
        return model.get("vocab"), [t.get("content") for t in data.get("added_tokens") or []]

    a, b = vocab(student), vocab(teacher)
    if a is None or b is None:
        return None
    if a != b:
        return (f"the teacher {teacher} and the student {student} (model.name) have different "
                f"tokenizers (the student's vocabulary has {len(a[0] or {})} tokens, the "
                f"teacher's {len(b[0] or {})}); distillation compares distributions token by token, so pick a "
                "teacher of the student's family")
    return None


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
    if not looks_local:  # a hub id: resolved at load time where a network exists
        return _check_hub_id(name)
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


def _check_hub_id(name: str) -> list[Problem]:
    """A hub id that can never name a repository (huggingface_hub's rules: letters, digits,
    - _ . only, no -- or .., at most 96 characters a part) is refused here, not by a worker."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return [Problem("model.name", f"{_quote(name)} is not a valid hub id: use owner/name "
                                      "with letters, digits, '-', '_' or '.' (no '--' or '..', "
                                      "at most 96 characters each), e.g. "
                                      "Qwen/Qwen2.5-0.5B-Instruct, or a local model folder")]
    return []


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


#: what each section of the config is for (the headings of docs/config.md)
SECTION_DOCS = {
    "model": "The base model and how it is loaded.",
    "data": "The training and validation files, their format, and what is kept of them.",
    "method": "The fine-tuning method and its settings.",
    "train": "The optimisation, the objective, evaluation, checkpoints and trackers.",
    "parallel": "How a job spreads over GPUs: how many it asks for, DDP or FSDP sharding, "
                "CPU offload (docs/sharding.md).",
    "output_dir": "Where the run writes its files.",
}


def reference_markdown() -> str:
    """docs/config.md: every key with its label, default, help text and choices, generated from
    the fields' metadata (tests/test_docs.py fails when the file is stale).

    Regenerate with: python -m engine.config > docs/config.md   (or python -m app.docs)
    """
    def shown(key: str) -> str:
        default = default_for(key)
        if default is None:
            return "null"
        return default if isinstance(default, str) else json.dumps(default)

    out = ["# Config reference", "",
           "<!-- Generated from the config fields' metadata (engine/config.py) by "
           "`python -m app.docs`: do not edit by hand. -->", "",
           "One config in sections, the same in YAML files, `--set key=value` overrides, "
           "the studio's Train form and the queue; `static/examples/demo.yaml` is a complete "
           "example. `validate()` reports every problem at once, each naming its key and the "
           "fix. Each key below shows its label in the studio's form, its default and, for "
           "keys with a fixed set of values, the values it takes.", "",
           "| key | label | default |", "| --- | --- | --- |"]
    out += [f"| [`{k}`](#{k.replace('.', '')}) | {label_for(k)} | `{shown(k)}` |"
            for k in all_keys()]
    undocumented = {k.split(".")[0] for k in all_keys()} - set(SECTION_DOCS)
    assert not undocumented, f"SECTION_DOCS has no text for the section(s) {undocumented}"
    for section, what in SECTION_DOCS.items():
        out += ["", f"## {section}", "", what]
        for key in (k for k in all_keys() if k.split(".")[0] == section):
            choices = choices_for(key)
            out += ["", f"### {key}", "", f"**{label_for(key)}** · default `{shown(key)}`"
                    + (f" · one of: {', '.join(f'`{c}`' for c in choices)}" if choices else ""),
                    "", help_for(key)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")

"""Defaults that fit the model: a learning rate, a number of epochs and a max_seq_len suggested
from the base model, the method and the data report, each with the reason it was chosen.

Use from Python:
    from engine.models.recipes import suggest
    s = suggest("Qwen/Qwen2.5-0.5B-Instruct", "lora", report)  # report: a DataReport or its dict
    s["train.lr"].value, s["train.lr"].reason   # 0.0002, 'lr 2e-4: LoRA-family default for ...'

Nothing here loads weights or tokenizes; the model's config.json is read (engine.models.catalog.
read_config, never downloading) only when `model_config` is not given. The studio's Train form
takes these values for the fields the user has not edited (app/studio/handlers.py).

The demo model (random weights: its config.json carries `ftstudio_demo`, or it is the folder
engine.models.catalog.demo_dir()) gets the settings of static/examples/demo.yaml (DEMO_SETTINGS). Any
other model is taken to be pretrained:

Learning rate (peak, after warmup, AdamW) by method:

| method | lr | source |
| --- | --- | --- |
| lora, dora, qlora | 2e-4 | [1], [2] |
| lora, dora, qlora, 20B+ parameters | 1e-4 | [1] |
| full | 2e-5 | [3] |
| prompt_tuning | 3e-2 | [4] |
| prefix_tuning | 1e-2 | [5] |
| ia3 | 3e-3 | [6] |

[1] QLoRA (Dettmers et al. 2023): 2e-4 for its 7B and 13B models, 1e-4 for 33B and 65B; its
    scripts, e.g. artidoro/qlora scripts/finetune_guanaco_7b.sh: `--learning_rate 0.0002`.
[2] DoRA (Liu et al. 2024): its own scripts use 1e-4 to 2e-4 (NVlabs/DoRA
    commonsense_reasoning/llama2_7B_DoRA.sh, llama3_8B_DoRA.sh).
[3] Stanford Alpaca (tatsu-lab/stanford_alpaca README): LLaMA-7B fully fine-tuned at 2e-5.
[4] peft's prompt-based methods guide (docs/source/task_guides/prompt_based_methods.md):
    `lr = 3e-2` with AdamW.
[5] peft's prefix tuning guide (docs/source/task_guides/seq2seq-prefix-tuning.md): `lr = 1e-2`.
[6] (IA)3 / T-Few (Liu et al. 2022) and its code (r-three/t-few configs/ia3.json:
    `"lr": 3e-3`, with Adafactor); peft's IA3 guide (task_guides/ia3.md) uses 8e-3 with AdamW.

Epochs by the number of training records (a heuristic: small sets need a few passes to take
enough optimizer steps; on large ones one pass is already thousands of steps and more passes
mostly memorise): fewer than 1,000 -> 3; 1,000 to 9,999 -> 2; 10,000 or more -> 1.

max_seq_len: the data's 99th-percentile length in tokens, rounded up to a multiple of 64, at
least 128, and at most the model's max_position_embeddings (minus the virtual tokens of prompt
and prefix tuning). Without a token-counted report (no data yet, or no tokenizer offline, when
lengths are counted in words) it is the config default, 512, under the same cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import VIRTUAL_TOKEN_METHODS
from engine.data import DataReport

#: the keys suggested, in the order they are shown
KEYS = ("train.lr", "train.epochs", "data.max_seq_len")

#: the demo model's settings: those of static/examples/demo.yaml
DEMO_SETTINGS = {"train.lr": 3e-3, "train.epochs": 15, "data.max_seq_len": 128}
DEMO_REASON = "demo model: random weights need a high rate and many epochs"
DEMO_SEQ_REASON = "demo model: the bundled examples fit in 128 tokens"

LORA_FAMILY = ("lora", "dora", "qlora")
#: method -> (lr, why), for a pretrained base model (sources in the module docstring)
LR_BY_METHOD: dict[str, tuple[float, str]] = {
    "lora": (2e-4, "LoRA-family default for a pretrained model (QLoRA paper, peft examples)"),
    "dora": (2e-4, "LoRA-family default for a pretrained model (QLoRA paper; DoRA's scripts "
                   "use 1e-4 to 2e-4)"),
    "qlora": (2e-4, "LoRA-family default for a pretrained model (QLoRA paper, peft examples)"),
    "full": (2e-5, "full fine-tuning moves every weight, so a rate 10x below LoRA's "
                   "(Stanford Alpaca: 2e-5)"),
    "prompt_tuning": (3e-2, "prompt tuning trains only a few virtual tokens and needs a high "
                            "rate (peft's prompt tuning examples: 3e-2)"),
    "prefix_tuning": (1e-2, "prefix tuning trains only the prefixes and needs a high rate "
                            "(peft's prefix tuning example: 1e-2)"),
    "ia3": (3e-3, "IA3 trains only scaling vectors (the IA3 / T-Few paper: 3e-3)"),
}
#: LoRA-family models at least this large get BIG_LORA_LR (QLoRA: 1e-4 for 33B and 65B)
BIG_MODEL_PARAMS = 20_000_000_000
BIG_LORA_LR = 1e-4

#: (records below this, epochs); at or above the last bound: LARGE_EPOCHS
EPOCHS_BY_SIZE = ((1_000, 3), (10_000, 2))
LARGE_EPOCHS = 1

SEQ_MULTIPLE = 64
SEQ_FLOOR = 128
SEQ_DEFAULT = 512          # engine.config's data.max_seq_len default


@dataclass(frozen=True)
class Suggestion:
    """One suggested setting: the config key, its value, and why (one line for people)."""

    key: str
    value: Any
    reason: str


def format_value(key: str, value: Any) -> str:
    """A value as the reasons write it: learning rates as 2e-4, the rest as numbers."""
    if value is None:
        return "empty"
    if key == "train.lr" and isinstance(value, (int, float)) and value > 0:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def is_demo(model_name: str, model_config: dict[str, Any] | None = None) -> bool:
    """Whether `model_name` is the demo model: a config.json marked `ftstudio_demo` (what
    engine.models.demo writes, and what engine.models.catalog.describe labels as the demo), or the studio's
    demo folder, built or not."""
    from engine.models.catalog import demo_dir, read_config

    if model_config is None:
        model_config = read_config(str(model_name)) if model_name else None
    if model_config and "ftstudio_demo" in model_config:
        return True
    if not model_name:
        return False
    try:
        return Path(str(model_name)).expanduser().resolve() == demo_dir().resolve()
    except OSError:
        return False


def _report_dict(report: dict[str, Any] | DataReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return report.to_dict() if isinstance(report, DataReport) else dict(report)


def _params(model_config: dict[str, Any] | None) -> int | None:
    if not model_config:
        return None
    from engine.models.estimate import count_params

    try:
        return count_params(model_config).total
    except Exception:  # noqa: BLE001 - an odd config.json: no size, the plain table row
        return None


def suggest_lr(method: str, model_config: dict[str, Any] | None = None) -> Suggestion:
    """The learning rate for `method` on a pretrained model (the table above)."""
    lr, why = LR_BY_METHOD.get(method, LR_BY_METHOD["lora"])
    params = _params(model_config) if method in LORA_FAMILY else None
    if params is not None and params >= BIG_MODEL_PARAMS:
        lr = BIG_LORA_LR
        why = (f"LoRA-family rate for a model of {params / 1e9:.0f}B parameters (the QLoRA "
               "paper used 1e-4 from 33B up)")
    return Suggestion("train.lr", lr, f"lr {format_value('train.lr', lr)}: {why}")


#: a learning rate this many times above or below the suggested one draws a warning
LR_FAR = 10.0


def lr_warning(lr: Any, method: str, model_name: str,
               model_config: dict[str, Any] | None = None) -> str | None:
    """A warning when `lr` is far (LR_FAR times or more) from the rate suggested for this
    method and model (suggest_lr; the demo model's own rate), naming that rate; None when
    it is near, or not a positive number (config.validate reports that)."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        return None
    if model_config is None and model_name:
        from engine.models.catalog import read_config

        model_config = read_config(str(model_name))
    if is_demo(model_name, model_config):
        good, why = DEMO_SETTINGS["train.lr"], DEMO_REASON
    else:
        s = suggest_lr(method, model_config)
        good, why = s.value, s.reason.partition(": ")[2]
    if good / LR_FAR < lr < good * LR_FAR:
        return None
    way = "above" if lr > good else "below"
    return (f"learning rate {format_value('train.lr', lr)} is {lr / good if lr > good else good / lr:.0f}x "
            f"{way} the {format_value('train.lr', good)} suggested for {method} on this model "
            f"({why}): {'it may diverge' if lr > good else 'it may barely learn'}")


def epochs_for(records: int) -> int:
    for bound, epochs in EPOCHS_BY_SIZE:
        if records < bound:
            return epochs
    return LARGE_EPOCHS


def suggest_epochs(report: dict[str, Any] | DataReport | None) -> Suggestion:
    """Epochs by the number of training records (3 below 1,000, 2 below 10,000, else 1)."""
    rep = _report_dict(report)
    records = (rep.get("train_records") or rep.get("used") or 0) if rep else 0
    if not records:
        return Suggestion("train.epochs", LARGE_EPOCHS,
                          f"epochs {LARGE_EPOCHS}: no data report yet (the config default)")
    epochs = epochs_for(records)
    size = ("a small set (under 1,000)" if epochs == 3 else
            "a medium set (1,000 to 9,999)" if epochs == 2 else "a large set (10,000 or more)")
    why = {3: "so a few passes", 2: "so two passes",
           1: "where one pass is usually enough and more tends to memorise"}[epochs]
    return Suggestion("train.epochs", epochs,
                      f"epochs {epochs}: {records:,} training records is {size}, {why}")


def seq_limit(model_config: dict[str, Any] | None, method: str,
              num_virtual_tokens: int = 20) -> tuple[int | None, str]:
    """The longest max_seq_len the model takes, and how it was found (None: unknown)."""
    limit = (model_config or {}).get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0:
        return None, ""
    if method in VIRTUAL_TOKEN_METHODS and num_virtual_tokens > 0:
        return (limit - num_virtual_tokens,
                f"the model's {limit} positions minus {num_virtual_tokens} virtual tokens")
    return limit, f"the model's {limit} positions"


def round_seq_len(length: int, limit: int | None = None) -> int:
    """`length` rounded up to a multiple of 64, at least 128, at most `limit`."""
    value = max(SEQ_FLOOR, math.ceil(max(length, 1) / SEQ_MULTIPLE) * SEQ_MULTIPLE)
    return min(value, limit) if limit is not None and limit > 0 else value


def suggest_max_seq_len(report: dict[str, Any] | DataReport | None,
                        model_config: dict[str, Any] | None = None, method: str = "lora",
                        num_virtual_tokens: int = 20) -> Suggestion:
    """max_seq_len from the data's p99 token length (see the module docstring)."""
    rep = _report_dict(report)
    limit, limit_why = seq_limit(model_config, method, num_virtual_tokens)
    key = "data.max_seq_len"
    if not rep or not rep.get("used") or rep.get("length_unit", "tokens") != "tokens":
        why = ("no data report yet" if not rep or not rep.get("used") else
               "the data's lengths are counted in words (no tokenizer offline)")
        value = min(SEQ_DEFAULT, limit) if limit else SEQ_DEFAULT
        capped = f", capped at {limit_why}" if limit and limit < SEQ_DEFAULT else ""
        return Suggestion(key, value, f"max_seq_len {value}: {why}, so the config default"
                                      f"{capped}")
    p99, what = rep.get("length_p99") or 0, "p99"
    if not p99:                     # a report written before p99 was recorded
        p99, what = rep.get("length_max") or rep.get("length_p95") or 0, "longest"
    rounded = round_seq_len(p99)
    value = round_seq_len(p99, limit)
    head = f"max_seq_len {value}: the data's {what} length is {p99} tokens"
    if limit is not None and value < rounded:
        return Suggestion(key, value, f"{head}, capped at {limit_why}")
    if value == SEQ_FLOOR and p99 <= SEQ_FLOOR - SEQ_MULTIPLE:
        return Suggestion(key, value, f"{head}; {SEQ_FLOOR} is the floor")
    return Suggestion(key, value, f"{head}, rounded up to a multiple of {SEQ_MULTIPLE}")


def suggest(model_name: str, method: str, report: dict[str, Any] | DataReport | None = None,
            model_config: dict[str, Any] | None = None, num_virtual_tokens: int = 20
            ) -> dict[str, Suggestion]:
    """{key: Suggestion} for KEYS: the demo settings for the demo model, otherwise the
    learning rate of `method`, epochs by the report's training records and max_seq_len from
    its p99 length under the model's position limit (model_config: its config.json as a dict;
    read with engine.models.catalog.read_config when not given)."""
    if model_config is None and model_name:
        from engine.models.catalog import read_config

        model_config = read_config(str(model_name))
    if is_demo(model_name, model_config or {}):
        return {k: Suggestion(k, v, DEMO_SEQ_REASON if k == "data.max_seq_len" else DEMO_REASON)
                for k, v in DEMO_SETTINGS.items()}
    out = [suggest_lr(method, model_config), suggest_epochs(report),
           suggest_max_seq_len(report, model_config, method, num_virtual_tokens)]
    return {s.key: s for s in out}

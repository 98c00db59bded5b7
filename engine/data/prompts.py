"""Prompt-only records for GRPO: what the model answers, and the columns its reward functions read.

Use from Python:
    from engine.data.prompts import prompt_records, split_prompts
    records, fmt = prompt_records("math.jsonl")        # [PromptRecord], "prompt"
    train, held_out = split_prompts(cfg)                # by data.validation or data.val_fraction

Formats (data.format auto picks by the fields, in this order):
    prompt   {"prompt": "...", ...}: a string is raw text (no chat template, as TRL and our
             completion format treat it); a message or a list of messages ending with the user's
             turn is a conversation (TRL's conversational prompt).
    chat     {"messages": [...], ...}: the conversation up to its last user turn (anything after
             it, e.g. a reference answer, is left out of the prompt).
    alpaca   {"instruction": ..., "input": ..., "system": ...}: one user turn (instruction, then
             input on the next line), with the system message when given.
Every other field of a record is a column that reaches the reward functions by name, as TRL
passes dataset columns (a record without it gives None). Records are kept in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.formats import RecordError, _messages_of, _prompt, _text
from engine.data.readers import DataError, read_records

#: the prompt formats, the fields each consumes, and what identifies it
PROMPT_FORMATS = {"prompt": ("prompt",), "chat": ("messages",),
                  "alpaca": ("instruction", "input", "system", "output")}
NEEDS = ("GRPO records need a prompt: {\"prompt\": ...}, {\"messages\": [...]} ending with a "
         "user turn, or alpaca's {\"instruction\": ...}")


@dataclass
class PromptRecord:
    where: str                      # "line 17"
    prompt: Any                     # list of messages (a conversation) or a string (raw text)
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def shown(self) -> str:
        """The prompt as a person reads it: the last user message, or the raw text."""
        if not self.conversational:
            return self.prompt
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


def detect(records: list[dict]) -> str:
    for name, key in (("prompt", "prompt"), ("chat", "messages"), ("alpaca", "instruction")):
        if sum(key in r for r in records[:1000]) * 2 > min(len(records), 1000):
            return name
    seen = sorted({k for r in records[:1000] for k in r})[:12]
    raise DataError(f"cannot tell the prompt format: records have fields "
                    f"{', '.join(seen) or '(none)'}; {NEEDS}")


def convert(record: dict, fmt: str, system_prompt: str | None = None) -> PromptRecord | None:
    """One record as a PromptRecord (where left empty); raises RecordError naming the field."""
    if fmt == "prompt":
        value = record.get("prompt")
        if isinstance(value, str):
            if not value.strip():
                raise RecordError("prompt", "is empty", NEEDS)
            prompt: Any = value
        else:
            prompt = _prompt(_messages_of(record, "prompt", NEEDS, "user"), "prompt",
                             "the reward columns")
    elif fmt == "chat":
        items = _messages_of(record, "messages", NEEDS, "user")
        last = max((i for i, (m, _) in enumerate(items) if m["role"] == "user"), default=None)
        if last is None:
            raise RecordError("messages", "has no user turn", NEEDS)
        prompt = _prompt(items[:last + 1], "messages", "the reward columns")
    elif fmt == "alpaca":
        instruction = _text(record, "instruction", NEEDS)
        extra = _text(record, "input", NEEDS, optional=True)
        system = _text(record, "system", NEEDS, optional=True)
        user = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
        if not user.strip():
            raise RecordError("instruction", "is empty", NEEDS)
        prompt = ([{"role": "system", "content": system}] if system.strip() else []) + \
            [{"role": "user", "content": user}]
    else:
        raise DataError(f"data.format {fmt} has no prompts for GRPO; use prompt, chat or alpaca")
    if system_prompt and isinstance(prompt, list) and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}] + prompt
    used = set(PROMPT_FORMATS[fmt])
    return PromptRecord("", prompt, {k: v for k, v in record.items() if k not in used})


def prompt_records(path: str | Path, fmt: str = "auto", on_bad_record: str = "error",
                   system_prompt: str | None = None) -> tuple[list[PromptRecord], str]:
    """The prompt records of a data file and their format; a bad record is a DataError naming
    the file, line and field (on_bad_record skip: left out)."""
    raw = read_records(path, on_bad_record)
    records = [r for r in raw if isinstance(r.data, dict)]
    if not records:
        raise DataError(f"{path}: no record is a JSON object; {NEEDS}")
    fmt = detect([r.data for r in records]) if fmt == "auto" else fmt
    if fmt not in PROMPT_FORMATS:
        raise DataError(f"{path}: data.format {fmt} has no prompts for GRPO; use prompt, chat "
                        "or alpaca (or auto)")
    out = []
    for r in records:
        try:
            rec = convert(r.data, fmt, system_prompt)
        except RecordError as exc:
            if on_bad_record == "skip":
                continue
            raise DataError(f"{path} {r.where}: {exc}") from None
        rec.where = r.where
        out.append(rec)
    names = sorted({k for r in out for k in r.columns})
    for r in out:
        for k in names:
            r.columns.setdefault(k, None)
    if not out:
        raise DataError(f"{path}: no usable prompt record; {NEEDS}")
    return out, fmt


def split_prompts(cfg) -> tuple[list[PromptRecord], list[PromptRecord], str]:
    """(train, held-out, where the held-out came from) as training splits them: data.validation,
    else a seeded data.val_fraction of data.train (engine.data.split_indices)."""
    from engine.data.pipeline import split_indices

    d = cfg.data
    train, _ = prompt_records(d.train, d.format, d.on_bad_record, d.system_prompt)
    if d.validation:
        held, _ = prompt_records(d.validation, d.format, d.on_bad_record, d.system_prompt)
        return train, held, f"data.validation ({Path(d.validation).name})"
    keep, held = split_indices(len(train), d.val_fraction, cfg.train.seed)
    source = (f"held-out {d.val_fraction:g} of data.train ({Path(d.train).name}, seed "
              f"{cfg.train.seed})")
    return [train[i] for i in keep], [train[i] for i in held], source

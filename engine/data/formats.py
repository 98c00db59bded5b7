"""Dataset formats: one function per format, each turning one record into a normalized example.

Use from Python:
    from engine.data import FORMATS, RecordError, detect_format
    name, reason = detect_format(records)  # "alpaca", "alpaca: records have instruction and ..."
    example = FORMATS[name].convert(record)      # raises RecordError naming the field and the fix

Every format has the same shape: a `convert(record) -> example` function below, and one `Format`
row in the FORMATS registry (its kind, the fields that identify it, what its records need).
Adding a format is one function and one row. The normalized example depends on the kind:

- kind "messages" (alpaca, chat, sharegpt): a list of {"role", "content"} messages, roles in
  system / user / assistant; rendered with the tokenizer's chat template, loss on each assistant
  turn.
- kind "completion": a (prompt, completion) pair of strings, joined as raw text; loss on the
  completion (and the end-of-sequence token).
- kind "text": one string for continued pre-training; loss on every token.

A RecordError carries the field (e.g. "messages[2].role") and a message; engine.data prefixes it
with the file and line, so a person reads e.g.
    static/x.jsonl line 17: field 'output' is missing (alpaca records need instruction and output)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
#: sharegpt speaker names and the role each maps to
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}

Message = dict[str, str]


class RecordError(ValueError):
    """One record is malformed: which field, what is wrong, and what would fix it."""

    def __init__(self, field: str | None, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"field '{field}' " if field else ""
        super().__init__(f"{where}{problem}" + (f" ({fix})" if fix else ""))


# --------------------------------------------------------------------------- field helpers


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(record: dict, field: str, needs: str, *, optional: bool = False,
          label: str | None = None) -> str:
    """The string at record[field]; missing/None is '' when optional, else a RecordError."""
    name = label or field
    if field not in record or record[field] is None:
        if optional:
            return ""
        state = "is missing" if field not in record else "is null"
        raise RecordError(name, state, needs)
    value = record[field]
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise RecordError(name, f"must be text, got {_type_name(value)}",
                              f'quote it: "{value}"')
        raise RecordError(name, f"must be text, got {_type_name(value)}", needs)
    return value


def _response(record: dict, field: str, needs: str, label: str | None = None) -> str:
    value = _text(record, field, needs, label=label)
    if not value.strip():
        raise RecordError(label or field, "is empty",
                          "every response needs text for the model to learn from")
    return value


def _list(record: dict, field: str, needs: str) -> list:
    """A list field; a JSON string holding a list (as CSV cells do) is accepted too."""
    if field not in record or record[field] is None:
        raise RecordError(field, "is missing" if field not in record else "is null", needs)
    value = record[field]
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(field, f"holds text that is not a valid JSON list ({exc.msg})",
                              needs) from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise RecordError(field, f"must be a list, got {_type_name(value)}", needs)
    if not value:
        raise RecordError(field, "is an empty list", needs)
    return value


def _content(value: Any, label: str, needs: str) -> str:
    """Message content: a string, or OpenAI-style parts [{"type": "text", "text": ...}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    if value is None:
        raise RecordError(label, "is missing or null", needs)
    raise RecordError(label, f"must be text, got {_type_name(value)}",
                      "only text content is supported (a string, or a list of "
                      '{"type": "text", "text": ...} parts)')


def _check_conversation(messages: list[Message], field: str, needs: str) -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(field, "has no assistant turn", needs)
    return messages


# --------------------------------------------------------------------------- the formats


def alpaca(record: dict) -> list[Message]:
    """instruction (+ optional input, optional system) -> user turn; output -> assistant turn."""
    needs = "alpaca records need instruction and output"
    instruction = _text(record, "instruction", needs)
    extra = _text(record, "input", needs, optional=True)
    system = _text(record, "system", needs, optional=True)
    output = _response(record, "output", needs)
    user = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [{"role": "user", "content": user},
                       {"role": "assistant", "content": output}]


def chat(record: dict) -> list[Message]:
    """OpenAI-style messages: [{"role": system|user|assistant, "content": ...}, ...]."""
    return _turns(record, "messages", "role", "content", {r: r for r in ROLES},
                  "chat records need messages: a list of {role, content} with an assistant "
                  "turn", ", ".join(ROLES), "every assistant turn")


def sharegpt(record: dict) -> list[Message]:
    """conversations: [{"from": human|gpt|system (or user|assistant), "value": ...}, ...]."""
    return _turns(record, "conversations", "from", "value", SHAREGPT_ROLES,
                  "sharegpt records need conversations: a list of {from, value} with a gpt "
                  "turn", "human, gpt, system (or user, assistant)", "every gpt turn")


def _turns(record: dict, field: str, role_key: str, content_key: str, roles: dict[str, str],
           needs: str, expected: str, answers: str) -> list[Message]:
    """A list of turns as messages: each an object whose role_key names a speaker of `roles`
    (mapped to system/user/assistant) and whose content_key holds its text."""
    raw = _list(record, field, needs)
    messages = []
    for i, m in enumerate(raw):
        label = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(label, f"must be an object with {role_key} and {content_key}, "
                                     f"got {_type_name(m)}")
        speaker = m.get(role_key)
        if speaker not in roles:
            state = "is missing" if speaker is None else f"is {speaker!r}"
            raise RecordError(f"{label}.{role_key}", state, f"expected one of: {expected}")
        role = roles[speaker]
        content = _content(m.get(content_key), f"{label}.{content_key}", needs)
        if role == "assistant" and not content.strip():
            raise RecordError(f"{label}.{content_key}", "is empty",
                              f"{answers} needs text for the model to learn from")
        messages.append({"role": role, "content": content})
    return _check_conversation(messages, field, needs)


def completion(record: dict) -> tuple[str, str]:
    """prompt + completion as raw text (no chat template); loss on the completion."""
    needs = "completion records need prompt and completion"
    prompt = _text(record, "prompt", needs)
    return prompt, _response(record, "completion", needs)


def text(record: dict) -> str:
    """Raw text for continued pre-training; every token carries loss."""
    needs = "text records need a non-empty text field"
    value = _text(record, "text", needs)
    if not value.strip():
        raise RecordError("text", "is empty", needs)
    return value


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Format:
    name: str
    kind: Literal["messages", "completion", "text"]
    #: the fields that identify the format (auto-detection looks for these)
    fields: tuple[str, ...]
    convert: Callable[[dict], Any]


FORMATS: dict[str, Format] = {
    "alpaca": Format("alpaca", "messages", ("instruction", "output"), alpaca),
    "chat": Format("chat", "messages", ("messages",), chat),
    "sharegpt": Format("sharegpt", "messages", ("conversations",), sharegpt),
    "completion": Format("completion", "completion", ("prompt", "completion"), completion),
    "text": Format("text", "text", ("text",), text),
}

DETECT_SAMPLE = 1000


def detect_format(records: Iterable[Any]) -> tuple[str, str]:
    """Pick the format whose identifying fields the records have; returns (name, reason).

    Looks at the first DETECT_SAMPLE object records; each format scores the share of its fields
    each record has, so a few malformed records do not change the verdict (they are reported as
    bad records of the chosen format instead). Raises RecordError when nothing fits.
    """
    sample = []
    for r in records:
        if isinstance(r, dict):
            sample.append(r)
            if len(sample) >= DETECT_SAMPLE:
                break
    if not sample:
        raise RecordError(None, "no record is a JSON object, so the format cannot be detected",
                          "each record must be an object such as "
                          '{"instruction": ..., "output": ...}')
    scores = {name: sum(sum(f in r for f in fmt.fields) / len(fmt.fields) for r in sample)
              for name, fmt in FORMATS.items()}
    best = max(scores, key=lambda n: scores[n])  # ties: registry order
    if scores[best] == 0:
        seen = sorted({k for r in sample for k in r})[:12]
        wants = "; ".join(f"{n}: {' + '.join(f.fields)}" for n, f in FORMATS.items())
        raise RecordError(None, f"cannot tell the format: records have fields "
                                f"{', '.join(seen) or '(none)'}",
                          f"expected one of {wants}; rename the fields or set data.format")
    fields = FORMATS[best].fields
    full = sum(all(f in r for f in fields) for r in sample)
    reason = f"{best}: records have {' and '.join(fields)}"
    if full < len(sample):
        reason += f" ({full} of the first {len(sample)} have all of them)"
    return best, reason

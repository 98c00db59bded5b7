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
- kind "preference" (preference: DPO, IPO, SimPO, ORPO): a dict {"prompt": [messages],
  "chosen": [assistant messages], "rejected": [assistant messages]}; the prompt ends with a
  user turn. Each side is rendered as prompt + answer with the chat template; loss (the
  sequence log-prob) on the answer only.
- kind "kto" (kto): a dict {"prompt": [messages], "completion": [assistant messages],
  "desirable": bool}; rendered as prompt + completion; loss on the completion only.

Preference and kto records take TRL's conventions: prompt, chosen, rejected and completion may
each be a string (a user prompt, an assistant answer), one message object, or a list of
messages; {"messages": [...], "chosen": {...}, "rejected": {...}} (the conversation so far and
one assistant message each) is read too, and so is TRL's implicit prompt (chosen and rejected
as whole conversations that share their start, no prompt field).

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
#: the kinds whose examples are conversations rendered with the chat template
CHAT_KINDS = ("messages", "preference", "kto")
#: the kinds of preference tuning, whose examples are not plain SFT sequences
PREFERENCE_KINDS = ("preference", "kto")


class RecordError(ValueError):
    """One record is malformed: which field, what is wrong, and what would fix it."""

    def __init__(self, field: str | None, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"field '{field}' " if field else ""
        super().__init__(f"{where}{problem}" + (f" ({fix})" if fix else ""))


class EmptyAnswer(RecordError):
    """A preference record's chosen or rejected answer (or a kto completion) has no text: a bad
    record, counted apart in the report (DataReport.empty_sides)."""


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
    messages = [_turn(m, f"{field}[{i}]", role_key, content_key, roles, needs, expected, answers)
                for i, m in enumerate(raw)]
    return _check_conversation(messages, field, needs)


def _turn(m: Any, label: str, role_key: str, content_key: str, roles: dict[str, str],
          needs: str, expected: str, answers: str | None) -> Message:
    """One turn (an object with role_key and content_key) as a message; `label` names it. An
    empty assistant turn is a RecordError saying `answers` need text (answers None: allowed,
    the caller checks)."""
    if not isinstance(m, dict):
        raise RecordError(label, f"must be an object with {role_key} and {content_key}, "
                                 f"got {_type_name(m)}")
    speaker = m.get(role_key)
    if speaker not in roles:
        state = "is missing" if speaker is None else f"is {speaker!r}"
        raise RecordError(f"{label}.{role_key}", state, f"expected one of: {expected}")
    role = roles[speaker]
    content = _content(m.get(content_key), f"{label}.{content_key}", needs)
    if answers is not None and role == "assistant" and not content.strip():
        raise RecordError(f"{label}.{content_key}", "is empty",
                          f"{answers} needs text for the model to learn from")
    return {"role": role, "content": content}


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


# --------------------------------------------------------------------------- preference formats

PREFERENCE_NEEDS = ("preference records need prompt, chosen and rejected (or messages, chosen "
                    "and rejected), each a string or chat messages")
KTO_NEEDS = "kto records need prompt, completion and label (true or false)"
#: a message as preference records write it: {"role": system|user|assistant, "content": ...}
_ROLE_MAP = {r: r for r in ROLES}


def _maybe_json(value: Any) -> Any:
    """A CSV cell holding a JSON list of messages or one message object, parsed; anything else
    (an answer that merely starts with a bracket, say) as it is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, dict) and "role" in parsed:
            return parsed
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m
                                                       for m in parsed):
            return parsed
    return value


def _messages_of(record: dict, field: str, needs: str, default_role: str
                 ) -> list[tuple[Message, str | None]]:
    """record[field] as messages, each with the label of the object it came from (None for a
    plain string, which becomes one message of default_role). Empty answers are not checked
    here (the caller knows whether the messages are a prompt or an answer)."""
    if field not in record or record[field] is None:
        raise RecordError(field, "is missing" if field not in record else "is null", needs)
    value = _maybe_json(record[field])
    if isinstance(value, str):
        return [({"role": default_role, "content": value}, None)]
    expected = ", ".join(ROLES)
    if isinstance(value, dict):
        return [(_turn(value, field, "role", "content", _ROLE_MAP, needs, expected, None), field)]
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        if not value:
            raise RecordError(field, "is an empty list", needs)
        return [(_turn(m, f"{field}[{i}]", "role", "content", _ROLE_MAP, needs, expected, None),
                 f"{field}[{i}]") for i, m in enumerate(value)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise RecordError(field, f"must be text, got {_type_name(value)}", f'quote it: "{value}"')
    raise RecordError(field, f"must be text, a message or a list of messages, got "
                             f"{_type_name(value)}", needs)


def _prompt(items: list[tuple[Message, str | None]], field: str, answers: str
            ) -> list[Message]:
    """The conversation before the answer: it must end with the user's turn, and its earlier
    assistant turns (a multi-turn prompt) need text."""
    for m, label in items:
        if m["role"] == "assistant" and not m["content"].strip():
            raise RecordError(f"{label}.content", "is empty",
                              "every assistant turn needs text for the model to learn from")
    last, label = items[-1]
    if last["role"] != "user":
        raise RecordError(f"{label}.role", f"is {last['role']!r}",
                          f"the {field} must end with the user's turn; the answers go in "
                          f"{answers}")
    return [m for m, _ in items]


def _answer(items: list[tuple[Message, str | None]], field: str) -> list[Message]:
    """An answer: one or more assistant messages, each with text (EmptyAnswer if not)."""
    if not items:
        raise RecordError(field, "has no answer after the prompt it shares with the other side",
                          "chosen and rejected must each end with an assistant answer")
    for m, label in items:
        if m["role"] != "assistant":
            raise RecordError(f"{label}.role", f"is {m['role']!r}",
                              f"{field} holds only the assistant's answer; the conversation "
                              "before it goes in prompt")
        if not m["content"].strip():
            raise EmptyAnswer(f"{label}.content" if label else field, "is empty",
                              "every answer needs text for the model to learn from")
    return [m for m, _ in items]


def preference(record: dict) -> dict[str, list[Message]]:
    """prompt + chosen + rejected (TRL's preference format): a string or messages each, or
    messages (the conversation so far) + chosen + rejected (one assistant message each), or
    chosen and rejected as whole conversations sharing the prompt (TRL's implicit prompt)."""
    needs = PREFERENCE_NEEDS
    field = "prompt" if "prompt" in record else "messages" if "messages" in record else None
    if field is None:
        return _implicit_prompt(record, needs)
    prompt = _prompt(_messages_of(record, field, needs, "user"), field, "chosen and rejected")
    chosen = _answer(_messages_of(record, "chosen", needs, "assistant"), "chosen")
    rejected = _answer(_messages_of(record, "rejected", needs, "assistant"), "rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _implicit_prompt(record: dict, needs: str) -> dict[str, list[Message]]:
    """chosen and rejected as whole conversations: the prompt is their shared start, up to its
    last user turn."""
    chosen = _messages_of(record, "chosen", needs, "assistant")
    rejected = _messages_of(record, "rejected", needs, "assistant")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k][0] == rejected[k][0]:
        k += 1
    while k > 0 and chosen[k - 1][0]["role"] != "user":
        k -= 1
    if k == 0:
        raise RecordError("prompt", "is missing", needs + "; or chosen and rejected as whole "
                          "conversations that start with the same prompt")
    return {"prompt": _prompt(chosen[:k], "prompt", "chosen and rejected"),
            "chosen": _answer(chosen[k:], "chosen"), "rejected": _answer(rejected[k:], "rejected")}


def _desirable(record: dict) -> bool:
    """A kto label: true or false (a boolean, or the text "true" / "false" as CSV cells hold
    it)."""
    fix = "true marks a desirable completion, false an undesirable one"
    if "label" not in record or record["label"] is None:
        raise RecordError("label", "is missing" if "label" not in record else "is null",
                          KTO_NEEDS)
    value = record["label"]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    got = repr(value) if isinstance(value, str) else _type_name(value)
    raise RecordError("label", f"must be true or false, got {got}", fix)


def kto(record: dict) -> dict[str, Any]:
    """prompt + completion + label (TRL's unpaired preference format for KTO): label true
    marks a desirable completion, false an undesirable one; prompt and completion are each a
    string or messages."""
    prompt = _prompt(_messages_of(record, "prompt", KTO_NEEDS, "user"), "prompt", "completion")
    completion = _answer(_messages_of(record, "completion", KTO_NEEDS, "assistant"),
                         "completion")
    return {"prompt": prompt, "completion": completion, "desirable": _desirable(record)}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Format:
    name: str
    kind: Literal["messages", "completion", "text", "preference", "kto"]
    #: the fields that identify the format (auto-detection looks for these)
    fields: tuple[str, ...]
    convert: Callable[[dict], Any]


FORMATS: dict[str, Format] = {
    "alpaca": Format("alpaca", "messages", ("instruction", "output"), alpaca),
    "chat": Format("chat", "messages", ("messages",), chat),
    "sharegpt": Format("sharegpt", "messages", ("conversations",), sharegpt),
    "completion": Format("completion", "completion", ("prompt", "completion"), completion),
    "text": Format("text", "text", ("text",), text),
    "preference": Format("preference", "preference", ("chosen", "rejected"), preference),
    "kto": Format("kto", "kto", ("prompt", "completion", "label"), kto),
}

DETECT_SAMPLE = 1000


def detect_format(records: Iterable[Any]) -> tuple[str, str]:
    """Pick the format whose identifying fields the records have; returns (name, reason).

    Looks at the first DETECT_SAMPLE object records; each format scores the share of its fields
    each record has, so a few malformed records do not change the verdict (they are reported as
    bad records of the chosen format instead). Equal scores go to the format with more
    identifying fields (the more specific one: {messages, chosen, rejected} is preference, not
    chat; {prompt, completion, label} is kto, not completion), then to registry order. A format
    with more identifying fields than the winner that more than half the records have in full
    wins too (a kto file with a few records missing their label is kto, its unlabelled records
    bad ones). Raises RecordError when nothing fits.
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
    # ties: more identifying fields, then registry order (max keeps the first of equals)
    best = max(scores, key=lambda n: (round(scores[n], 9), len(FORMATS[n].fields)))
    full_records = {name: sum(all(f in r for f in fmt.fields) for r in sample)
                    for name, fmt in FORMATS.items()}
    # a format with more identifying fields that most records have in full refines the winner:
    # preference records with "messages", a few missing "rejected", are still preference
    finer = [n for n, fmt in FORMATS.items() if len(fmt.fields) > len(FORMATS[best].fields)
             and 2 * full_records[n] > len(sample)]
    if finer:
        best = max(finer, key=lambda n: (full_records[n], len(FORMATS[n].fields)))
    if scores[best] == 0:
        seen = sorted({k for r in sample for k in r})[:12]
        wants = "; ".join(f"{n}: {' + '.join(f.fields)}" for n, f in FORMATS.items())
        raise RecordError(None, f"cannot tell the format: records have fields "
                                f"{', '.join(seen) or '(none)'}",
                          f"expected one of {wants}; map its columns to them with data.columns "
                          "(e.g. instruction=question, output=answer), or set data.format")
    fields = FORMATS[best].fields
    full = full_records[best]
    reason = f"{best}: records have {' and '.join(fields)}"
    if full < len(sample):
        reason += f" ({full} of the first {len(sample)} have all of them)"
    return best, reason

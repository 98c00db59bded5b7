"""engine.data.formats: each format's record -> normalized example, its errors, and auto-detection."""

from __future__ import annotations

import json

import pytest

from engine.data import FORMATS, RecordError, detect_format
from tests_paths import EXAMPLES

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}


def _convert(fmt, record):
    return FORMATS[fmt].convert(record)


# --------------------------------------------------------------------------- good records


@pytest.mark.parametrize("record, expected", [
    ({"instruction": "Sort.", "input": "b a", "output": "a b"},
     [{"role": "user", "content": "Sort.\nb a"}, {"role": "assistant", "content": "a b"}]),
    ({"instruction": "Sort b a.", "output": "a b"},
     [{"role": "user", "content": "Sort b a."}, {"role": "assistant", "content": "a b"}]),
    ({"instruction": "Sort.", "input": "", "output": "a b", "system": "Be brief."},
     [SYSTEM, {"role": "user", "content": "Sort."}, {"role": "assistant", "content": "a b"}]),
    ({"instruction": "Sort.", "input": None, "output": "a b", "system": None},
     [{"role": "user", "content": "Sort."}, {"role": "assistant", "content": "a b"}]),
])
def test_alpaca_builds_user_and_assistant_turns(record, expected):
    assert _convert("alpaca", record) == expected


def test_chat_keeps_every_turn_and_joins_text_parts():
    messages = [SYSTEM, USER, ASSISTANT, {"role": "user", "content": [
        {"type": "text", "text": "And "}, {"type": "text", "text": "again"}]}, ASSISTANT]
    assert _convert("chat", {"messages": messages}) == [
        SYSTEM, USER, ASSISTANT, {"role": "user", "content": "And again"}, ASSISTANT]


def test_chat_accepts_messages_as_a_json_string_as_csv_cells_hold_them():
    assert _convert("chat", {"messages": json.dumps([USER, ASSISTANT])}) == [USER, ASSISTANT]


def test_sharegpt_maps_speakers_to_roles():
    record = {"conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                {"from": "user", "value": "Hi"},
                                {"from": "assistant", "value": "Hello"}]}
    assert _convert("sharegpt", record) == [SYSTEM, USER, ASSISTANT, USER, ASSISTANT]


def test_completion_and_text():
    assert _convert("completion", {"prompt": "2+2=", "completion": " 4"}) == ("2+2=", " 4")
    assert _convert("text", {"text": "once upon a time"}) == "once upon a time"


def test_every_format_has_the_same_shape():
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.fields and callable(fmt.convert)
        assert fmt.kind in ("messages", "completion", "text", "preference", "kto")
        assert fmt.convert.__doc__, f"{name} needs a docstring saying what it reads"


# --------------------------------------------------------------------------- bad records

BAD = [
    # format, record, field named, words in the message
    ("alpaca", {"instruction": "a"}, "output", "is missing (alpaca records need instruction and "
                                               "output)"),
    ("alpaca", {"output": "b"}, "instruction", "is missing"),
    ("alpaca", {"instruction": "a", "output": None}, "output", "is null"),
    ("alpaca", {"instruction": "a", "output": 4}, "output", 'must be text, got a number (4) '
                                                           '(quote it: "4")'),
    ("alpaca", {"instruction": ["a"], "output": "b"}, "instruction", "must be text, got a list"),
    ("alpaca", {"instruction": "a", "output": "  "}, "output", "is empty"),
    ("alpaca", {"instruction": "a", "input": {"x": 1}, "output": "b"}, "input",
     "must be text, got an object"),
    ("chat", {}, "messages", "is missing"),
    ("chat", {"messages": "hello"}, "messages", "must be a list"),
    ("chat", {"messages": "[not json"}, "messages", "not a valid JSON list"),
    ("chat", {"messages": []}, "messages", "is an empty list"),
    ("chat", {"messages": ["hi"]}, "messages[0]", "must be an object with role and content"),
    ("chat", {"messages": [USER, {"role": "bot", "content": "x"}]}, "messages[1].role",
     "is 'bot' (expected one of: system, user, assistant)"),
    ("chat", {"messages": [USER, {"content": "x"}]}, "messages[1].role", "is missing"),
    ("chat", {"messages": [USER, {"role": "assistant", "content": 3}]}, "messages[1].content",
     "must be text"),
    ("chat", {"messages": [USER, {"role": "assistant"}]}, "messages[1].content",
     "is missing or null"),
    ("chat", {"messages": [USER, {"role": "assistant", "content": ""}]}, "messages[1].content",
     "is empty"),
    ("chat", {"messages": [SYSTEM, USER]}, "messages", "has no assistant turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"},
                                    {"from": "bot", "value": "a"}]},
     "conversations[1].from", "is 'bot' (expected one of: human, gpt, system"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
     "conversations[1].value", "is missing"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}]}, "conversations",
     "has no assistant turn"),
    ("sharegpt", {"messages": [USER, ASSISTANT]}, "conversations", "is missing"),
    ("completion", {"prompt": "q"}, "completion", "is missing (completion records need prompt "
                                                  "and completion)"),
    ("completion", {"prompt": 1, "completion": "a"}, "prompt", "must be text"),
    ("completion", {"prompt": "q", "completion": ""}, "completion", "is empty"),
    ("text", {"content": "x"}, "text", "is missing"),
    ("text", {"text": " \n"}, "text", "is empty"),
]


@pytest.mark.parametrize("fmt, record, field, words", BAD,
                         ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_records_name_the_field_and_the_fix(fmt, record, field, words):
    with pytest.raises(RecordError) as info:
        _convert(fmt, record)
    assert info.value.field == field
    assert str(info.value).startswith(f"field '{field}' ")
    assert words in str(info.value)


# --------------------------------------------------------------------------- detection


def _load(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        import csv

        return list(csv.DictReader(path.open()))
    return json.loads(path.read_text())


@pytest.mark.parametrize("name, fmt, reason", [
    ("alpaca.json", "alpaca", "alpaca: records have instruction and output"),
    ("alpaca.csv", "alpaca", "alpaca: records have instruction and output"),
    ("chat.jsonl", "chat", "chat: records have messages"),
    ("sharegpt.json", "sharegpt", "sharegpt: records have conversations"),
    ("completion.jsonl", "completion", "completion: records have prompt and completion"),
    ("text.jsonl", "text", "text: records have text"),
])
def test_detects_each_bundled_example(name, fmt, reason):
    assert detect_format(_load(EXAMPLES / name)) == (fmt, reason)


def test_detection_survives_a_few_malformed_records_and_says_so():
    records = [{"instruction": "a", "output": "b"}] * 3 + [{"instruction": "a"}, "junk"]
    fmt, reason = detect_format(records)
    assert fmt == "alpaca"
    assert reason == "alpaca: records have instruction and output (3 of the first 4 have all " \
                     "of them)"


def test_detection_failure_lists_fields_seen_and_expected():
    with pytest.raises(RecordError) as info:
        detect_format([{"question": "q", "answer": "a"}])
    message = str(info.value)
    assert "answer, question" in message and "set data.format" in message
    for name in FORMATS:
        assert name in message
    with pytest.raises(RecordError, match="no record is a JSON object"):
        detect_format([[1, 2], "x"])

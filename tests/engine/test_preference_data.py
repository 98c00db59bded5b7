"""engine.data for preference tuning: the preference (DPO/IPO/SimPO/ORPO pairs) and kto formats,
their detection, encoding, report, tokenized columns, batching of pairs and preview."""

from __future__ import annotations

import json
import random

import datasets
import pytest
import torch

from engine.config import DataConfig, TrainConfig
from engine.data import (FORMATS, IGNORE_INDEX, Batches, DataReport, EmptyAnswer, Encoder,
                         RecordError, collate_pairs, data_kind, data_report, dataset_columns,
                         detect_format, format_report, kto_mismatched, prepare, preview,
                         token_budget_batches, trained_tokens)
from engine.data.examples import kto_records, mistake, preference_records, write_examples
from test_data import _trained_runs
from tests_paths import EXAMPLES

EOT = "<|im_end|>"  # the demo tokenizer's end-of-turn and EOS token
USER = {"role": "user", "content": "Sort the words.\nb a"}
SYSTEM = {"role": "system", "content": "Be brief."}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _prepare(tmp_path, tokenizer, train, seed=42, **data):
    data.setdefault("val_fraction", 0)
    cfg = TrainConfig()
    cfg.data.train = str(train)
    cfg.train.seed = seed
    for key, value in data.items():
        setattr(cfg.data, key, value)
    lines: list[str] = []
    return prepare(cfg, tokenizer, cache_dir=tmp_path / "cache", log=lines.append), lines


def _prompt_len(labels) -> int:
    return next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)


def _invariant(r: DataReport) -> None:
    assert r.records == (r.used + r.skipped_bad + r.dropped_duplicates + r.too_short +
                         r.too_long + r.no_trained_tokens), r.to_dict()


# --------------------------------------------------------------------------- the formats


@pytest.mark.parametrize("record", [
    {"prompt": "Sort the words.\nb a", "chosen": "a b", "rejected": "b a"},
    {"prompt": [USER], "chosen": [_a("a b")], "rejected": [_a("b a")]},
    {"prompt": [USER], "chosen": _a("a b"), "rejected": "b a"},
    {"messages": [USER], "chosen": _a("a b"), "rejected": _a("b a")},
    {"messages": [USER], "chosen": "a b", "rejected": "b a"},
    # TRL's implicit prompt: whole conversations sharing their start
    {"chosen": [USER, _a("a b")], "rejected": [USER, _a("b a")]},
    # CSV cells hold JSON text
    {"prompt": json.dumps([USER]), "chosen": json.dumps([_a("a b")]),
     "rejected": json.dumps(_a("b a"))},
], ids=["strings", "lists", "mixed", "chat-pair", "chat-pair-strings", "implicit", "csv"])
def test_preference_records_normalize_to_prompt_chosen_rejected(record):
    assert FORMATS["preference"].convert(record) == {
        "prompt": [USER], "chosen": [_a("a b")], "rejected": [_a("b a")]}


def test_preference_keeps_a_multi_turn_prompt_and_text_that_only_looks_like_json():
    record = {"prompt": [SYSTEM, _u("q1"), _a("a1"), _u("q2")], "chosen": "[1, 2]",
              "rejected": "{not json"}
    assert FORMATS["preference"].convert(record) == {
        "prompt": [SYSTEM, _u("q1"), _a("a1"), _u("q2")], "chosen": [_a("[1, 2]")],
        "rejected": [_a("{not json")]}
    implicit = {"chosen": [_u("q1"), _a("a1"), _u("q2"), _a("yes")],
                "rejected": [_u("q1"), _a("a1"), _u("q2"), _a("no")]}
    assert FORMATS["preference"].convert(implicit)["prompt"] == [_u("q1"), _a("a1"), _u("q2")]


@pytest.mark.parametrize("label, desirable", [(True, True), (False, False), ("true", True),
                                              ("False", False), (" TRUE ", True)])
def test_kto_records_normalize_with_the_label_as_a_bool(label, desirable):
    record = {"prompt": "q", "completion": "a", "label": label}
    assert FORMATS["kto"].convert(record) == {"prompt": [_u("q")], "completion": [_a("a")],
                                              "desirable": desirable}
    listed = {"prompt": [SYSTEM, _u("q")], "completion": [_a("a")], "label": label}
    assert FORMATS["kto"].convert(listed)["prompt"] == [SYSTEM, _u("q")]


BAD = [
    # format, record, field named, words in the message, an empty answer
    ("preference", {"prompt": "q", "rejected": "b"}, "chosen",
     "is missing (preference records need prompt, chosen and rejected", False),
    ("preference", {"prompt": "q", "chosen": "a"}, "rejected", "is missing", False),
    ("preference", {"prompt": "q", "chosen": None, "rejected": "b"}, "chosen", "is null", False),
    ("preference", {"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen",
     "is empty (every answer needs text", True),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": [_a("")]}, "rejected[0].content",
     "is empty", True),
    ("preference", {"messages": [USER], "chosen": _a(""), "rejected": "b"}, "chosen.content",
     "is empty", True),
    ("preference", {"prompt": "q", "chosen": [_u("x")], "rejected": "b"}, "chosen[0].role",
     "is 'user' (chosen holds only the assistant's answer; the conversation before it goes in "
     "prompt)", False),
    ("preference", {"prompt": "q", "chosen": [{"role": "bot", "content": "x"}], "rejected": "b"},
     "chosen[0].role", "is 'bot' (expected one of: system, user, assistant)", False),
    ("preference", {"prompt": "q", "chosen": [], "rejected": "b"}, "chosen", "is an empty list",
     False),
    ("preference", {"prompt": "q", "chosen": 5, "rejected": "b"}, "chosen",
     'must be text, got a number (5) (quote it: "5")', False),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": ["b"]}, "rejected[0]",
     "must be an object with role and content", False),
    ("preference", {"prompt": "q", "chosen": [{"role": "assistant", "content": 3}],
                    "rejected": "b"}, "chosen[0].content", "must be text", False),
    ("preference", {"prompt": [USER, _a("a")], "chosen": "a", "rejected": "b"}, "prompt[1].role",
     "is 'assistant' (the prompt must end with the user's turn; the answers go in chosen and "
     "rejected)", False),
    ("preference", {"messages": [SYSTEM], "chosen": "a", "rejected": "b"}, "messages[0].role",
     "is 'system' (the messages must end with the user's turn", False),
    ("preference", {"prompt": [_u("q"), _a(""), _u("r")], "chosen": "a", "rejected": "b"},
     "prompt[1].content", "is empty", False),
    ("preference", {"prompt": 7, "chosen": "a", "rejected": "b"}, "prompt", "must be text",
     False),
    ("preference", {"chosen": "a b", "rejected": "b a"}, "prompt", "is missing", False),
    ("preference", {"chosen": [USER, _a("a")], "rejected": [_u("other"), _a("b")]}, "prompt",
     "is missing", False),
    ("preference", {"chosen": [USER, _a("a")], "rejected": [USER]}, "rejected",
     "has no answer after the prompt", False),
    ("kto", {"prompt": "q", "completion": "a"}, "label",
     "is missing (kto records need prompt, completion and label (true or false))", False),
    ("kto", {"prompt": "q", "completion": "a", "label": 1}, "label",
     "must be true or false, got a number (1) (true marks a desirable completion", False),
    ("kto", {"prompt": "q", "completion": "a", "label": "yes"}, "label",
     "must be true or false, got 'yes'", False),
    ("kto", {"prompt": "q", "completion": "a", "label": None}, "label", "is null", False),
    ("kto", {"prompt": "q", "completion": "", "label": True}, "completion", "is empty", True),
    ("kto", {"completion": "a", "label": True}, "prompt", "is missing", False),
    ("kto", {"prompt": [_a("x")], "completion": "a", "label": True}, "prompt[0].role",
     "is 'assistant' (the prompt must end with the user's turn; the answers go in completion)",
     False),
]


@pytest.mark.parametrize("fmt, record, field, words, empty", BAD,
                         ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_records_name_the_field_and_the_fix(fmt, record, field, words, empty):
    with pytest.raises(RecordError) as info:
        FORMATS[fmt].convert(record)
    assert info.value.field == field
    assert str(info.value).startswith(f"field '{field}' ")
    assert words in str(info.value)
    assert isinstance(info.value, EmptyAnswer) == empty


def test_bad_records_are_reported_with_their_lines(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = _write_jsonl(tmp_path / "p.jsonl", [
        good, {"prompt": "q", "chosen": [_a(" ")], "rejected": "b"}, {"prompt": "q", "chosen": "a"},
        {"prompt": [USER, _a("x")], "chosen": "a", "rejected": "b"}, good | {"chosen": "c"}])
    report = data_report(path)
    assert report.format == "preference" and report.kind == "preference"
    assert (report.used, report.skipped_bad, report.empty_sides) == (2, 3, 1)
    assert report.bad_examples == [
        f"{path} line 2: field 'chosen[0].content' is empty (every answer needs text for the "
        "model to learn from)",
        f"{path} line 3: field 'rejected' is missing (preference records need prompt, chosen and "
        "rejected (or messages, chosen and rejected), each a string or chat messages)",
        f"{path} line 4: field 'prompt[1].role' is 'assistant' (the prompt must end with the "
        "user's turn; the answers go in chosen and rejected)"]
    _invariant(report)

    kto_path = _write_jsonl(tmp_path / "k.jsonl", [
        {"prompt": "q", "completion": "a", "label": True},
        {"prompt": "q", "completion": "a", "label": "maybe"},
        {"prompt": "q", "completion": "b", "label": "false"}])
    report = data_report(kto_path)
    assert (report.format, report.used, report.skipped_bad) == ("kto", 2, 1)
    assert report.bad_examples == [f"{kto_path} line 2: field 'label' must be true or false, got "
                                   "'maybe' (true marks a desirable completion, false an "
                                   "undesirable one)"]
    assert (report.desirable, report.undesirable) == (1, 1)


def test_a_bad_pair_stops_prepare_unless_skipped(tmp_path, tiny_tokenizer):
    from engine.data import DataError

    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                               {"prompt": "q", "chosen": "", "rejected": "b"}])
    with pytest.raises(DataError, match="line 2: field 'chosen' is empty"):
        _prepare(tmp_path, tiny_tokenizer, path)
    out, _ = _prepare(tmp_path, tiny_tokenizer, path, on_bad_record="skip")
    assert len(out.train) == 1 and out.report.empty_sides == 1


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("record, fmt", [
    ({"messages": [USER], "chosen": _a("a"), "rejected": _a("b")}, "preference"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
    ({"chosen": [USER, _a("a")], "rejected": [USER, _a("b")]}, "preference"),
    ({"prompt": "q", "completion": "a", "label": True}, "kto"),
    # the formats before them detect as before
    ({"messages": [USER, _a("a")]}, "chat"),
    ({"prompt": "q", "completion": "a"}, "completion"),
    ({"instruction": "q", "output": "a"}, "alpaca"),
    ({"conversations": []}, "sharegpt"),
    ({"text": "t"}, "text"),
    ({"messages": [USER, _a("a")], "text": "t"}, "chat"),       # equal fields: registry order
    ({"instruction": "q", "output": "a", "messages": []}, "alpaca"),
])
def test_detection_prefers_the_format_with_more_identifying_fields_on_a_tie(record, fmt):
    assert detect_format([record] * 3)[0] == fmt


@pytest.mark.parametrize("name, fmt, reason", [
    ("preference.jsonl", "preference", "preference: records have chosen and rejected"),
    ("kto.jsonl", "kto", "kto: records have prompt and completion and label"),
    ("chat.jsonl", "chat", "chat: records have messages"),
    ("completion.jsonl", "completion", "completion: records have prompt and completion"),
])
def test_bundled_files_detect(name, fmt, reason):
    records = [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines()]
    assert detect_format(records) == (fmt, reason)


def test_a_mostly_kto_file_is_kto_and_its_unlabelled_records_are_bad(tmp_path):
    rows = [{"prompt": "q", "completion": "a", "label": True}] * 4 + [{"prompt": "q",
                                                                      "completion": "a"}]
    report = data_report(_write_jsonl(tmp_path / "k.jsonl", rows))
    assert report.format == "kto" and report.skipped_bad == 1
    assert "field 'label' is missing" in report.bad_examples[0]
    assert report.format_reason == "kto: records have prompt and completion and label (4 of the " \
                                   "first 5 have all of them)"
    pairs = [{"messages": [USER], "chosen": "a", "rejected": "b"}] * 3 + [
        {"messages": [USER], "chosen": "a"}]
    report = data_report(_write_jsonl(tmp_path / "p.jsonl", pairs))
    assert report.format == "preference" and report.skipped_bad == 1
    assert "line 4: field 'rejected' is missing" in report.bad_examples[0]
    # a stray label in a completion file does not make it kto
    rows = [{"prompt": "q", "completion": "a"}] * 4 + [{"prompt": "q", "completion": "a",
                                                        "label": True}]
    assert detect_format(rows)[0] == "completion"


# --------------------------------------------------------------------------- encoding


def test_pairs_train_only_the_answers_and_share_the_prompt_tokens(tiny_tokenizer):
    from engine.data import ensure_chat_template

    ensure_chat_template(tiny_tokenizer)
    example = {"prompt": [SYSTEM, _u("q1"), _a("earlier answer"), _u("again c b")],
               "chosen": [_a("b c")], "rejected": [_a("c b a")]}
    chosen, rejected = Encoder(tiny_tokenizer, "preference").encode_pair(example)
    assert _trained_runs(tiny_tokenizer, chosen.input_ids, chosen.labels) == ["b c" + EOT]
    assert _trained_runs(tiny_tokenizer, rejected.input_ids, rejected.labels) == ["c b a" + EOT]
    n = _prompt_len(chosen.labels)
    assert n == _prompt_len(rejected.labels)
    assert chosen.input_ids[:n] == rejected.input_ids[:n]
    assert chosen.labels[0] == rejected.labels[0] == IGNORE_INDEX
    for side, enc in (("chosen", chosen), ("rejected", rejected)):
        rendered = tiny_tokenizer.apply_chat_template(example["prompt"] + example[side],
                                                      tokenize=False)
        assert tiny_tokenizer.decode(enc.input_ids) == rendered
    # train_on_prompt does not apply: the objectives compare answers
    again = Encoder(tiny_tokenizer, "preference", train_on_prompt=True).encode_pair(example)
    assert again[0].labels == chosen.labels and again[1].labels == rejected.labels
    with pytest.raises(ValueError, match="encode_pair"):
        Encoder(tiny_tokenizer, "preference").encode(example)


def test_kto_trains_only_the_completion(tiny_tokenizer):
    example = {"prompt": [_u("q1"), _a("a1"), _u("q2")], "completion": [_a("yes")],
               "desirable": False}
    enc = Encoder(tiny_tokenizer, "kto", train_on_prompt=True).encode(example)
    assert _trained_runs(tiny_tokenizer, enc.input_ids, enc.labels) == ["yes" + EOT]
    chat = Encoder(tiny_tokenizer, "messages").encode(example["prompt"] + example["completion"])
    assert enc.input_ids == chat.input_ids   # rendered exactly as the chat example


# --------------------------------------------------------------------------- the pipeline


def test_preference_data_has_its_columns_and_a_validation_split(tmp_path, tiny_tokenizer):
    path = EXAMPLES / "preference.jsonl"
    out, lines = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.1)
    assert out.format == out.kind == "preference"
    assert out.train.column_names == dataset_columns("preference") == [
        "input_ids", "labels", "rejected_input_ids", "rejected_labels", "length", "where"]
    assert out.validation.column_names == out.train.column_names
    assert (len(out.train), len(out.validation)) == (108, 12)
    assert set(out.train["where"]).isdisjoint(out.validation["where"])
    records = {f"line {i + 1}": json.loads(line)
               for i, line in enumerate(path.read_text().splitlines())}
    for row in out.train:
        record = records[row["where"]]
        assert row["length"] == max(len(row["input_ids"]), len(row["rejected_input_ids"]))
        assert _trained_runs(tiny_tokenizer, row["input_ids"], row["labels"]) == \
            [record["chosen"][0]["content"] + EOT]
        assert _trained_runs(tiny_tokenizer, row["rejected_input_ids"],
                             row["rejected_labels"]) == [record["rejected"][0]["content"] + EOT]
        n = _prompt_len(row["labels"])
        assert row["input_ids"][:n] == row["rejected_input_ids"][:n]
    r = out.report
    assert r.trained_tokens == sum(sum(x != IGNORE_INDEX for x in row[c]) for split in
                                   (out.train, out.validation) for row in split
                                   for c in ("labels", "rejected_labels"))
    # a second run loads the cache, with the same columns and report
    again, lines = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.1)
    assert any("cache hit" in line for line in lines)
    assert again.kind == "preference" and again.train.column_names == out.train.column_names
    assert again.report.chosen_length_max == r.chosen_length_max > 0


def test_kto_data_has_its_columns(tmp_path, tiny_tokenizer):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "kto.jsonl")
    assert out.train.column_names == dataset_columns("kto") == [
        "input_ids", "labels", "desirable", "length", "where"]
    assert out.train.features["desirable"].dtype == "bool"
    labels = [json.loads(line)["label"] for line in
              (EXAMPLES / "kto.jsonl").read_text().splitlines()]
    assert list(out.train["desirable"]) == labels
    assert (out.report.desirable, out.report.undesirable) == (60, 60)
    assert "Labels:   60 desirable, 60 undesirable" in format_report(out.report)


def test_sft_columns_and_report_are_unchanged(tmp_path, tiny_tokenizer):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "chat.jsonl")
    assert out.kind == "messages"
    assert out.train.column_names == dataset_columns("messages") == [
        "input_ids", "labels", "length", "where"]
    text = format_report(out.report)
    assert "Identical pairs" not in text and "Labels:" not in text and "Pair sides" not in text


def test_the_report_counts_identical_pairs_cut_answers_and_side_lengths(tmp_path,
                                                                        tiny_tokenizer):
    long = " ".join(["river stone"] * 40)
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Sort.\nb a", "chosen": "a b", "rejected": "b a"},
        {"prompt": "Sort.\nb a", "chosen": "same", "rejected": "same"},
        {"prompt": "Sort.\nb a", "chosen": "a b", "rejected": long},
        {"prompt": "Sort.\nb a", "chosen": "", "rejected": "b"}])
    report = data_report(path, tiny_tokenizer, DataConfig(max_seq_len=48))
    assert (report.used, report.skipped_bad, report.empty_sides) == (3, 1, 1)
    assert report.identical_pairs == 1
    assert report.truncated == report.truncated_answers == 1
    assert report.rejected_length_max > 48 >= report.chosen_length_max
    assert report.length_max == report.rejected_length_max
    assert report.chosen_length_median <= report.rejected_length_median
    assert any("1 pair has the same chosen and rejected answer" in n for n in report.notes)
    text = format_report(report)
    for words in ("Identical pairs: 1 (chosen == rejected", "Empty answers: 1 bad record",
                  "Answers cut: 1 record(s) lost trained tokens to truncation on the chosen or "
                  "rejected side", f"chosen median {report.chosen_length_median:g}",
                  f"rejected median {report.rejected_length_median:g}",
                  "the longer side of each pair"):
        assert words in text, text
    _invariant(report)
    # a pair whose answer is cut away entirely on one side carries nothing: dropped, counted
    tight = data_report(path, tiny_tokenizer, DataConfig(max_seq_len=12))
    assert tight.no_trained_tokens == 3 and tight.used == 0
    # round trip, and older reports without the new fields still load
    assert DataReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    old = {k: v for k, v in report.to_dict().items()
           if k not in ("kind", "identical_pairs", "empty_sides", "truncated_answers",
                        "desirable", "undesirable") and not k.startswith(("chosen_", "rejected_"))}
    loaded = DataReport.from_dict(old)
    assert loaded.identical_pairs == 0 and loaded.kind == "" and format_report(loaded)


def test_word_counts_without_a_tokenizer(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "one two", "chosen": "a b c", "rejected": "d"}])
    report = data_report(path)
    assert report.length_unit == "words"
    assert (report.chosen_length_max, report.rejected_length_max, report.length_max) == (5, 3, 5)
    assert (report.total_tokens, report.trained_tokens) == (8, 4)


def test_one_sided_kto_labels_and_system_prompt(tmp_path, tiny_tokenizer):
    path = _write_jsonl(tmp_path / "k.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    report = data_report(path, tiny_tokenizer, DataConfig(system_prompt="Be brief.",
                                                          train_on_prompt=True))
    assert any("labelled true (desirable)" in n for n in report.notes)
    assert any("train_on_prompt is ignored for kto" in n for n in report.notes)
    assert not any("system_prompt is ignored" in n for n in report.notes)
    shown = preview(path, tiny_tokenizer, DataConfig(system_prompt="Be brief."))
    assert "".join(text for text, _ in shown[0]).startswith("<|im_start|>system\nBe brief.")


# --------------------------------------------------------------------------- batching


def _pairs_dataset(chosen: list[int], rejected: list[int], seed: int = 0) -> datasets.Dataset:
    rng = random.Random(seed)

    def seqs(lengths):
        ids = [[rng.randrange(3, 500) for _ in range(n)] for n in lengths]
        return ids, [[IGNORE_INDEX] * (n // 2) + x[n // 2:] for x, n in zip(ids, lengths)]

    c_ids, c_lab = seqs(chosen)
    r_ids, r_lab = seqs(rejected)
    return datasets.Dataset.from_dict({
        "input_ids": c_ids, "labels": c_lab, "rejected_input_ids": r_ids,
        "rejected_labels": r_lab, "length": [max(a, b) for a, b in zip(chosen, rejected)],
        "where": [f"line {i + 1}" for i in range(len(chosen))]})


def test_pairs_collate_chosen_rows_then_rejected_rows(tmp_path, tiny_tokenizer):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "preference.jsonl")
    pad = tiny_tokenizer.pad_token_id
    batches = Batches(out.train, batch_size=4, max_seq_len=512, packing=False, order="shuffle",
                      seed=3, pad_id=pad)
    assert batches.kind == data_kind(out.train) == "preference"
    assert len(batches) == 30 and sum(len(b) for b in batches.plan(0)) == 120
    rows = batches.plan(0)[0]
    batch = batches.collate(rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    B = len(rows)
    assert batch["input_ids"].shape[0] == 2 * B
    for i, (r,) in enumerate(rows):
        for k, side in ((i, "input_ids"), (B + i, "rejected_input_ids")):
            ids = out.train[r][side]
            labels = out.train[r]["labels" if side == "input_ids" else "rejected_labels"]
            n = len(ids)
            assert batch["input_ids"][k, :n].tolist() == ids
            assert batch["labels"][k, :n].tolist() == labels
            assert batch["attention_mask"][k].tolist() == [1] * n + [0] * (batch["input_ids"]
                                                                           .shape[1] - n)
            assert (batch["input_ids"][k, n:] == pad).all()
            assert (batch["labels"][k, n:] == IGNORE_INDEX).all()
    assert batch["input_ids"].shape[1] == max(out.train[r]["length"] for (r,) in rows)
    assert batches.tokens(rows) == int(batch["attention_mask"].sum())
    assert trained_tokens(batch) == sum(
        sum(x != IGNORE_INDEX for x in out.train[r][c][1:])
        for (r,) in rows for c in ("labels", "rejected_labels"))
    # the plan is the SFT plan of the same lengths: a pair is one record
    sft = datasets.Dataset.from_dict({"input_ids": out.train["input_ids"],
                                      "labels": out.train["labels"],
                                      "length": out.train["length"]})
    same = Batches(sft, batch_size=4, max_seq_len=512, packing=False, order="shuffle", seed=3,
                   pad_id=pad)
    assert same.kind == "sft"
    assert same.plan(0) == batches.plan(0) and same.plan(5) == batches.plan(5)
    assert "120 pairs, each a chosen and a rejected row" in batches.describe()


def test_collate_pairs_layout():
    batch = collate_pairs([(([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([5, 8], [IGNORE_INDEX, 8])),
                           (([9], [IGNORE_INDEX]), ([9, 1, 2, 3], [IGNORE_INDEX, -100, 2, 3]))],
                          pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [9, 0, 0, 0], [5, 8, 0, 0],
                                           [9, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100] * 4, [-100, 8, -100, -100],
                                        [-100, -100, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0],
                                                [1, 1, 1, 1]]


def test_token_budget_batches_count_both_sides_of_a_pair():
    rng = random.Random(4)
    chosen = [rng.randrange(5, 60) for _ in range(80)]
    rejected = [rng.randrange(5, 60) for _ in range(80)]
    ds = _pairs_dataset(chosen, rejected)
    budget = 400
    for order in ("shuffle", "as_is", "shortest_first"):
        batches = Batches(ds, batch_size=1, max_seq_len=64, packing=False, order=order, seed=1,
                          pad_id=0, batch_tokens=budget)
        seen = []
        for rows in batches.epoch_batches(0)[0]:
            widest = max(max(chosen[i], rejected[i]) for (i,) in rows)
            assert 2 * len(rows) * widest <= budget or len(rows) == 1
            assert batches.collate(rows)["input_ids"].numel() <= max(budget, 2 * widest)
            seen += [i for (i,) in rows]
        assert sorted(seen) == list(range(80))
    # as SFT records of the same lengths, a budget twice as large makes the same cuts
    lengths = [max(a, b) for a, b in zip(chosen, rejected)]
    pairs = Batches(ds, batch_size=1, max_seq_len=64, packing=False, order="as_is", seed=1,
                    pad_id=0, batch_tokens=budget)
    rows = [[i] for i in range(80)]
    assert [[rows[p] for p in b] for b in token_budget_batches(rows, lengths, budget // 2)] == \
        pairs.all_batches(0)
    # padding share counts both sides' real tokens
    real = sum(chosen) + sum(rejected)
    padded = sum(2 * len(b) * max(lengths[i] for (i,) in b) for b in pairs.epoch_batches(0)[0])
    assert pairs.padding_share() == pytest.approx(1 - real / padded)


def test_pairs_pack_both_sides_in_one_row_and_kto_records_do_not_pack(tmp_path,
                                                                      tiny_tokenizer):
    ds = _pairs_dataset([10, 12, 30], [11, 9, 20])       # sides: 21, 21, 50 tokens a pair
    pairs = Batches(ds, batch_size=2, max_seq_len=32, packing=True, order="as_is", seed=0,
                    pad_id=0)
    assert pairs.row_capacity == 64 and pairs.costs == [21, 21, 50]
    assert sorted(map(sorted, pairs.rows(0))) == [[0, 1], [2]]    # best fit into 64 tokens
    batch = pairs.collate([[0, 1], [2]])
    seq = batch["seq_ids"]
    assert seq.shape == batch["input_ids"].shape == (2, 50)
    # row 0: pair 0's chosen (seq 0) and rejected (seq 3), then pair 1's (1, 4); row 1: pair 2
    assert seq[0].tolist() == [0] * 10 + [3] * 11 + [1] * 12 + [4] * 9 + [-1] * 8
    assert seq[1].tolist() == [2] * 30 + [5] * 20
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "kto.jsonl")
    with pytest.raises(ValueError, match="packing is not supported for kto records"):
        Batches(out.train, batch_size=2, max_seq_len=64, packing=True, order="as_is", seed=0,
                pad_id=0)


def test_kto_batches_carry_desirable_and_the_mismatched_batch(tmp_path, tiny_tokenizer):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "kto.jsonl")
    pad = tiny_tokenizer.pad_token_id
    batches = Batches(out.train, batch_size=3, max_seq_len=512, packing=False, order="as_is",
                      seed=0, pad_id=pad)
    assert batches.kind == "kto"
    rows = batches.plan(0)[0]
    batch = batches.collate(rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "desirable"}
    assert batch["desirable"].dtype == torch.bool and batch["desirable"].shape == (3,)
    assert batch["desirable"].tolist() == [out.train[r]["desirable"] for (r,) in rows]
    assert batch["input_ids"].shape[0] == 3
    kl = kto_mismatched(batch, pad)
    for i in range(3):
        own, prev = out.train[rows[i][0]], out.train[rows[i - 1][0]]
        p, q = _prompt_len(own["labels"]), _prompt_len(prev["labels"])
        expected = own["input_ids"][:p] + prev["input_ids"][q:]
        n = len(expected)
        assert kl["input_ids"][i, :n].tolist() == expected
        assert kl["labels"][i, :n].tolist() == [IGNORE_INDEX] * p + prev["labels"][q:]
        assert int(kl["attention_mask"][i].sum()) == n
    assert kto_mismatched(batch, pad, max_len=10)["input_ids"].shape[1] == 10


# --------------------------------------------------------------------------- preview


def test_preview_shows_both_sides_of_a_pair(tiny_tokenizer):
    shown = preview(EXAMPLES / "preference.jsonl", tiny_tokenizer, n=2)
    records = [json.loads(line) for line in
               (EXAMPLES / "preference.jsonl").read_text().splitlines()[:2]]
    assert len(shown) == 2
    for record, pair in zip(records, shown):
        assert set(pair) == {"chosen", "rejected"}
        for side in ("chosen", "rejected"):
            trained = "".join(text for text, loss in pair[side] if loss)
            assert trained == record[side][0]["content"] + EOT
            whole = "".join(text for text, _ in pair[side])
            assert whole == tiny_tokenizer.apply_chat_template(record["prompt"] + record[side],
                                                               tokenize=False)
    kto = preview(EXAMPLES / "kto.jsonl", tiny_tokenizer, n=1)
    assert isinstance(kto[0], list) and all(isinstance(p, tuple) for p in kto[0])
    sft = preview(EXAMPLES / "chat.jsonl", tiny_tokenizer, n=1)
    assert isinstance(sft[0], list) and isinstance(sft[0][0], tuple)


# --------------------------------------------------------------------------- bundled examples


def test_the_bundled_files_are_the_generator_output(tmp_path):
    written = {p.name for p in write_examples(tmp_path)}
    assert {"preference.jsonl", "kto.jsonl"} <= written
    for name in written:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


def test_the_bundled_files_load_and_hold_right_and_wrong_answers(tiny_tokenizer):
    pairs = preference_records()
    assert len(pairs) == 120 and all(p["chosen"] != p["rejected"] for p in pairs)
    kto = kto_records()
    assert sum(r["label"] for r in kto) == 60
    for name in ("preference.jsonl", "kto.jsonl"):
        report = data_report(EXAMPLES / name, tiny_tokenizer)
        assert report.used == report.records == 120 and report.skipped_bad == 0
        assert report.identical_pairs == 0 and report.truncated == 0
    rng = random.Random(0)
    for task, words in [("count", ["a", "b"]), ("reverse", ["cat", "cat"]),
                        ("sort", ["a", "b"]), ("first", ["x", "x"]), ("upper", ["RED", "RED"])]:
        from engine.data.examples import TASKS

        assert mistake(task, words, rng) != TASKS[task][1](words)

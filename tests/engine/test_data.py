"""engine.data: files to tokenized examples, loss masks, bad records, curation, split and cache;
and the report of it all (engine.data.report)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import engine.data.pipeline as data_mod
from engine.config import DataConfig, TrainConfig
from engine.data import (DEFAULT_CHAT_TEMPLATE, DataError, IGNORE_INDEX, Encoder, data_report,
                         ensure_chat_template, file_sha256, prepare, preview, read_records,
                         split_indices)
from engine.data import DataReport, format_report
from engine.models.demo import CHAT_TEMPLATE
from engine.data.examples import alpaca_records, chat_records
from tests_paths import EXAMPLES

EOT = "<|im_end|>"  # the demo tokenizer's end-of-turn and EOS token


def _cfg(train, **data) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.train = str(train)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _prepare(tmp_path, tokenizer, train, seed=42, **data):
    """prepare() with its own cache folder; returns (PreparedData, log lines)."""
    data.setdefault("val_fraction", 0)
    cfg = _cfg(train, **data)
    cfg.train.seed = seed
    lines: list[str] = []
    return prepare(cfg, tokenizer, cache_dir=tmp_path / "cache", log=lines.append), lines


def _trained_runs(tokenizer, ids, labels) -> list[str]:
    """The text of each maximal run of tokens that carry loss."""
    runs, current = [], []
    for tid, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _write_csv(path, records):
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def _invariant(r: DataReport) -> None:
    assert r.records == (r.used + r.skipped_bad + r.dropped_duplicates + r.too_short +
                         r.too_long + r.no_trained_tokens), r.to_dict()


@pytest.fixture()
def fresh_tokenizer(tiny_model):
    """A private copy of the tiny tokenizer, for tests that change it."""
    return AutoTokenizer.from_pretrained(tiny_model)


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("name, fmt", [
    ("alpaca.json", "alpaca"), ("alpaca.csv", "alpaca"), ("chat.jsonl", "chat"),
    ("sharegpt.json", "sharegpt"), ("completion.jsonl", "completion"), ("text.jsonl", "text")])
def test_bundled_examples_tokenize_with_the_format_detected(tmp_path, tiny_tokenizer, name, fmt):
    out, lines = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / name)
    assert out.format == out.report.format == fmt
    assert out.report.format_reason.startswith(f"{fmt}: records have ")
    assert any(f"format {fmt} ({fmt}: records have" in line for line in lines), lines
    assert out.train.column_names == ["input_ids", "labels", "length", "where"]
    assert out.report.used == len(out.train) == out.report.records
    for row in out.train:
        assert row["labels"][0] == IGNORE_INDEX, "the first label must never carry loss"
        assert len(row["labels"]) == len(row["input_ids"]) == row["length"]
        assert any(x != IGNORE_INDEX for x in row["labels"])
    _invariant(out.report)


def test_multi_turn_chat_trains_exactly_each_assistant_turn(tmp_path, tiny_tokenizer):
    path = EXAMPLES / "chat.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert max(sum(m["role"] == "assistant" for m in r["messages"]) for r in records) >= 3
    out, _ = _prepare(tmp_path, tiny_tokenizer, path)
    for record, row in zip(records, out.train):
        expected = [m["content"] + EOT for m in record["messages"] if m["role"] == "assistant"]
        assert _trained_runs(tiny_tokenizer, row["input_ids"], row["labels"]) == expected
        rendered = tiny_tokenizer.apply_chat_template(record["messages"], tokenize=False)
        assert tiny_tokenizer.decode(row["input_ids"]) == rendered


def test_sharegpt_and_alpaca_train_only_the_responses(tmp_path, tiny_tokenizer):
    share = json.loads((EXAMPLES / "sharegpt.json").read_text())
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "sharegpt.json")
    for record, row in zip(share, out.train):
        expected = [t["value"] + EOT for t in record["conversations"] if t["from"] == "gpt"]
        assert _trained_runs(tiny_tokenizer, row["input_ids"], row["labels"]) == expected
    alpaca = json.loads((EXAMPLES / "alpaca.json").read_text())
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "alpaca.json")
    for record, row in zip(alpaca, out.train):
        runs = _trained_runs(tiny_tokenizer, row["input_ids"], row["labels"])
        assert runs == [record["output"] + EOT]
        assert record["instruction"] in tiny_tokenizer.decode(row["input_ids"])


def test_completion_trains_the_completion_and_eos_as_raw_text(tmp_path, tiny_tokenizer):
    records = [json.loads(x) for x in (EXAMPLES / "completion.jsonl").read_text().splitlines()]
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "completion.jsonl")
    for record, row in zip(records, out.train):
        assert tiny_tokenizer.decode(row["input_ids"]) == record["prompt"] + \
            record["completion"] + EOT  # no chat template
        runs = _trained_runs(tiny_tokenizer, row["input_ids"], row["labels"])
        assert runs == [record["completion"] + EOT]


def test_text_trains_every_token_but_the_first(tmp_path, tiny_tokenizer):
    records = [json.loads(x) for x in (EXAMPLES / "text.jsonl").read_text().splitlines()]
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "text.jsonl")
    for record, row in zip(records, out.train):
        assert tiny_tokenizer.decode(row["input_ids"]) == record["text"] + EOT
        assert row["labels"] == [IGNORE_INDEX] + row["input_ids"][1:]


@pytest.mark.parametrize("name", ["chat.jsonl", "alpaca.json", "completion.jsonl"])
def test_train_on_prompt_trains_everything(tmp_path, tiny_tokenizer, name):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / name, train_on_prompt=True)
    for row in out.train:
        assert row["labels"] == [IGNORE_INDEX] + row["input_ids"][1:]
    assert out.report.trained_tokens == out.report.total_tokens - out.report.used


def test_every_file_type_gives_the_same_examples(tmp_path, tiny_tokenizer):
    records = alpaca_records(30, seed=9)
    records[3]["input"] = ""  # an empty cell in every file type
    files = [_write_jsonl(tmp_path / "a.jsonl", records), _write_csv(tmp_path / "a.csv", records),
             _write_parquet(tmp_path / "a.parquet", records)]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=1))
    files.append(tmp_path / "a.json")
    results = [_prepare(tmp_path, tiny_tokenizer, f)[0] for f in files]
    for out in results:
        assert out.format == "alpaca" and out.report.used == 30
        assert out.train["input_ids"] == results[0].train["input_ids"]
        assert out.train["labels"] == results[0].train["labels"]


def test_chat_from_parquet_and_csv_cells(tmp_path, tiny_tokenizer):
    records = chat_records(12, seed=3)
    reference, _ = _prepare(tmp_path, tiny_tokenizer, _write_jsonl(tmp_path / "c.jsonl", records))
    nested, _ = _prepare(tmp_path, tiny_tokenizer, _write_parquet(tmp_path / "c.parquet", records))
    as_text = [{"messages": json.dumps(r["messages"])} for r in records]
    cells, _ = _prepare(tmp_path, tiny_tokenizer, _write_csv(tmp_path / "c.csv", as_text))
    assert nested.format == cells.format == "chat"
    assert nested.train["labels"] == reference.train["labels"] == cells.train["labels"]


def test_system_prompt_is_added_where_missing(tmp_path, tiny_tokenizer):
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "chat.jsonl",
                      system_prompt="Answer like a pirate.")
    texts = [tiny_tokenizer.decode(ids) for ids in out.train["input_ids"]]
    assert all(t.startswith("<|im_start|>system\n") for t in texts)
    assert sum("Answer like a pirate." in t for t in texts) == 60  # the records without one


# --------------------------------------------------------------------------- templates and BOS


def test_a_tokenizer_without_a_chat_template_gets_the_default(tmp_path, fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    assert ensure_chat_template(fresh_tokenizer) == "default"
    assert fresh_tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert ensure_chat_template(fresh_tokenizer) == "default"  # idempotent, still reported
    out, _ = _prepare(tmp_path, fresh_tokenizer, EXAMPLES / "alpaca.json")
    assert out.report.chat_template == "default"
    record = json.loads((EXAMPLES / "alpaca.json").read_text())[0]
    row = out.train[0]
    assert fresh_tokenizer.decode(row["input_ids"]) == (
        f"<|user|>\n{record['instruction']}\n{record['input']}\n"
        f"<|assistant|>\n{record['output']}{EOT}\n")
    assert _trained_runs(fresh_tokenizer, row["input_ids"], row["labels"]) == \
        [record["output"] + EOT]


def test_the_bos_token_appears_once(fresh_tokenizer):
    from tokenizers.processors import TemplateProcessing

    tok = fresh_tokenizer
    tok.bos_token = "<|endoftext|>"
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A",
                                                       special_tokens=[("<|endoftext|>", bos)])
    assert tok("a")["input_ids"][0] == bos  # this tokenizer adds a BOS by default
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    for template in (CHAT_TEMPLATE, "{{ bos_token }}" + CHAT_TEMPLATE):
        tok.chat_template = template
        ids = Encoder(tok, "messages").encode(conversation).input_ids
        assert ids.count(bos) == 1 and ids[0] == bos, template
    for kind, example in (("completion", ("q", " a")), ("text", "some text")):
        enc = Encoder(tok, kind).encode(example)
        assert enc.input_ids.count(bos) == 1 and enc.input_ids[0] == bos
        assert enc.labels[0] == IGNORE_INDEX


def test_a_template_that_rejects_a_conversation_is_a_bad_record(tmp_path, fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
        "supported') }}{% endif %}" + CHAT_TEMPLATE)
    path = EXAMPLES / "chat.jsonl"
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, fresh_tokenizer, path)
    assert f"{path} line 1: the chat template rejected this conversation (System role not " \
           "supported)" in str(info.value)
    out, _ = _prepare(tmp_path, fresh_tokenizer, path, on_bad_record="skip")
    assert out.report.skipped_bad == 60 and out.report.used == 60


def test_a_template_that_rewrites_earlier_turns_is_named(tmp_path, fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    with pytest.raises(DataError, match="the chat template renders the first 2 messages "
                                        "differently"):
        _prepare(tmp_path, fresh_tokenizer, EXAMPLES / "alpaca.json")


# --------------------------------------------------------------------------- bad records

GOOD = '{"instruction": "a", "output": "b"}'
BAD_FILES = [
    # file name, content, data settings, what the message must say (after the file path)
    ("missing.jsonl", f"{GOOD}\n{{\"instruction\": \"a\"}}\n", {},
     " line 2: field 'output' is missing (alpaca records need instruction and output)"),
    ("invalid.jsonl", f"{GOOD}\n\nnot json\n", {},
     " line 3: is not valid JSON (Expecting value at column 1)"),
    ("number.jsonl", f'{GOOD}\n{{"instruction": "a", "output": 4}}\n', {},
     " line 2: field 'output' must be text, got a number (4)"),
    ("empty_output.jsonl", f'{GOOD}\n{{"instruction": "a", "output": " "}}\n', {},
     " line 2: field 'output' is empty"),
    ("role.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                   '"content": "a"}]}\n{"messages": [{"role": "robot", "content": "q"}]}\n', {},
     " line 2: field 'messages[0].role' is 'robot' (expected one of: system, user, assistant)"),
    ("list.jsonl", f"{GOOD}\n[1, 2]\n", {},
     " line 2: is a JSON list, not an object (each alpaca record must be an object"),
    ("record.json", f"[\n{GOOD},\n{{\"instruction\": \"a\"}}\n]", {},
     " record 2 (line 3): field 'output' is missing"),
    ("object.json", '{"data": [{"instruction": "a", "output": "b"}]}', {},
     ": a .json file must hold an array of records [{...}, ...], but it holds an object with "
     "keys data; the records may be the list under 'data'"),
    ("syntax.json", f'[\n{GOOD},\n{{"instruction": "a" "output": "b"}}\n]', {},
     " line 3 column 21: invalid JSON (Expecting ',' delimiter)"),
    ("trailing.json", f"[{GOOD},]", {}, " line 1 column 38: invalid JSON (Expecting value)"),
    ("short_row.csv", "instruction,input,output\na,,b\nc,d\n", {},
     " row 2 (line 3): field 'output' is missing"),
    ("long_row.csv", "instruction,input,output\na,b,c,d\n", {},
     " row 1 (line 2): has 4 values but the header has 3 columns"),
    ("multiline.csv", 'instruction,input,output\n"two\nlines",x,y\nq,,\n', {},
     " row 2 (line 4): field 'output' is empty"),
    ("empty.jsonl", "", {}, " is empty; it needs at least one record"),
    ("blank.json", " \n", {}, " is empty; it needs an array of records"),
    ("none.json", "[]", {}, " has no records"),
    ("blank_lines.jsonl", "\n\n", {}, " has no records"),
    ("header_only.csv", "instruction,output\n", {}, " has no records"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {},
     " line 2: is not UTF-8 text"),
    ("unknown.jsonl", '{"question": "q", "answer": "a"}\n', {},
     ": cannot tell the format: records have fields answer, question"),
    ("declared.jsonl", f"{GOOD}\n", {"format": "chat"},
     " line 1: field 'messages' is missing (chat records need messages"),
    ("sharegpt.json", '[{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", '
                      '"value": "a"}]}]', {},
     " record 1 (line 1): field 'conversations[1].from' is 'bot'"),
    ("completion.jsonl", '{"prompt": "q"}\n', {},
     " line 1: field 'completion' is missing (completion records need prompt and completion)"),
    ("text.jsonl", '{"text": "ok"}\n{"text": ""}\n', {}, " line 2: field 'text' is empty"),
]


@pytest.mark.parametrize("name, content, settings, says", BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_data_names_file_line_field_and_fix(tmp_path, tiny_tokenizer, name, content,
                                                settings, says):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, tiny_tokenizer, path, **settings)
    assert f"{path}{says}" in str(info.value)


def test_bad_parquet_rows_and_missing_files(tmp_path, tiny_tokenizer):
    path = _write_parquet(tmp_path / "bad.parquet", [
        {"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}])
    with pytest.raises(DataError, match=r"bad\.parquet row 2: field 'output' is null"):
        _prepare(tmp_path, tiny_tokenizer, path)
    with pytest.raises(DataError, match="nothing.jsonl does not exist"):
        _prepare(tmp_path, tiny_tokenizer, tmp_path / "nothing.jsonl")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="is not a readable parquet file"):
        _prepare(tmp_path, tiny_tokenizer, tmp_path / "x.parquet")
    with pytest.raises(DataError, match="unsupported file type .txt"):
        read_records(tmp_path / "x.txt")


def _mixed_file(tmp_path):
    good = [json.dumps(r) for r in alpaca_records(10, seed=11)]
    bad = ['{"instruction": "a"}', "not json", '{"instruction": "a", "output": ""}', "[1]",
           '{"instruction": "a", "output": 7}']
    lines = good[:4] + bad[:2] + good[4:8] + bad[2:] + good[8:]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_skip_counts_bad_records_and_keeps_their_reasons(tmp_path, tiny_tokenizer):
    path = _mixed_file(tmp_path)
    with pytest.raises(DataError, match="line 5: field 'output' is missing"):
        _prepare(tmp_path, tiny_tokenizer, path)
    out, lines = _prepare(tmp_path, tiny_tokenizer, path, on_bad_record="skip")
    r = out.report
    assert (r.records, r.used, r.skipped_bad) == (15, 10, 5)
    assert [m.split(": ", 1)[0] for m in r.bad_examples] == [
        f"{path} line {n}" for n in (5, 6, 11, 12, 13)]
    assert any("5 bad" in line for line in lines)
    _invariant(r)


def test_data_report_lists_bad_records_without_raising(tmp_path, tiny_tokenizer):
    path = _mixed_file(tmp_path)
    for tokenizer in (None, tiny_tokenizer):
        r = data_report(path, tokenizer)
        assert (r.records, r.used, r.skipped_bad, len(r.bad_examples)) == (15, 10, 5, 5)
        text = format_report(r)
        assert "line 6: is not valid JSON" in text and "5 bad" in text
    many = tmp_path / "many.jsonl"
    many.write_text('{"instruction": "a"}\n' * 30)
    r = data_report(many)
    assert r.skipped_bad == 30 and len(r.bad_examples) == data_mod.MAX_BAD_EXAMPLES
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"q": 1}\n{"q": 2}\n')
    r = data_report(unknown)
    assert r.format == "unknown" and r.skipped_bad == 2 and "cannot tell the format" in \
        r.bad_examples[0]
    _invariant(r)


# --------------------------------------------------------------------------- curation


def test_dedupe_and_token_range_count_what_they_drop(tmp_path, tiny_tokenizer):
    records = alpaca_records(20, seed=12)
    path = _write_jsonl(tmp_path / "d.jsonl", records + records[:3] + [records[5]])
    kept, _ = _prepare(tmp_path, tiny_tokenizer, path)
    assert (kept.report.duplicates, kept.report.dropped_duplicates, kept.report.used) == (4, 0, 24)
    deduped, _ = _prepare(tmp_path, tiny_tokenizer, path, dedupe=True)
    assert (deduped.report.duplicates, deduped.report.dropped_duplicates) == (4, 4)
    assert deduped.report.used == 20
    assert deduped.train["input_ids"] == kept.train["input_ids"][:20]  # file order kept
    _invariant(deduped.report)

    lengths = deduped.train["length"]
    low, high = sorted(lengths)[5], sorted(lengths)[-5]
    ranged, lines = _prepare(tmp_path, tiny_tokenizer, path, dedupe=True, min_tokens=low,
                             max_tokens=high)
    r = ranged.report
    assert r.too_short == sum(n < low for n in lengths) > 0
    assert r.too_long == sum(n > high for n in lengths) > 0
    assert r.used == 20 - r.too_short - r.too_long
    assert all(low <= n <= high for n in ranged.train["length"])
    assert any(f"{r.too_short} too short, {r.too_long} too long" in line for line in lines)
    _invariant(r)


def test_long_records_are_truncated_and_counted(tmp_path, tiny_tokenizer):
    full, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "chat.jsonl")
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "chat.jsonl", max_seq_len=100)
    r = out.report
    assert r.truncated == sum(n > 100 for n in full.train["length"]) > 0
    assert r.no_trained_tokens == 0 and r.used == 120
    assert max(out.train["length"]) == 100
    assert r.length_max == full.report.length_max  # lengths are reported before truncation
    for short, long in zip(out.train, full.train):
        assert short["input_ids"] == long["input_ids"][:short["length"]]
        assert short["labels"] == long["labels"][:short["length"]]
    _invariant(r)


def test_a_record_truncated_before_its_response_is_dropped_and_counted(tmp_path,
                                                                        tiny_tokenizer):
    records = [{"instruction": "word " * 60, "output": "x"}] + alpaca_records(5, seed=13)
    path = _write_jsonl(tmp_path / "t.jsonl", records)
    out, lines = _prepare(tmp_path, tiny_tokenizer, path, max_seq_len=48)
    assert out.report.no_trained_tokens == 1 and out.report.used == 5
    assert any("1 without trained tokens" in line for line in lines)
    _invariant(out.report)


def test_empty_prompt_fields_are_kept_and_counted(tmp_path, tiny_tokenizer):
    path = _write_jsonl(tmp_path / "e.jsonl", [{"instruction": "", "output": "b"},
                                                {"instruction": "a", "output": "b"}])
    out, _ = _prepare(tmp_path, tiny_tokenizer, path)
    assert out.report.empty_fields == 1 and out.report.used == 2


# --------------------------------------------------------------------------- split and cache


def test_validation_split_is_deterministic_by_seed(tmp_path, tiny_tokenizer):
    path = EXAMPLES / "alpaca.json"
    a, _ = _prepare(tmp_path, tiny_tokenizer, path, seed=1, val_fraction=0.1)
    b, _ = _prepare(tmp_path, tiny_tokenizer, path, seed=1, val_fraction=0.1)
    c, _ = _prepare(tmp_path, tiny_tokenizer, path, seed=2, val_fraction=0.1)
    assert (len(a.train), len(a.validation)) == (216, 24)
    assert (a.report.train_records, a.report.validation_records) == (216, 24)
    assert a.validation["input_ids"] == b.validation["input_ids"]
    assert a.train["input_ids"] == b.train["input_ids"]
    assert a.validation["input_ids"] != c.validation["input_ids"]
    assert split_indices(10, 0.1, 0) == split_indices(10, 0.1, 0)
    train, val = split_indices(10, 0.5, 3)
    assert sorted(train + val) == list(range(10)) and len(val) == 5 and train == sorted(train)
    assert split_indices(1, 0.5, 0) == ([0], [])
    assert split_indices(5, 0.0, 0) == (list(range(5)), [])


def test_a_separate_validation_file(tmp_path, tiny_tokenizer):
    val = _write_jsonl(tmp_path / "val.jsonl", alpaca_records(7, seed=14))
    out, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "alpaca.json", validation=str(val),
                      val_fraction=0.1)
    assert len(out.train) == 240 and len(out.validation) == 7
    assert out.report.validation.records == 7 and out.report.validation_records == 7
    assert "Validation file:" in format_report(out.report)


def test_second_run_is_a_cache_hit_with_identical_results(tmp_path, tiny_tokenizer,
                                                          monkeypatch):
    path = tmp_path / "c.jsonl"
    path.write_text((EXAMPLES / "chat.jsonl").read_text())
    first, lines = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.2)
    assert not first.report.cache_hit and any("cache miss" in line for line in lines)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize")

    with monkeypatch.context() as m:
        m.setattr(Encoder, "__call__", no_tokenizing)
        second, lines = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.2)
    assert second.report.cache_hit and any("cache hit" in line for line in lines)
    for split in ("train", "validation"):
        assert getattr(first, split).to_dict() == getattr(second, split).to_dict()
    assert {**first.report.to_dict(), "cache_hit": True} == second.report.to_dict()

    changed, _ = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.2, max_seq_len=64)
    assert not changed.report.cache_hit  # a setting that changes tokens
    path.write_text(path.read_text() + (EXAMPLES / "chat.jsonl").read_text().splitlines()[0]
                    + "\n")
    edited, _ = _prepare(tmp_path, tiny_tokenizer, path, val_fraction=0.2)
    assert not edited.report.cache_hit and edited.report.records == 121


def test_cache_defaults_to_ftstudio_home(home, tiny_tokenizer):
    out = prepare(_cfg(EXAMPLES / "text.jsonl"), tiny_tokenizer, log=lambda line: None)
    assert out.report.used == 200
    assert list((home / "cache").glob("tokenized-*/report.json"))


def test_large_inputs_tokenize_in_several_processes(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(data_mod.os, "cpu_count", lambda: 16)
    assert data_mod._num_proc(data_mod.PARALLEL_THRESHOLD) is None
    assert data_mod._num_proc(data_mod.PARALLEL_THRESHOLD + 1) == 8
    monkeypatch.setattr(data_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(data_mod, "PARALLEL_THRESHOLD", 10)
    parallel, _ = _prepare(tmp_path, tiny_tokenizer, EXAMPLES / "chat.jsonl")
    monkeypatch.setattr(data_mod, "PARALLEL_THRESHOLD", 10_000)
    serial = prepare(_cfg(EXAMPLES / "chat.jsonl", val_fraction=0), tiny_tokenizer,
                     cache_dir=tmp_path / "other", log=lambda line: None)
    assert parallel.train.to_dict() == serial.train.to_dict()


# --------------------------------------------------------------------------- report and preview


def test_report_histogram_and_text(tiny_tokenizer):
    r = data_report(EXAMPLES / "alpaca.json", tiny_tokenizer, DataConfig(max_seq_len=32))
    assert r.length_unit == "tokens" and r.records == r.used == 240
    assert (r.train_records, r.validation_records) == (216, 24)
    assert r.length_min <= r.length_median <= r.length_p95 <= r.length_max
    assert sum(count for _, _, count in r.histogram) == 240
    assert all(a < b for a, b, _ in r.histogram)
    text = format_report(r)
    assert "Format:   alpaca: records have instruction and output" in text
    assert f"Truncated: {r.truncated} record(s) longer than 32 tokens" in text
    assert text.count(" | ") == len(r.histogram)
    assert json.loads(json.dumps(r.to_dict()))["histogram"]
    assert DataReport.from_dict(r.to_dict()) == r

    words = data_report(EXAMPLES / "chat.jsonl")
    assert words.length_unit == "words" and words.chat_template is None
    assert any("whitespace-separated words" in n for n in words.notes)
    assert "Words:" in format_report(words)


def test_preview_shows_token_pieces_and_which_carry_loss(tiny_tokenizer):
    shown = preview(EXAMPLES / "chat.jsonl", tiny_tokenizer, DataConfig(), n=2)
    assert len(shown) == 2
    first = json.loads((EXAMPLES / "chat.jsonl").read_text().splitlines()[0])
    assert "".join(piece for piece, _ in shown[0]) == tiny_tokenizer.apply_chat_template(
        first["messages"], tokenize=False)
    assert "".join(piece for piece, loss in shown[0] if loss) == \
        first["messages"][-1]["content"] + EOT
    completion = preview(EXAMPLES / "completion.jsonl", tiny_tokenizer, DataConfig(), n=1)[0]
    assert completion[-1] == (EOT, True) and completion[0][1] is False


def test_read_records_and_sha(tmp_path):
    records = read_records(EXAMPLES / "alpaca.json")
    assert len(records) == 240 and records[0].where == "record 1 (line 2)"
    assert read_records(EXAMPLES / "chat.jsonl")[4].where == "line 5"
    assert read_records(EXAMPLES / "alpaca.csv")[0].where == "row 1 (line 2)"
    path = tmp_path / "x.jsonl"
    path.write_text("not json\n")
    [bad] = read_records(path, on_bad_record="skip")
    assert bad.data is None and "not valid JSON" in bad.error
    assert len(file_sha256(path)) == 64
    assert file_sha256(path) != file_sha256(EXAMPLES / "chat.jsonl")

"""From a data file to tokenized training examples, with a report of everything that happened.

Use from Python:
    from engine.data import prepare, data_report, format_report
    data = prepare(cfg, tokenizer, log=print)     # PreparedData: train, validation, report
    print(format_report(data_report("static/examples/chat.jsonl", tokenizer)))

The report (engine.data.report.DataReport) counts where every record went; this module fills it.

The path a file takes (each step counts what it removes, so nothing is dropped silently):

1. engine.data.readers.read_records: .json (an array), .jsonl, .csv or .parquet into raw records, each with where it
   came from ("line 17", "record 3 (line 12)", "row 4 (line 5)", "row 4"; all 1-based).
2. the format (engine.data.formats): given by data.format or detected from the fields; each record is
   converted to a normalized example. A malformed one raises DataError naming the file, the line
   or record, the field and the fix, or with data.on_bad_record=skip is counted in `skipped_bad`.
3. curation: data.system_prompt is added to conversations that have none; exact duplicates are
   counted (and dropped with data.dedupe); records outside min_tokens..max_tokens are dropped.
4. tokenizing (through `datasets`, in parallel above PARALLEL_THRESHOLD records), rendering
   conversations with the tokenizer's chat template. Longer than data.max_seq_len: truncated and
   counted. A record left with no trained token after truncation is dropped and counted.
5. the validation split: data.validation, or a seeded val_fraction of the records.

Tokenized examples have four columns, in file order (batching applies data.order later):
    input_ids  list[int]
    labels     list[int]; -100 where no loss is computed
    length     int, len(input_ids)
    where      str, the record's place in its file ("line 17"), so the validation split can be
               found again as records (engine.evaluation.evaluate answers their prompts)
Preference data (format preference, kind "preference": DPO, IPO, SimPO, ORPO) has six, one row
per pair (dataset_columns(kind) names them):
    input_ids, labels                    the chosen side: prompt + chosen answer
    rejected_input_ids, rejected_labels  the rejected side: prompt + rejected answer
    length                               int, the longer side's length (after truncation)
    where
kto data (format kto) has five: input_ids, labels (prompt + completion), desirable (bool: the
record's label), length, where. Both sides of a pair, and a kto record, are rendered with the
chat template like a chat example, and their labels are on the answer only (the prompt's
assistant turns included, and data.train_on_prompt is ignored); each side is truncated to
data.max_seq_len keeping its start. A pair with no trained token left on either side is dropped
and counted; truncation that cuts answer tokens is counted (truncated_answers).
Labels are -100 on every prompt and template token unless data.train_on_prompt. Each assistant
turn is trained: its content and the template's end-of-turn token (e.g. <|im_end|>), so the model
learns to stop; whitespace the template writes after that token is not. Completion records train
the completion and an EOS; text records train every token and an EOS. The FIRST LABEL OF EVERY
EXAMPLE IS -100, always: nothing predicts a record's first token, so a packed sequence never
learns to predict one record from the end of the one before it. A BOS token appears once: from
the chat template when it writes one, else prepended when the tokenizer adds one by default.

Tokenizers without a chat template get ftstudio's DEFAULT_CHAT_TEMPLATE (engine/data/template.py
shows it). Tokenized data is cached (engine/data/cache.py) under `cache_dir` (default
$FTSTUDIO_HOME/cache), keyed by the sha256 of the file, the tokenizer (name, vocab, chat template) and
the data settings that change tokens and the data's kind (engine/data/cache.py says how); a second
run loads it instead of tokenizing again.

About 500 lines: the path a file takes (read, normalize, curate, tokenize, split, report) is
one pipeline, kept on one page; reading, formats, encoding and the cache are their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import DataConfig, TrainConfig
from engine.data.cache import cache_key, default_cache_dir, progress_bars, save_cache
from engine.data.encode import IGNORE_INDEX, Encoder
from engine.data.formats import (CHAT_KINDS, FORMATS, PREFERENCE_KINDS, EmptyAnswer,
                                  RecordError, detect_format)
from engine.data.readers import (SKIP_HINT, DataError, RawRecord, check_path, map_columns,
                                 read_records, record_columns)
from engine.data.report import DataReport, fill_lengths, fill_side_lengths, summary_line
from engine.data.template import ensure_chat_template

if TYPE_CHECKING:
    import datasets

#: above this many records, tokenizing runs in min(cpu_count, 8) processes
PARALLEL_THRESHOLD = 20_000
#: how many bad-record messages a report keeps
MAX_BAD_EXAMPLES = 20


class FormatNotDetected(DataError):
    """data.format is auto and no format's fields are in the records."""


def dataset_columns(kind: str) -> list[str]:
    """The columns of a tokenized dataset of this kind (the format's kind), in order."""
    if kind == "preference":
        return ["input_ids", "labels", "rejected_input_ids", "rejected_labels", "length", "where"]
    if kind == "kto":
        return ["input_ids", "labels", "desirable", "length", "where"]
    return ["input_ids", "labels", "length", "where"]


#: what the report counts of each tokenized record (Encoder.__call__ says what each is)
_ROW_STATS = ("where", "full_length", "length", "tokens", "trained", "untrained", "answer_cut",
              "error")


def _features(kind: str):
    from datasets import Features, Sequence, Value

    ids = Sequence(Value("int32"))
    columns = {"where": Value("string"), "input_ids": ids, "labels": ids,
               **{c: Value("int32") for c in _ROW_STATS if c not in ("where", "error")},
               "error": Value("string")}
    if kind == "preference":
        columns |= {"rejected_input_ids": ids, "rejected_labels": ids,
                    "chosen_full_length": Value("int32"), "rejected_full_length": Value("int32")}
    elif kind == "kto":
        columns["desirable"] = Value("bool")
    return Features(columns)


def _num_proc(n_records: int) -> int | None:
    if n_records <= PARALLEL_THRESHOLD:
        return None
    procs = min(os.cpu_count() or 1, 8)
    return procs if procs > 1 else None


# --------------------------------------------------------------------------- the pipeline


@dataclass
class PreparedData:
    train: datasets.Dataset        # columns: dataset_columns(kind)
    validation: datasets.Dataset | None
    report: DataReport
    format: str
    kind: str = ""                 # the format's kind: messages, completion, text, preference, kto


class _Tally:
    """Counts bad records (or raises on the first one, per on_bad_record)."""

    def __init__(self, path: str, report: DataReport, on_bad: str):
        self.path, self.report, self.on_bad = path, report, on_bad

    def bad(self, where: str, reason: str) -> None:
        message = f"{self.path} {where}: {reason}"
        if self.on_bad == "error":
            raise DataError(message + SKIP_HINT)
        self.report.skipped_bad += 1
        if len(self.report.bad_examples) < MAX_BAD_EXAMPLES:
            self.report.bad_examples.append(message)


def _resolve_format(path: str, records: list[RawRecord], fmt: str) -> tuple[str, str]:
    if fmt != "auto":
        return fmt, "set by data.format"
    try:
        return detect_format(r.data for r in records if r.error is None)
    except RecordError as exc:
        raise FormatNotDetected(f"{path}: {exc}") from None


def _normalize(records: list[RawRecord], fmt: str, d: DataConfig, tally: _Tally
               ) -> list[tuple[str, Any]]:
    """(where, normalized example) for every usable record; bad ones go to the tally."""
    convert, kind = FORMATS[fmt].convert, FORMATS[fmt].kind
    report = tally.report
    examples, seen = [], set()
    for r in records:
        if r.error:
            tally.bad(r.where, r.error)
            continue
        try:
            if not isinstance(r.data, dict):
                raise RecordError(None, f"is a JSON {type(r.data).__name__}, not an object",
                                  f"each {fmt} record must be an object with "
                                  f"{' and '.join(FORMATS[fmt].fields)}")
            example = convert(r.data)
        except RecordError as exc:
            report.empty_sides += isinstance(exc, EmptyAnswer)
            tally.bad(r.where, str(exc))
            continue
        if kind == "messages" and d.system_prompt and example[0]["role"] != "system":
            example = [{"role": "system", "content": d.system_prompt}] + example
        if kind in PREFERENCE_KINDS and d.system_prompt and \
                example["prompt"][0]["role"] != "system":
            example = {**example, "prompt": [{"role": "system", "content": d.system_prompt}]
                       + example["prompt"]}
        key = json.dumps(example, ensure_ascii=False)
        if key in seen:
            report.duplicates += 1
            if d.dedupe:
                report.dropped_duplicates += 1
                continue
        seen.add(key)
        examples.append((r.where, example))
    return examples


def _is_empty_prompt(example: Any, kind: str) -> bool:
    if kind == "messages":
        return any(not m["content"].strip() for m in example if m["role"] != "assistant")
    if kind in PREFERENCE_KINDS:
        return any(not m["content"].strip() for m in example["prompt"] if m["role"] != "assistant")
    if kind == "completion":
        return not example[0].strip()
    return False


def _word_counts(example: Any, kind: str, train_on_prompt: bool) -> tuple[int, int]:
    """(words, words carrying loss): the fallback length when there is no tokenizer."""
    if kind == "messages":
        total = sum(len(m["content"].split()) for m in example)
        trained = sum(len(m["content"].split()) for m in example if m["role"] == "assistant")
    elif kind == "completion":
        total = len(example[0].split()) + len(example[1].split())
        trained = len(example[1].split())
    else:
        total = trained = len(example.split())
    return total, total if train_on_prompt else trained


def _word_row(where: str, example: Any, kind: str, d: DataConfig) -> dict[str, Any]:
    """What the report counts of one record (as Encoder.__call__ gives it), in words."""
    def words(messages: list[dict]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    if kind in PREFERENCE_KINDS:   # answers only: train_on_prompt does not apply
        answers = ["chosen", "rejected"] if kind == "preference" else ["completion"]
        prompt = words(example["prompt"])
        sides = [(prompt + words(example[a]), words(example[a])) for a in answers]
    else:
        sides = [_word_counts(example, kind, d.train_on_prompt)]
    full = max(total for total, _ in sides)
    row = {"where": where, "full_length": full, "length": min(full, d.max_seq_len),
           "tokens": sum(min(total, d.max_seq_len) for total, _ in sides),
           "trained": sum(trained for _, trained in sides),
           "untrained": int(any(trained == 0 for _, trained in sides)), "answer_cut": 0,
           "error": None}
    if kind == "preference":
        row["chosen_full_length"], row["rejected_full_length"] = (total for total, _ in sides)
    return row


def _build(path: str | os.PathLike, d: DataConfig, tokenizer, on_bad: str,
           fingerprint: str | None = None) -> tuple[datasets.Dataset | None, DataReport]:
    """Read, normalize, curate and tokenize one file (tokenizer None: count words only)."""
    path = str(path)
    # unreadable records reach the tally in file order; columns renamed per data.columns
    records = map_columns(read_records(path, "skip"), d.columns)
    report = DataReport(path=path, records=len(records), max_seq_len=d.max_seq_len,
                        length_unit="tokens" if tokenizer is not None else "words")
    tally = _Tally(path, report, on_bad)
    try:
        fmt, reason = _resolve_format(path, records, d.format)
    except FormatNotDetected:
        unreadable = [r for r in records if r.error]
        if unreadable and on_bad == "error":  # the likelier culprit: say what it is
            tally.bad(unreadable[0].where, unreadable[0].error)
        raise
    report.format, report.format_reason = fmt, reason
    kind = report.kind = FORMATS[fmt].kind
    if d.system_prompt and kind not in CHAT_KINDS:
        report.notes.append(f"data.system_prompt is ignored for the {fmt} format (it has no "
                            "conversation to add it to)")
    if d.train_on_prompt and kind in PREFERENCE_KINDS:
        report.notes.append(f"data.train_on_prompt is ignored for {fmt} data: the preference "
                            "objectives compare the answers, so only answer tokens carry loss")
    if tokenizer is not None and kind in CHAT_KINDS:
        report.chat_template = ensure_chat_template(tokenizer)

    examples = _normalize(records, fmt, d, tally)
    if tokenizer is None:
        report.notes.append("no tokenizer was given, so lengths count whitespace-separated "
                            "words, not tokens (pass --model for token counts)")
        rows = [_word_row(w, ex, kind, d) for w, ex in examples]
        dataset = None
    else:
        dataset = _tokenize(examples, kind, d, tokenizer, path, fingerprint)
        stats = _ROW_STATS + (("chosen_full_length", "rejected_full_length")
                              if kind == "preference" else ())
        rows = [dict(zip(stats, values)) for values in zip(*(dataset[c] for c in stats))]
    keep, lengths, sides = [], [], ([], [])
    for i, (row, (_, example)) in enumerate(zip(rows, examples)):
        if row["error"]:
            tally.bad(row["where"], row["error"])
        elif row["full_length"] < d.min_tokens:
            report.too_short += 1
        elif d.max_tokens is not None and row["full_length"] > d.max_tokens:
            report.too_long += 1
        elif row["untrained"]:
            report.no_trained_tokens += 1
        else:
            keep.append(i)
            lengths.append(row["full_length"])
            report.truncated += row["full_length"] > d.max_seq_len
            report.truncated_answers += bool(row["answer_cut"])
            report.empty_fields += _is_empty_prompt(example, kind)
            report.total_tokens += row["tokens"]
            report.trained_tokens += row["trained"]
            if kind == "preference":
                sides[0].append(row["chosen_full_length"])
                sides[1].append(row["rejected_full_length"])
                report.identical_pairs += example["chosen"] == example["rejected"]
            elif kind == "kto":
                report.desirable += example["desirable"]
                report.undesirable += not example["desirable"]
    report.used = len(keep)
    fill_lengths(report, lengths)
    if kind == "preference":
        fill_side_lengths(report, *sides)
    _preference_notes(report, fmt)
    if dataset is not None:
        dataset = dataset.select(keep).select_columns(dataset_columns(kind))
    return dataset, report


def _preference_notes(report: DataReport, fmt: str) -> None:
    """The warnings preference data can earn: pairs without signal, one-sided kto labels."""
    if report.identical_pairs:
        n = report.identical_pairs
        report.notes.append(f"{n} pair{'s have' if n > 1 else ' has'} the same chosen and "
                            "rejected answer: such pairs carry no preference signal (the pair "
                            "losses give them no gradient); fix or remove them")
    if report.kind == "kto" and report.used and not (report.desirable and report.undesirable):
        label = "true (desirable)" if report.desirable else "false (undesirable)"
        report.notes.append(f"every used {fmt} record is labelled {label}: KTO learns from "
                            "the contrast, so add completions with the other label")


def _tokenize(examples: list[tuple[str, Any]], kind: str, d: DataConfig, tokenizer, path: str,
              fingerprint: str | None) -> datasets.Dataset:
    from datasets import Dataset

    table = Dataset.from_dict({"where": [w for w, _ in examples],
                               "example": [json.dumps(ex, ensure_ascii=False)
                                           for _, ex in examples]})
    encoder = Encoder(tokenizer, kind, d.train_on_prompt, d.max_seq_len, path)
    with progress_bars(len(examples) > PARALLEL_THRESHOLD):
        return table.map(encoder, batched=True, batch_size=500, remove_columns=["example"],
                         features=_features(kind), num_proc=_num_proc(len(examples)),
                         new_fingerprint=fingerprint, desc=f"tokenizing {Path(path).name}")


def _load_or_build(path: str, d: DataConfig, tokenizer, cache_dir: Path,
                   log: Callable[[str], None]) -> tuple[datasets.Dataset, DataReport]:
    from datasets import load_from_disk

    check_path(path)
    key = cache_key(path, tokenizer, d)
    folder = cache_dir / f"tokenized-{key[:32]}"
    if (folder / "report.json").is_file():
        try:
            dataset = load_from_disk(str(folder / "dataset"))
            report = DataReport.from_dict(json.loads((folder / "report.json").read_text("utf-8")))
            if dataset.column_names != dataset_columns(report.kind):
                raise ValueError(f"its columns {dataset.column_names} are not those of "
                                 f"{report.kind or 'unknown'} data")
            report.path, report.cache_hit = path, True
            log(f"data: {path}: cache hit ({folder.name}), not tokenizing again")
            return dataset, report
        except Exception as exc:  # a damaged cache entry is rebuilt, never trusted
            log(f"data: {path}: cache entry {folder.name} is unreadable ({exc}); rebuilding")
    log(f"data: {path}: cache miss, tokenizing")
    dataset, report = _build(path, d, tokenizer, d.on_bad_record, fingerprint=key[:32])
    save_cache(folder, dataset, report, log, show_progress=len(dataset) > PARALLEL_THRESHOLD)
    return dataset, report


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices in file order; the validation set is a seeded sample of
    round(n * val_fraction) records (at least 1 and leaving at least 1 to train on)."""
    if val_fraction <= 0 or n < 2:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    held = set(random.Random(seed).sample(range(n), n_val))
    return [i for i in range(n) if i not in held], sorted(held)


def prepare(cfg: TrainConfig, tokenizer, cache_dir: str | os.PathLike | None = None,
            log: Callable[[str], None] = print) -> PreparedData:
    """Tokenized train (and validation) data for cfg.data, from the cache when it is there.

    Raises DataError for a bad file, a bad record (unless data.on_bad_record=skip), or when no
    record is left to train on. The tokenizer gets DEFAULT_CHAT_TEMPLATE if it has none.
    """
    d = cfg.data
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if ensure_chat_template(tokenizer) == "default":
        log("data: the tokenizer has no chat template; using ftstudio's default "
            "(<|system|>/<|user|>/<|assistant|> markers, assistant turns end with EOS)")
    train, report = _load_or_build(d.train, d, tokenizer, cache, log)
    log(f"data: format {report.format} ({report.format_reason})")
    log(f"data: {d.train}: {summary_line(report)}")
    for message in report.bad_examples[:3]:
        log(f"data: skipped {message}")
    if report.used == 0:
        raise DataError(f"{d.train}: no record is left to train on ({summary_line(report)}); "
                        "see `ftstudio data check " + d.train + "`")
    validation = None
    if d.validation:
        validation, vreport = _load_or_build(d.validation, d, tokenizer, cache, log)
        log(f"data: {d.validation}: {summary_line(vreport)}")
        report.validation = vreport
        validation = validation if len(validation) else None
    elif d.val_fraction > 0:
        train_idx, val_idx = split_indices(len(train), d.val_fraction, cfg.train.seed)
        if val_idx:
            validation = train.select(val_idx)
            train = train.select(train_idx)
        else:
            log("data: too few records to hold any out for validation; evaluation is off")
    report.train_records = len(train)
    report.validation_records = len(validation) if validation is not None else 0
    log(f"data: {report.train_records} train and {report.validation_records} validation "
        f"examples; {report.trained_tokens:,} of {report.total_tokens:,} tokens carry loss")
    return PreparedData(train=train, validation=validation, report=report, format=report.format,
                        kind=report.kind)


def normalized_examples(path: str | os.PathLike, d: DataConfig
                        ) -> tuple[str, str, list[tuple[str, Any]]]:
    """(format, kind, [(where, normalized example)]) of a file's usable records, curated as for
    training (system prompt, dedupe; bad records passed over), in file order."""
    records = map_columns(read_records(path, "skip"), d.columns)
    fmt, _ = _resolve_format(str(path), records, d.format)
    report = DataReport(path=str(path))
    return fmt, FORMATS[fmt].kind, _normalize(records, fmt, d, _Tally(str(path), report, "skip"))


def data_report(path: str | os.PathLike, tokenizer=None, data_cfg: DataConfig | None = None
                ) -> DataReport:
    """The report of one file, for `ftstudio data check` and the studio's dataset tab.

    Bad records never raise here: they are counted and listed (with their lines). Problems with
    the whole file (missing, empty, unreadable) still raise DataError. Without a tokenizer,
    lengths count whitespace-separated words and the report says so.
    """
    d = dataclasses.replace(data_cfg or DataConfig(), train=str(path))
    try:
        _, report = _build(path, d, tokenizer, on_bad="skip")
    except FormatNotDetected as exc:
        records = map_columns(read_records(path, "skip"), d.columns)
        report = DataReport(path=str(path), format="unknown", format_reason=str(exc),
                            records=len(records), skipped_bad=len(records),
                            bad_examples=[str(exc)], max_seq_len=d.max_seq_len,
                            length_unit="tokens" if tokenizer is not None else "words")
        return report
    train_idx, val_idx = split_indices(report.used, 0 if d.validation else d.val_fraction, 0)
    report.train_records, report.validation_records = len(train_idx), len(val_idx)
    return report


def check_file(path: str | os.PathLike, columns: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Check a file as an upload is checked, before it is kept: it must read (see read_records:
    encoding, binary, size of lines, nesting), have a detectable format (its columns renamed
    by `columns`, data.columns) and at least one usable record. Returns {records, usable,
    format}; raises DataError saying what is wrong (FormatNotDetected, with the file's
    columns in `.columns`, when no format fits them)."""
    records = map_columns(read_records(path, "skip"), columns)
    if all(r.error for r in records):
        first = records[0]
        raise DataError(f"{path}: none of its {len(records)} records can be read; the first, "
                        f"{first.where}: {first.error}")
    try:
        fmt, _ = _resolve_format(str(path), records, "auto")
    except FormatNotDetected as exc:
        exc.columns = record_columns(records)
        raise
    report = DataReport(path=str(path))
    usable = _normalize(records, fmt, DataConfig(train=str(path)),
                        _Tally(str(path), report, "skip"))
    if not usable:
        raise DataError(f"{path}: no record is a usable {fmt} record; the first problem: "
                        f"{report.bad_examples[0] if report.bad_examples else 'none found'}")
    return {"records": len(records), "usable": len(usable), "format": fmt}


def preview(records_path: str | os.PathLike, tokenizer, data_cfg: DataConfig | None = None,
            n: int = 3) -> list[Any]:
    """The first n usable records as (token text, carries loss) pieces, truncated like training.

    Bad records are passed over; the rendering is exactly what prepare() trains on. A record is
    a list of pieces, except for preference data, where it is a dict of both sides:
        {"chosen": [(text, carries loss), ...], "rejected": [(text, carries loss), ...]}
    (kto records are a list of pieces, prompt + completion, like the other formats.)
    """
    d = data_cfg or DataConfig()
    records = map_columns(read_records(records_path, "skip"), d.columns)
    fmt, _ = _resolve_format(str(records_path), records, d.format)
    kind = FORMATS[fmt].kind
    if kind in CHAT_KINDS:
        ensure_chat_template(tokenizer)
    encoder = Encoder(tokenizer, kind, d.train_on_prompt, d.max_seq_len, str(records_path))
    report = DataReport(path=str(records_path))

    def marked(enc) -> list[tuple[str, bool]]:
        pairs = list(zip(enc.pieces or [], (x != IGNORE_INDEX for x in enc.labels)))
        return pairs[:d.max_seq_len]

    shown: list[Any] = []
    for where, example in _normalize(records, fmt, d, _Tally(str(records_path), report, "skip")):
        if len(shown) >= n:
            break
        try:
            if kind == "preference":
                chosen, rejected = encoder.encode_pair(example, where, with_pieces=True)
                shown.append({"chosen": marked(chosen), "rejected": marked(rejected)})
            else:
                shown.append(marked(encoder.encode(example, where, with_pieces=True)))
        except RecordError:
            continue
    return shown

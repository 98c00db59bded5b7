"""The dataset report: what became of every record of a data file, and its text forms.

Use from Python:
    from engine.data import data_report
    from engine.data import DataReport, format_report
    report = data_report("static/examples/chat.jsonl", tokenizer)   # a DataReport
    print(format_report(report))            # for people (`ftstudio data check`)
    report.to_dict()                        # for JSON (`--json`, the studio, run.json, the cache)

engine.data fills a DataReport while it reads, normalizes and tokenizes a file (fill_lengths sets
the length statistics from the used records); this module only holds it and writes it out:
format_report for people, summary_line for a log line, to_dict/from_dict for JSON. `ftstudio data
check`, the studio's dataset panel and a run's run.json all show the same report.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataReport:
    """Everything `ftstudio data check` and the studio show about one data file.

    Every record read ends in exactly one place:
        records == used + skipped_bad + dropped_duplicates + too_short + too_long
                   + no_trained_tokens
    Lengths (length_*, histogram) are of the used records before truncation, in `length_unit`
    (tokens, or whitespace-separated words when no tokenizer was given); total_tokens and
    trained_tokens (those carrying loss) are after truncation.

    Preference data (kind "preference"): a record is a pair; its length is its longer side,
    total_tokens and trained_tokens count both sides, and chosen_length_* / rejected_length_*
    are each side's (prompt + answer, before truncation). A pair is dropped as without trained
    tokens when either side has none left. kto data counts desirable / undesirable records.
    """

    path: str
    format: str = ""
    kind: str = ""                   # the kind: messages, completion, text, preference, kto
    format_reason: str = ""
    records: int = 0                 # read from the file, bad ones included
    used: int = 0                    # tokenized examples kept (train + validation split)
    skipped_bad: int = 0             # malformed records left out (on_bad_record=skip)
    bad_examples: list[str] = field(default_factory=list)  # the first engine.data.MAX_BAD_EXAMPLES
    duplicates: int = 0              # records equal to an earlier one (found)
    dropped_duplicates: int = 0      # ... of which dropped (data.dedupe)
    too_short: int = 0               # dropped: fewer than data.min_tokens
    too_long: int = 0                # dropped: more than data.max_tokens
    no_trained_tokens: int = 0       # dropped: no response token left after truncation
    truncated: int = 0               # used records cut to max_seq_len
    truncated_answers: int = 0       # ... of which lost trained (answer) tokens, on either side
    empty_fields: int = 0            # used records with an empty prompt-side field (kept)
    length_unit: str = "tokens"
    length_min: int = 0
    length_median: float = 0
    length_p95: int = 0
    length_p99: int = 0              # 0 in reports written before it was recorded
    length_max: int = 0
    length_mean: float = 0.0
    histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end excl., n)
    trained_tokens: int = 0
    total_tokens: int = 0
    train_records: int = 0
    validation_records: int = 0
    cache_hit: bool = False
    max_seq_len: int = 0
    chat_template: str | None = None  # "tokenizer", "default", or None when not used
    notes: list[str] = field(default_factory=list)
    # preference pairs (kind "preference"); 0 for other kinds and in older reports
    identical_pairs: int = 0         # used pairs whose chosen == rejected (kept: no signal)
    empty_sides: int = 0             # bad records (in skipped_bad) with an empty answer
    chosen_length_median: float = 0
    chosen_length_p95: int = 0
    chosen_length_max: int = 0
    rejected_length_median: float = 0
    rejected_length_p95: int = 0
    rejected_length_max: int = 0
    # kto (kind "kto")
    desirable: int = 0               # used records labelled true
    undesirable: int = 0             # used records labelled false
    validation: DataReport | None = None  # the report of a separate data.validation file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        data = dict(data)
        data["histogram"] = [tuple(b) for b in data.get("histogram", [])]
        if data.get("validation"):
            data["validation"] = cls.from_dict(data["validation"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def fill_lengths(report: DataReport, lengths: list[int]) -> None:
    """Set the length statistics and histogram from the used records' lengths."""
    if not lengths:
        return
    ordered = sorted(lengths)
    report.length_min, report.length_max = ordered[0], ordered[-1]
    report.length_median = statistics.median(ordered)
    report.length_p95 = percentile(ordered, 0.95)
    report.length_p99 = percentile(ordered, 0.99)
    report.length_mean = round(sum(ordered) / len(ordered), 2)
    report.histogram = histogram(ordered)


def fill_side_lengths(report: DataReport, chosen: list[int], rejected: list[int]) -> None:
    """Set a preference report's chosen_length_* and rejected_length_* from the used pairs'."""
    for side, lengths in (("chosen", chosen), ("rejected", rejected)):
        if lengths:
            ordered = sorted(lengths)
            setattr(report, f"{side}_length_median", statistics.median(ordered))
            setattr(report, f"{side}_length_p95", percentile(ordered, 0.95))
            setattr(report, f"{side}_length_max", ordered[-1])


def percentile(ordered: list[int], share: float) -> int:
    """The nearest-rank percentile of sorted lengths: the smallest length at least `share` of
    them are not longer than."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def histogram(lengths: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(start, end exclusive, count) bins of equal integer width covering the lengths."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    start = lo - lo % width
    counts = [0] * ((hi - start) // width + 1)
    for n in lengths:
        counts[(n - start) // width] += 1
    return [(start + k * width, start + (k + 1) * width, c) for k, c in enumerate(counts)]


def format_report(report: DataReport) -> str:
    """The report for people: counts, where records went, lengths with a text histogram."""
    r, unit = report, report.length_unit
    reason = r.format_reason if r.format_reason.startswith(f"{r.format}:") else \
        f"{r.format} ({r.format_reason})"
    lines = [f"Dataset:  {r.path}", f"Format:   {reason}"]
    if r.chat_template:
        lines.append("Template: " + ("the tokenizer's chat template" if r.chat_template ==
                                     "tokenizer" else "ftstudio's default chat template"))
    split = f" ({r.train_records} train, {r.validation_records} validation)" \
        if r.train_records or r.validation_records else ""
    lines.append(f"Records:  {r.records} read, {r.used} used{split}")
    lines.append(f"Left out: {r.skipped_bad} bad, {r.dropped_duplicates} duplicates, "
                 f"{r.too_short} too short, {r.too_long} too long, {r.no_trained_tokens} "
                 "without a trained token after truncation")
    if r.duplicates and not r.dropped_duplicates:
        lines.append(f"Duplicates: {r.duplicates} found and kept (data.dedupe drops them)")
    lines.append(f"Truncated: {r.truncated} record(s) longer than {r.max_seq_len} {unit}")
    if why_none_used(r):
        lines.append(f"Unusable: {why_none_used(r)}")
    if r.truncated_answers:
        side = " on the chosen or rejected side" if r.kind == "preference" else ""
        lines.append(f"Answers cut: {r.truncated_answers} record(s) lost trained {unit} to "
                     f"truncation{side} (a larger data.max_seq_len keeps them)")
    if r.kind == "preference":
        lines.append(f"Identical pairs: {r.identical_pairs} (chosen == rejected: kept, but they "
                     "carry no preference signal)")
        lines.append(f"Empty answers: {r.empty_sides} bad record(s) with an empty chosen or "
                     "rejected answer")
        if r.used:
            lines.append(f"Pair sides ({unit}, prompt + answer, before truncation): chosen "
                         f"median {r.chosen_length_median:g}, p95 {r.chosen_length_p95}, max "
                         f"{r.chosen_length_max}; rejected median {r.rejected_length_median:g}, "
                         f"p95 {r.rejected_length_p95}, max {r.rejected_length_max}")
    if r.kind == "kto":
        lines.append(f"Labels:   {r.desirable} desirable, {r.undesirable} undesirable")
        if r.empty_sides:
            lines.append(f"Empty completions: {r.empty_sides} bad record(s)")
    if r.empty_fields:
        lines.append(f"Empty prompt fields: {r.empty_fields} record(s) (kept)")
    lines.append(f"{unit.capitalize()}: {r.total_tokens:,} total, {r.trained_tokens:,} trained "
                 "(carrying loss)")
    if r.used:
        p99 = f", p99 {r.length_p99}" if r.length_p99 else ""   # older reports lack it
        longer = ", the longer side of each pair" if r.kind == "preference" else ""
        lines.append(f"Length ({unit}, before truncation{longer}): min {r.length_min}, median "
                     f"{r.length_median:g}, p95 {r.length_p95}{p99}, max {r.length_max}, mean "
                     f"{r.length_mean:g}")
        most = max(c for _, _, c in r.histogram) or 1
        label_w = max(len(f"{a}-{b - 1}") for a, b, _ in r.histogram)
        for a, b, c in r.histogram:
            bar = "#" * math.ceil(40 * c / most) if c else ""
            lines.append(f"  {f'{a}-{b - 1}':>{label_w}} | {bar} {c}")
    if r.bad_examples:
        lines.append(f"Problems ({len(r.bad_examples)} shown of {r.skipped_bad}):")
        lines += [f"  - {msg}" for msg in r.bad_examples]
    lines += [f"Note: {n}" for n in r.notes]
    if r.cache_hit:
        lines.append("Tokenized data loaded from the cache.")
    if r.validation is not None:
        lines.append("")
        lines.append("Validation file:")
        lines += ["  " + line for line in format_report(r.validation).splitlines()]
    return "\n".join(lines)


def why_none_used(report: DataReport | dict[str, Any]) -> str | None:
    """Why a report with no usable record has none, with the fix: every record left out and
    where each went (`ftstudio data check` and the studio say the same). None when some are
    used."""
    r = report.to_dict() if isinstance(report, DataReport) else report
    if r.get("used"):
        return None
    read, unit = r.get("records", 0), r.get("length_unit", "tokens")
    if not read:
        return "the file holds no records"
    reasons = []
    if r.get("no_trained_tokens"):
        reasons.append(f"{r['no_trained_tokens']} lost every trained {unit[:-1]} to truncation "
                       f"at data.max_seq_len {r.get('max_seq_len')}: the prompt fills the whole "
                       "length, so no answer is left to learn from; raise data.max_seq_len or "
                       "shorten the prompts")
    if r.get("skipped_bad"):
        reasons.append(f"{r['skipped_bad']} could not be used (malformed: see the problems "
                       "listed)")
    if r.get("too_short"):
        reasons.append(f"{r['too_short']} are shorter than data.min_tokens; lower it")
    if r.get("too_long"):
        reasons.append(f"{r['too_long']} are longer than data.max_tokens; raise it or leave it "
                       "empty to truncate instead")
    if r.get("dropped_duplicates"):
        reasons.append(f"{r['dropped_duplicates']} are duplicates dropped by data.dedupe")
    every = "every one" if read > 1 else "the only one"
    return (f"none of the {read} record(s) is usable ({every} was left out): "
            + "; ".join(reasons or ["no record has an answer to train on"]))


def summary_line(report: DataReport) -> str:
    """The report in one line, for a log: where the records went and how many were cut."""
    return (f"{report.records} read, {report.used} used; left out: {report.skipped_bad} bad, "
            f"{report.dropped_duplicates} duplicates, {report.too_short} too short, "
            f"{report.too_long} too long, {report.no_trained_tokens} without trained tokens; "
            f"{report.truncated} truncated to {report.max_seq_len} tokens")

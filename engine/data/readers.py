"""Reading data files into raw records, defensively: each problem names the file and line.

Use from Python:
    from engine.data import read_records
    records = read_records("static/examples/chat.jsonl")   # [RawRecord(index, line, data, ...)]

.json (an array of records), .jsonl (one record per line), .csv and .parquet. Where a record
came from reads as an editor shows it ("line 17", "record 3 (line 12)", "row 4 (line 5)",
"row 4"; all 1-based). A file that is not a dataset at all (binary, mis-encoded, empty, a line
over MAX_LINE_CHARS, nesting deeper than MAX_DEPTH) is a DataError for the whole file; a
malformed record is a DataError naming its place, or with on_bad_record="skip" a RawRecord with
its error, counted later by engine.data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.config import DATA_SUFFIXES

#: longest line (jsonl, csv) or single record (json) read, in characters: a larger one is
#: refused as a whole-file problem (a broken export or not a dataset at all)
MAX_LINE_CHARS = 10_000_000
#: deepest nesting of lists and objects accepted in a record (real records nest a few levels)
MAX_DEPTH = 64


class DataError(ValueError):
    """A data file or record cannot be used; the message names the file, line/record, field and
    the fix."""




@dataclass(frozen=True)
class RawRecord:
    """One record as read, with where it came from (1-based, as an editor shows it)."""

    index: int              # position in the file: record / row number
    line: int | None        # line where the record starts (None for parquet)
    data: Any               # the parsed record; None when it could not be read
    error: str | None = None  # why it could not be read (only with on_bad_record=skip)
    kind: str = "line"      # "line" (jsonl), "record" (json array), "row" (csv, parquet)

    @property
    def where(self) -> str:
        if self.kind == "line":
            return f"line {self.line}"
        if self.line is None:
            return f"{self.kind} {self.index}"
        return f"{self.kind} {self.index} (line {self.line})"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_records(path: str | os.PathLike, on_bad_record: str = "error") -> list[RawRecord]:
    """The raw records of a .json/.jsonl/.csv/.parquet file, each with its line or row.

    A record that cannot even be parsed (an invalid JSON line, a CSV row with too many values)
    raises DataError, or with on_bad_record="skip" comes back with `error` set and data None.
    Problems with the whole file (missing, empty, not an array, broken JSON) always raise.
    """
    p = check_path(path)
    records = READERS[p.suffix.lower()](p)
    if not records:
        raise DataError(f"{p} has no records; it needs at least one")
    if on_bad_record == "error":
        for r in records:
            if r.error:
                raise DataError(f"{p} {r.where}: {r.error}{SKIP_HINT}")
    return records


def map_columns(records: list[RawRecord], columns: dict[str, str] | None
                ) -> list[RawRecord]:
    """The records with their columns renamed to the fields a format reads (data.columns:
    {field: column}); a record without a mapped column keeps what it has, so the format names
    the field it misses."""
    if not columns:
        return records
    out = []
    for r in records:
        if isinstance(r.data, dict):
            data = {k: v for k, v in r.data.items() if k not in columns.values()}
            data.update({f: r.data[c] for f, c in columns.items() if c in r.data})
            r = RawRecord(r.index, r.line, data, r.error, r.kind)
        out.append(r)
    return out


def record_columns(records: list[RawRecord]) -> list[str]:
    """The column names the records use, in first-seen order (what a mapping can pick)."""
    seen: dict[str, None] = {}
    for r in records:
        if isinstance(r.data, dict):
            seen.update(dict.fromkeys(str(k) for k in r.data))
    return list(seen)


def check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{p}: unsupported file type {suffix or '(none)'}; use "
                        f"{', '.join(DATA_SUFFIXES)}")
    if not p.is_file():
        raise DataError(f"{p} does not exist; check the path (relative paths are from "
                        f"{os.getcwd()})")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty; it needs at least one record")
    return p


SKIP_HINT = " [or set data.on_bad_record=skip to leave such records out]"


_UTF16_32 = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
             (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _read_text(p: Path) -> str:
    """The file as UTF-8 text; binary files, UTF-16/32, other encodings and over-long lines
    raise DataError saying what the file looks like and how to save it."""
    raw = p.read_bytes()
    for bom, name in _UTF16_32:
        if raw.startswith(bom):
            raise DataError(f"{p} is {name} text; save the file as UTF-8 (in most editors: "
                            "Save As, encoding UTF-8)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        head = raw[:4096]
        if head.count(b"\x00") * 3 >= len(head):  # every other byte NUL: text in UTF-16
            raise DataError(f"{p} looks like UTF-16 text without a byte-order mark; save the "
                            "file as UTF-8")
        line = raw[:nul].count(b"\n") + 1
        raise DataError(f"{p} line {line}: contains a NUL byte, so it is a binary file, not "
                        f"{p.suffix} text; upload the dataset itself ({', '.join(DATA_SUFFIXES)})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{p} line {line}: is not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start}; Latin-1 or Windows-1252 perhaps); save the file as "
                        "UTF-8") from None
    return text.removeprefix("\ufeff")


def _check_line_lengths(p: Path, text: str) -> None:
    if len(text) <= MAX_LINE_CHARS:
        return
    for n, line in enumerate(text.split("\n"), start=1):
        if len(line) > MAX_LINE_CHARS:
            raise DataError(f"{p} line {n}: is {len(line):,} characters long, over the limit of "
                            f"{MAX_LINE_CHARS:,}; this is not one record per line (split the "
                            "file, or check that it is the dataset)")


def _too_deep(value: Any) -> bool:
    """True when lists/objects nest deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_DEEP = f"nests lists/objects more than {MAX_DEPTH} levels deep; records are flat objects"


def _read_jsonl(p: Path) -> list[RawRecord]:
    records = []
    text = _read_text(p)
    _check_line_lengths(p, text)
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            records.append(RawRecord(len(records) + 1, n, None, _DEEP) if _too_deep(value)
                           else RawRecord(len(records) + 1, n, value))
        except RecursionError:
            records.append(RawRecord(len(records) + 1, n, None, _DEEP))
        except json.JSONDecodeError as exc:
            records.append(RawRecord(len(records) + 1, n, None,
                                     f"is not valid JSON ({exc.msg} at column {exc.colno}); "
                                     "each line must be one JSON object"))
    return records


_WS = re.compile(r"\s*")


def _read_json(p: Path) -> list[RawRecord]:
    """An array of records, decoded element by element so each keeps its line number."""
    text = _read_text(p)
    pos = _WS.match(text, 0).end()
    if pos == len(text):
        raise DataError(f"{p} is empty; it needs an array of records")

    def broken(exc: json.JSONDecodeError) -> DataError:
        return DataError(f"{p} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); "
                         "fix the file there (or use .jsonl, where one bad line can be skipped "
                         "with data.on_bad_record=skip)")

    def deep(at: int) -> DataError:
        return DataError(f"{p} line {text.count(chr(10), 0, at) + 1}: {_DEEP}")

    if text[pos] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise broken(exc) from None
        except RecursionError:
            raise deep(pos) from None
        what = "an object" if isinstance(value, dict) else f"a {type(value).__name__} value"
        hint = ""
        if isinstance(value, dict):
            lists = [k for k, v in value.items() if isinstance(v, list)]
            hint = (f" with keys {', '.join(list(value)[:8])}" +
                    (f"; the records may be the list under '{lists[0]}': save that list itself"
                     if lists else ""))
        raise DataError(f"{p}: a .json file must hold an array of records [{{...}}, ...], but it "
                        f"holds {what}{hint}; or write one record per line in a .jsonl file")
    decoder = json.JSONDecoder()
    records: list[RawRecord] = []
    line, counted = 1, 0
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return records
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise broken(exc) from None
        except RecursionError:
            raise deep(pos) from None
        if _too_deep(value):
            raise deep(pos)
        if end - pos > MAX_LINE_CHARS:
            raise DataError(f"{p} record {len(records) + 1} (line {line}): is {end - pos:,} "
                            f"characters long, over the limit of {MAX_LINE_CHARS:,}; check that "
                            "this is the dataset")
        records.append(RawRecord(len(records) + 1, line, value, kind="record"))
        pos = _WS.match(text, end).end()
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            break
        else:
            raise broken(json.JSONDecodeError("Expecting ',' or ']' after a record", text, pos))
    rest = _WS.match(text, pos + 1).end()
    if rest < len(text):
        raise broken(json.JSONDecodeError("Extra data after the array", text, rest))
    return records


def _read_csv(p: Path) -> list[RawRecord]:
    """A header row of field names, then one record per row (cells are text)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = _read_text(p)
    _check_line_lengths(p, text)
    reader = csv.reader(text.splitlines(keepends=True))
    records: list[RawRecord] = []
    header: list[str] | None = None
    last = 0
    try:
        for row in reader:
            start, last = last + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) > len(header):
                records.append(RawRecord(len(records) + 1, start, None,
                                         f"has {len(row)} values but the header has "
                                         f"{len(header)} columns ({', '.join(header)}); quote "
                                         "values that contain commas", kind="row"))
                continue
            records.append(RawRecord(len(records) + 1, start, dict(zip(header, row)),
                                     kind="row"))
    except csv.Error as exc:
        raise DataError(f"{p} line {reader.line_num}: unreadable CSV ({exc}); fix the quoting "
                        "there") from None
    return records


def _read_parquet(p: Path) -> list[RawRecord]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p} is not a readable parquet file ({exc}); re-export it") from None
    return [RawRecord(i, None, row, kind="row") for i, row in enumerate(rows, start=1)]


#: one reader per file type, each returning RawRecords
READERS: dict[str, Callable[[Path], list[RawRecord]]] = {
    ".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}

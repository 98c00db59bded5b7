"""Uploads (jobs.datasets.store_upload, behind the studio's upload handler): every malformed
file gets a clear DataError and changes nothing (no row in studio.db, no file under
FTSTUDIO_HOME/datasets); good files are kept once by content and recorded per owner."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.data import MAX_LINE_CHARS, DataError
from jobs import datasets, store

ROW = {"instruction": "Reverse: a b", "output": "b a"}
GOOD = json.dumps(ROW)
BIG = MAX_LINE_CHARS + 10
DEEP = 100_000


def _deep_jsonl(depth: int) -> bytes:
    return ('{"instruction": "x", "output": ' + "[" * depth + "]" * depth + "}\n").encode()


# (file name, content, what the message must say)
CASES = [
    ("empty.jsonl", b"", "is empty"),
    ("empty.json", b"", "is empty"),
    ("empty.csv", b"", "is empty"),
    ("blank.jsonl", b"\n  \n\t\n", "has no records"),
    ("blank.json", b"  \n ", "is empty; it needs an array"),
    ("nothing.json", b"[]", "has no records"),
    ("object.json", b'{"data": [1]}', "must hold an array.*list under 'data'"),
    ("number.json", b"5", "must hold an array of records.*int value"),
    ("cut.json", b'[{"instruction": "x", ', "line 1 column .*invalid JSON"),
    ("extra.json", f"[{GOOD}] trailing".encode(), "Extra data after the array"),
    ("comma.json", f"[{GOOD} {GOOD}]".encode(), "Expecting ',' or ']'"),
    ("garbage.jsonl", b"not json\n{also not\n", "none of its 2 records can be read.*line 1"),
    ("arrays.jsonl", b"[1, 2]\n[3]\n", "no record is a JSON object"),
    ("strings.json", b'["a", "b"]', "no record is a JSON object"),
    ("unknown.jsonl", b'{"foo": 1, "bar": 2}\n', "cannot tell the format: records have fields "
                                                  "bar, foo"),
    ("half.jsonl", b'{"instruction": "x"}\n{"instruction": "y"}\n',
     "no record is a usable alpaca record.*output"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL byte, so it is a binary file"),
    ("archive.csv", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 4 + b"x" * 4000,
     "NUL byte"),
    ("nul.json", b'[{"instruction": "a\x00", "output": "b"}]' + b" " * 200,
     "line 1: contains a NUL byte"),
    ("utf16le-bom.jsonl", (GOOD + "\n").encode("utf-16"), "is UTF-16 text; save the file as "
                                                          "UTF-8"),
    ("utf16be-bom.json", b"\xfe\xff" + f"[{GOOD}]".encode("utf-16-be"), "is UTF-16 text"),
    ("utf16le.jsonl", (GOOD + "\n").encode("utf-16-le"), "UTF-16 text without a byte-order "
                                                         "mark"),
    ("utf16be.csv", "instruction,output\nx,y\n".encode("utf-16-be"), "UTF-16 text without"),
    ("utf32.jsonl", (GOOD + "\n").encode("utf-32"), "is UTF-32 text"),
    ("latin1.jsonl", json.dumps({"instruction": "café", "output": "é"},
                                ensure_ascii=False).encode("latin-1"),
     "line 1: is not UTF-8 text.*Latin-1"),
    ("latin1.csv", "instruction,output\nx,y\ncafé,crème\n".encode("latin-1"),
     "line 3: is not UTF-8 text"),
    ("cp1252.json", "[{\"instruction\": \u201cquoted\u201d}]".encode("cp1252"), "not UTF-8"),
    ("hugeline.jsonl", b'{"instruction": "' + b"a" * BIG + b'", "output": "b"}\n',
     "line 1: is 10,000,0.. characters long, over the limit"),
    ("hugeline.csv", b"instruction,output\n" + b"a" * BIG + b",b\n",
     "line 2: is .* characters long"),
    ("hugerecord.json", b'[{"instruction": "' + b"a" * BIG + b'", "output": "b"}]',
     "record 1 \\(line 1\\): is .* characters long, over the limit"),
    ("deep.json", b"[" * DEEP + b"]" * DEEP, "nests lists/objects more than 64 levels"),
    ("deep-object.json", b'{"a": ' * DEEP + b"1" + b"}" * DEEP, "nests lists/objects"),
    ("deep.jsonl", _deep_jsonl(DEEP), "none of its 1 records can be read.*nests"),
    ("deep100.jsonl", _deep_jsonl(100), "none of its 1 records can be read.*nests"),
    ("deep100.json", f'[{{"instruction": "x", "output": {"[" * 100}{"]" * 100}}}]'.encode(),
     "line 1: nests lists/objects"),
    ("notes.txt", GOOD.encode(), "unsupported file type .txt"),
    ("config.yaml", b"a: 1\n", "unsupported file type .yaml"),
    ("noext", GOOD.encode(), r"unsupported file type \(none\)"),
    ("broken.parquet", b"PAR1 this is not parquet PAR1", "not a readable parquet file"),
    ("header.csv", b"instruction,output\n", "has no records"),
    ("ragged.csv", b"instruction,output\na,b,c\nd,e,f\n", "none of its 2 records.*3 values"),
    ("columns.csv", b"foo,bar\n1,2\n", "cannot tell the format"),
    ("quotes.csv", b'instruction,output\n"a,b\n',
     "row 1 \\(line 2\\): field 'output' is missing"),
]


@pytest.fixture()
def studio(home):
    with store.connect() as db:  # the database exists before: unchanged means unchanged
        pass
    return home


def _state(home):
    with store.connect() as db:
        dump = list(db.conn.iterdump())
    files = sorted(p.relative_to(home) for p in (home / "datasets").rglob("*")) \
        if (home / "datasets").exists() else []
    return dump, files


@pytest.mark.parametrize("name,content,message", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_upload_is_refused_with_its_reason_and_leaves_nothing(
        studio, tmp_path, name, content, message):
    src = tmp_path / "upload" / name
    src.parent.mkdir()
    src.write_bytes(content)
    before = _state(studio)
    with pytest.raises(DataError, match=message) as err:
        datasets.store_upload(str(src), owner="ana")
    assert str(src.parent) not in str(err.value)  # named as uploaded, not by its temp path
    assert _state(studio) == before


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(studio, tmp_path,
                                                                    monkeypatch, examples):
    monkeypatch.setenv("FTSTUDIO_MAX_UPLOAD_MB", "0.001")
    src = tmp_path / "alpaca.json"
    shutil.copy(examples / "alpaca.json", src)
    before = _state(studio)
    with pytest.raises(DataError, match=r"alpaca.json is .* MB, over the upload limit of 0 MB "
                                        r"\(FTSTUDIO_MAX_UPLOAD_MB\)"):
        datasets.store_upload(str(src), owner="ana")
    assert _state(studio) == before
    assert datasets.max_upload_bytes() == 1048
    monkeypatch.delenv("FTSTUDIO_MAX_UPLOAD_MB")
    assert datasets.max_upload_bytes() == 200 * 2**20


def test_good_uploads_are_kept_once_and_recorded_per_owner(studio, tmp_path, examples):
    src = tmp_path / "my data (v2)!.jsonl"
    shutil.copy(examples / "chat.jsonl", src)
    stored = datasets.store_upload(str(src), owner="ana")
    assert stored.endswith("/my_data_v2.jsonl") and stored.startswith(str(studio.resolve()))
    assert datasets.store_upload(str(src), owner="ana") == stored
    assert datasets.store_upload(str(src), owner="bob") == stored
    rows = datasets.list_datasets()
    assert sorted(r["owner"] for r in rows) == ["ana", "bob"]
    assert {r["path"] for r in rows} == {stored} and rows[0]["records"] > 0
    assert [r["owner"] for r in datasets.list_datasets({"username": "bob",
                                                        "is_admin": False})] == ["bob"]
    assert not list((studio / "datasets").rglob("*.part"))

"""Reading Dolma-style documents: formats, bad records by reason, truncation, chunking, input discovery."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from olmo2.data.documents import (
    Chunk,
    ChunkReader,
    Document,
    FileError,
    Skip,
    detect_format,
    find_inputs,
    plan_chunks,
    read_documents,
)

RECORDS = [{"id": f"d{i}", "text": f"  document {i}: héllo 🙂\n"} for i in range(5)]


def jsonl(records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def docs(items):
    return [(d.id, d.text, d.line) for d in items if isinstance(d, Document)]


EXPECTED = [(f"d{i}", f"document {i}: héllo 🙂", i + 1) for i in range(5)]


def test_plain_and_gzip_read_the_same(tmp_path):
    data = jsonl(RECORDS)
    paths = [
        write(tmp_path / "a.jsonl", data),
        write(tmp_path / "b.jsonl.gz", gzip.compress(data)),
        write(tmp_path / "misnamed.jsonl", gzip.compress(data)),  # magic bytes win over the suffix
    ]
    assert [detect_format(p) for p in paths] == ["jsonl", "gzip", "gzip"]
    for p in paths:
        assert docs(read_documents(p)) == EXPECTED, p


def test_zstd_multi_frame(tmp_path):
    zstd = pytest.importorskip("zstandard")
    data = jsonl(RECORDS)
    frames = zstd.ZstdCompressor().compress(data[:100]) + zstd.ZstdCompressor().compress(data[100:])
    path = write(tmp_path / "c.jsonl.zst", frames)
    assert detect_format(path) == "zstd"
    assert docs(read_documents(path)) == EXPECTED


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {"id": [r["id"] for r in RECORDS] + ["x"], "text": [r["text"] for r in RECORDS] + [None]}
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)
    items = list(read_documents(tmp_path / "a.parquet"))
    assert docs(items) == EXPECTED
    assert [(s.reason, s.line) for s in items if isinstance(s, Skip)] == [("missing_text", 6)]
    chunks = plan_chunks(str(tmp_path / "a.parquet"), chunk_bytes=1)  # one row group per chunk
    assert [(c.start, c.stop) for c in chunks] == [(0, 1), (1, 2), (2, 3)]
    assert sum(len(docs(ChunkReader(c))) for c in chunks) == 5
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "no_text.parquet")
    (err,) = list(read_documents(tmp_path / "no_text.parquet"))
    assert isinstance(err, FileError) and err.reason == "unreadable" and "no 'text' column" in err.detail


def test_bad_records_are_skipped_by_reason(tmp_path):
    lines = [
        b'{"text": "ok one"}',
        b"not json",
        b"",
        b"[1, 2]",
        b'{"id": 7}',
        b'{"text": null}',
        b'{"text": " \\n\\t "}',
        b'{"text": "bad \xff byte"}',
        b'{"text": "lone \\ud800 surrogate"}',
        b'{"id": 12, "text": "ok two"}',
    ]
    items = list(read_documents(write(tmp_path / "bad.jsonl", b"\n".join(lines) + b"\n")))
    assert docs(items) == [("", "ok one", 1), ("12", "ok two", 10)]
    skips = [(s.reason, s.line) for s in items if isinstance(s, Skip)]
    assert skips == [
        ("malformed_json", 2),
        ("malformed_json", 4),
        ("missing_text", 5),
        ("missing_text", 6),
        ("empty_text", 7),
        ("invalid_utf8", 8),
        ("invalid_utf8", 9),
    ]  # the blank line 3 is not a record


def test_truncated_gzip_keeps_earlier_documents(tmp_path):
    records = [{"text": f"record {i} " + "x" * 200} for i in range(3000)]
    blob = gzip.compress(jsonl(records))
    items = list(read_documents(write(tmp_path / "t.jsonl.gz", blob[: len(blob) // 2])))
    assert isinstance(items[-1], FileError) and items[-1].reason == "truncated"
    kept = docs(items)
    assert 0 < len(kept) < 3000 and kept[-1][2] == items[-1].line  # everything up to the damage
    assert all(text == records[i]["text"].strip() for i, (_, text, _) in enumerate(kept))


def test_truncated_zstd_is_reported(tmp_path):
    zstd = pytest.importorskip("zstandard")
    blob = zstd.ZstdCompressor().compress(jsonl([{"text": f"r{i} " * 50} for i in range(2000)]))
    items = list(read_documents(write(tmp_path / "t.jsonl.zst", blob[:-5])))
    assert isinstance(items[-1], FileError) and items[-1].reason == "truncated"


def test_unreadable_file(tmp_path):
    (err,) = list(ChunkReader(Chunk(str(tmp_path / "missing.jsonl"), "jsonl")))
    assert isinstance(err, FileError) and err.reason == "unreadable" and err.line == 0


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1000])
def test_byte_range_chunks_cover_every_line_once(tmp_path, chunk_bytes):
    records = [{"id": str(i), "text": "w" * (i % 13 + 1)} for i in range(40)]
    path = write(tmp_path / "a.jsonl", jsonl(records) + b"\n")  # and a trailing blank line
    chunks = plan_chunks(str(path), chunk_bytes=chunk_bytes)
    assert len(chunks) == -(-os.path.getsize(path) // chunk_bytes)
    seen, base = [], 0
    for c in chunks:
        reader = ChunkReader(c)
        seen += [(d.id, d.line + base) for d in reader if isinstance(d, Document)]
        base += reader.lines
    assert seen == [(str(i), i + 1) for i in range(40)]
    assert base == 41


def test_find_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in [
        "d/b.jsonl",
        "d/sub/a.json.gz",
        "d/x.parquet",
        "d/notes.txt",
        "d/.hidden.jsonl",
        "d/m.csv.gz",
        "c.jsonl",
    ]:
        (tmp_path / name).write_bytes(b"")
    found = find_inputs([tmp_path / "d", str(tmp_path / "*.jsonl"), tmp_path / "d" / "b.jsonl"])
    rel = [os.path.relpath(p, tmp_path) for p in found]
    assert rel == ["c.jsonl", "d/b.jsonl", "d/sub/a.json.gz", "d/x.parquet"]  # sorted, de-duplicated
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs([tmp_path / "nope.jsonl"])
    with pytest.raises(FileNotFoundError, match="no input files match"):
        find_inputs([str(tmp_path / "*.zst")])

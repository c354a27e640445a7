"""The token-file format: raw uint32 readers (Dolma output included), atomic writer, metadata, manifests."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from olmo2.data.token_files import (
    DocumentSpan,
    TokenFile,
    TokenFileError,
    TokenFileWriter,
    document_spans,
    list_token_files,
    manifest_name,
    metadata_path,
    read_manifest,
    read_tokens,
    write_json_atomic,
)

EOS = 100257


def raw(path, ids):
    np.asarray(ids, dtype="<u4").tofile(path)
    return path


def test_read_tokens_raw_uint32(tmp_path):
    ids = [1, 100277, 2**32 - 1, EOS]
    assert read_tokens(raw(tmp_path / "a.npy", ids)).tolist() == ids
    # The layout everyone else relies on: memmap with no header, little-endian uint32.
    assert np.memmap(tmp_path / "a.npy", dtype=np.uint32).tolist() == ids
    assert (tmp_path / "a.npy").read_bytes()[:4] == b"\x01\x00\x00\x00"
    (tmp_path / "empty.npy").write_bytes(b"")
    assert read_tokens(tmp_path / "empty.npy").shape == (0,)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 6)
    with pytest.raises(TokenFileError, match="whole number"):
        read_tokens(tmp_path / "odd.bin")
    np.save(tmp_path / "header.npy", np.array(ids, dtype=np.uint32))
    with pytest.raises(TokenFileError, match="header"):
        read_tokens(tmp_path / "header.npy")


def test_dolma_output_without_sidecars(tmp_path):
    """Files from the Dolma toolkit (raw arrays, no manifest, maybe no metadata) are accepted."""
    raw(tmp_path / "part-1-00000.npy", [5, 6, EOS, 7, EOS])
    raw(tmp_path / "part-0-00000.npy", [1, EOS, 2, 3])  # a trailing document without EOS
    (tmp_path / "part-0-00000.csv.gz").write_bytes(b"")  # not a token file: never listed
    files = list_token_files(tmp_path)
    assert [f.name for f in files] == ["part-0-00000.npy", "part-1-00000.npy"]
    assert read_manifest(tmp_path) is None
    tf = TokenFile(tmp_path / "part-1-00000.npy")
    assert len(tf) == 5
    assert [(s.start, s.end) for s in tf.spans()] == [(0, 3), (3, 5)]
    assert [d.tolist() for d in tf.documents()] == [[5, 6, EOS], [7, EOS]]
    (tmp_path / "part-0-00000.csv.gz").unlink()
    assert [(s.start, s.end) for s in document_spans(files[0])] == [(0, 2), (2, 4)]


def test_list_token_files_globs_and_errors(tmp_path):
    for name in ["b.bin", "a.bin", "c.tok"]:
        raw(tmp_path / name, [1, 2])
    names = [
        p.name for p in list_token_files([str(tmp_path / "*.bin"), tmp_path / "c.tok", tmp_path / "a.bin"])
    ]
    assert names == ["a.bin", "b.bin", "c.tok"]  # any file name; duplicates dropped
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 5)
    with pytest.raises(TokenFileError, match="whole number"):
        list_token_files(str(tmp_path / "*.bin"))
    with pytest.raises(FileNotFoundError):
        list_token_files(tmp_path / "missing.bin")


def test_writer_is_atomic_deterministic_and_dolma_compatible(tmp_path):
    entries = []
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        w = TokenFileWriter(tmp_path / sub / "part-00000-00000.npy")
        w.write(np.array([1, 2, EOS, 3, EOS]), np.array([3, 5]), ["a,b", 'q"uote'], "in/x.jsonl", [1, 4])
        w.write(np.array([9, EOS]), np.array([2]), [""], "in/y.jsonl", [2])
        assert list((tmp_path / sub).glob("*.npy")) == []  # nothing visible before commit
        entries.append(w.commit())
    x, y = tmp_path / "x", tmp_path / "y"
    assert entries[0] == entries[1]
    assert entries[0]["tokens"] == 7 and entries[0]["documents"] == 3
    assert entries[0]["sources"] == ["in/x.jsonl", "in/y.jsonl"]
    for name in ("part-00000-00000.npy", "part-00000-00000.csv.gz"):
        assert (x / name).read_bytes() == (y / name).read_bytes()
    assert sorted(p.name for p in x.iterdir()) == ["part-00000-00000.csv.gz", "part-00000-00000.npy"]
    assert metadata_path(x / "part-00000-00000.npy").name == "part-00000-00000.csv.gz"
    # Dolma's metadata rows: start,end,id,src,loc with an exclusive end.
    text = gzip.decompress((x / "part-00000-00000.csv.gz").read_bytes()).decode()
    assert text.splitlines()[0] == '0,3,"a,b",in/x.jsonl,1'
    assert document_spans(x / "part-00000-00000.npy") == [
        DocumentSpan(0, 3, "a,b", "in/x.jsonl", 1),
        DocumentSpan(3, 5, 'q"uote', "in/x.jsonl", 4),
        DocumentSpan(5, 7, "", "in/y.jsonl", 2),
    ]


def test_writer_abort_leaves_nothing(tmp_path):
    w = TokenFileWriter(tmp_path / "p.npy")
    w.write(np.array([1, EOS]), np.array([2]), ["a"], "s", [1])
    w.abort()
    assert list(tmp_path.iterdir()) == []


def _manifest(shard, n, files):
    return {
        "format": "olmo2.token-files",
        "shard": [shard, n],
        "tokenizer": {"sha256": "abc"},
        "complete": True,
        "files": [{"name": f, "tokens": 2} for f in files],
        "inputs": [{"path": f"in{shard}"}],
        "totals": {"tokens": 2 * len(files), "skipped": {"empty_text": shard + 1}},
    }


def test_read_manifest_merges_shards(tmp_path):
    for shard, files in (
        (1, ["part-00001-00000.npy"]),
        (0, ["part-00000-00000.npy", "part-00000-00001.npy"]),
    ):
        write_json_atomic(tmp_path / manifest_name(shard, 2), _manifest(shard, 2, files))
        for f in files:
            raw(tmp_path / f, [1, EOS])
    m = read_manifest(tmp_path)
    assert m["shards"] == [0, 1] and m["complete"]
    assert [f["name"] for f in m["files"]] == [
        "part-00000-00000.npy",
        "part-00000-00001.npy",
        "part-00001-00000.npy",
    ]
    assert m["totals"] == {"tokens": 6, "skipped": {"empty_text": 3}}
    assert [p.name for p in list_token_files(tmp_path)] == [f["name"] for f in m["files"]]
    other = _manifest(1, 2, ["part-00001-00000.npy"]) | {"fingerprint": {"all_inputs_sha256": "x"}}
    (tmp_path / "manifest-00001-of-00002.json").write_text(json.dumps(other))
    with pytest.raises(TokenFileError, match="different input lists"):
        read_manifest(tmp_path)
    (tmp_path / "manifest-00001-of-00002.json").write_text(json.dumps(_manifest(1, 3, [])))
    with pytest.raises(TokenFileError, match="different jobs"):
        read_manifest(tmp_path)

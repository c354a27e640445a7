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
    check_manifests,
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


def tokenized_dir(path, *, eos=EOS, vocab=100_278, sha="a" * 64, shard=(0, 1)):
    """A token file in a directory with the manifest keys training checks, as ``olmo2 tokenize`` writes."""
    path.mkdir(exist_ok=True)
    name = f"part-{shard[0]:05d}-00000.npy"
    manifest = {
        "format": "olmo2.token-files",
        "eos_token_id": eos,
        "tokenizer": {"sha256": sha, "vocab_size": vocab},
        "files": [{"name": name, "tokens": 3}],
    }
    write_json_atomic(path / manifest_name(*shard), manifest)
    return raw(path / name, [1, 2, eos])


MODEL = {"eos_token_id": EOS, "vocab_size": 100_278}


def test_check_manifests_accepts_matching_and_raw_token_files(tmp_path):
    web, code = tokenized_dir(tmp_path / "web"), tokenized_dir(tmp_path / "code", vocab=50_000)
    (tmp_path / "dolma").mkdir()
    dolma = raw(tmp_path / "dolma" / "part-0-00000.npy", [1, EOS])  # no manifest: taken as it is
    note = check_manifests([web, code, dolma], **MODEL)
    assert (
        note
        == "token files: the manifests of 2 of 3 directories match the model (tokenizer sha256 aaaaaaaaaaaa)"
    )
    assert "no manifest in their 1 directories" in check_manifests([dolma], **MODEL)
    assert check_manifests([web], eos_token_id=None, vocab_size=100_278)  # a model without EOS: not compared
    old = tokenized_dir(tmp_path / "old", vocab=None)  # manifests before tokenizer.vocab_size: not compared
    assert check_manifests([old], **MODEL)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"eos": 0}, r"eos_token_id is 0 but the model's eos_token_id is 100257, .*eos_token_id to 0"),
        (
            {"vocab": 100_352},
            r"tokenizer\.vocab_size is 100352 but the model's vocab_size is 100278, .*100352",
        ),
        ({"sha": "b" * 64}, r"tokenizer\.sha256 is b{64} but \S*web.manifest\.json has a{64}: .*--tokenizer"),
    ],
)
def test_check_manifests_names_the_file_key_and_both_values(tmp_path, written, message):
    files = [tokenized_dir(tmp_path / "web"), tokenized_dir(tmp_path / "other", **written)]
    with pytest.raises(TokenFileError, match=r"other.manifest\.json: " + message):
        check_manifests(files, **MODEL)


def test_check_manifests_compares_the_shards_of_one_directory(tmp_path):
    first = tokenized_dir(tmp_path, shard=(0, 2))
    second = tokenized_dir(tmp_path, sha="c" * 64, shard=(1, 2))
    with pytest.raises(TokenFileError, match=r"manifest-00001-of-00002\.json: tokenizer\.sha256 is c{64}"):
        check_manifests([first, second], **MODEL)


def test_olmo_core_metadata_start_end_rows(tmp_path):
    """OLMo-core's ``write_document_indices`` writes ``start,end`` rows; both sides read each other's files."""
    olmo_core_utils = pytest.importorskip("olmo_core.data.utils")
    ids = np.random.default_rng(0).integers(0, 1000, 200).astype("<u4")
    ids[[9, 10, 57, 120, 199]] = EOS  # the last token ends a document: OLMo-core drops a trailing rest
    path = raw(tmp_path / "part-0-00000.npy", ids)
    by_eos = [(s.start, s.end) for s in document_spans(path)]
    meta = olmo_core_utils.write_document_indices(path, dtype=np.uint32, eos_token_id=EOS)
    assert meta == metadata_path(path)
    assert gzip.decompress(meta.read_bytes()).decode().splitlines()[:2] == ["0,10", "10,11"]
    theirs = list(olmo_core_utils.iter_document_indices(path, use_array_if_local=False))
    assert [(s.start, s.end) for s in document_spans(path)] == theirs == by_eos
    assert len(by_eos) == 5

    w = TokenFileWriter(tmp_path / "ours.npy")  # our five-column rows, read by OLMo-core
    w.write(ids, np.array([10, 11, 58, 121, 200]), list("abcde"), "in.jsonl", [1, 2, 3, 4, 5])
    w.commit()
    ours = list(olmo_core_utils.iter_document_indices(tmp_path / "ours.npy", use_array_if_local=False))
    assert ours == theirs


@pytest.mark.parametrize(
    "rows, message",
    [
        ("0,2\n2,4,x\n", r":2: 3 columns, expected start,end or start,end,id,src,loc"),
        ("0,2\n2,four\n", r":2: invalid literal for int\(\)"),
        ("0,2\n2,5\n", r":2: span 2,5 is not inside the file's 4 tokens"),
        ("2,2\n", r":1: span 2,2 is not inside"),
    ],
)
def test_bad_metadata_rows_name_the_line(tmp_path, rows, message):
    path = raw(tmp_path / "x.npy", [1, EOS, 2, EOS])
    metadata_path(path).write_bytes(gzip.compress(rows.encode()))
    with pytest.raises(TokenFileError, match=r"x\.csv\.gz" + message):
        document_spans(path)

"""``tokenize_documents``: round trip, formats, bad input, strict, resume, shards, workers, tiktoken parity."""

from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np
import pytest

from olmo2.data import tokenize as tk
from olmo2.data.documents import find_inputs
from olmo2.data.token_files import (
    TokenDirWriter,
    TokenFileError,
    document_spans,
    list_token_files,
    read_manifest,
    read_tokens,
)
from olmo2.data.tokenize import CHECK_TEXTS, DocumentEncoder, TokenizeError, parse_shard, tokenize_documents
from olmo2.folder_lock import FolderLocked, hold_folder
from olmo2.tokenizer import load_tokenizer

EOS = 100257
TEXTS = [
    "  Hello world! The quick brown fox.\n",
    "def f(x):\n    return x ** 2\n\n\n",
    "日本語のテキスト and emoji 👨‍👩‍👧 and numbers 1234567",
    "special strings <|endoftext|> and <|im_start|> and |||EMAIL_ADDRESS||| inside",
    "ends with its own EOS<|endoftext|>",  # the Dolma rule: no second EOS
    "\t tabs   and  runs of   spaces \u00a0\u3000 end",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def encoder(tok):
    return DocumentEncoder(tok.path.read_text(encoding="utf-8"), tok.eos_token_id, hf=tok.backend)


def records(n: int, tag: str = "") -> list[dict]:
    return [{"id": f"{tag}{i}", "text": f"{TEXTS[i % len(TEXTS)]} #{tag}{i}"} for i in range(n)]


def write_jsonl(path, recs, compress=False):
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in recs)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def corpus(d, files=4, per_file=12):
    d.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        write_jsonl(d / f"in{k}.jsonl", records(per_file, f"f{k}-"))
    write_jsonl(d / "z.jsonl.gz", records(per_file, "gz-"), compress=True)
    return d


def run(inputs, out, tok, **kw):
    kw.setdefault("progress", False)
    return tokenize_documents(inputs, out, tokenizer=tok, **kw)


def dir_bytes(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def expected_ids(tok, text: str) -> list[int]:
    ids = tok.encode(text.strip())
    return ids if ids[-1] == EOS else ids + [EOS]


def test_round_trip_decodes_to_the_stripped_text(tmp_path, tok):
    recs = records(30)
    write_jsonl(tmp_path / "docs.jsonl", recs)
    report = run([tmp_path / "docs.jsonl"], tmp_path / "out", tok, max_tokens_per_file=64)
    assert report.documents_read == report.documents_written == 30
    files = list_token_files(tmp_path / "out")
    assert len(files) == len(report.files) > 2
    got = []
    for f in files:
        tokens = read_tokens(f)
        spans = document_spans(f)
        assert len(tokens) <= 64 or len(spans) == 1  # only a lone oversized document exceeds the limit
        for s in spans:
            ids = tokens[s.start : s.end].tolist()
            assert ids[-1] == EOS and EOS not in ids[:-1] or "<|endoftext|>" in recs[int(s.id)]["text"]
            got.append((s.id, s.loc, ids, tok.decode(ids)))
    assert [g[0] for g in got] == [str(i) for i in range(30)] and [g[1] for g in got] == list(range(1, 31))
    for (_, _, ids, text), r in zip(got, recs, strict=True):
        stripped = r["text"].strip()
        assert ids == expected_ids(tok, stripped)
        assert text == (stripped if stripped.endswith("<|endoftext|>") else stripped + "<|endoftext|>")
    assert sum(len(read_tokens(f)) for f in files) == report.tokens
    m = read_manifest(tmp_path / "out")  # what training checks against the model
    assert (m["dtype"], m["eos_token_id"], m["tokenizer"]["vocab_size"]) == ("uint32", EOS, tok.vocab_size)


def test_formats_give_identical_tokens(tmp_path, tok):
    recs = records(20)
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in recs)
    inputs = {"jsonl": tmp_path / "a.jsonl", "gz": tmp_path / "a.jsonl.gz"}
    inputs["jsonl"].write_bytes(data)
    inputs["gz"].write_bytes(gzip.compress(data))
    try:
        import zstandard

        inputs["zst"] = tmp_path / "a.jsonl.zst"
        inputs["zst"].write_bytes(zstandard.ZstdCompressor().compress(data))
    except ImportError:
        pass
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        inputs["parquet"] = tmp_path / "a.parquet"
        pq.write_table(
            pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]}), inputs["parquet"]
        )
    except ImportError:
        pass
    want = [t for r in recs for t in expected_ids(tok, r["text"])]
    for name, path in inputs.items():
        run([path], tmp_path / name, tok)
        got = np.concatenate([read_tokens(f) for f in list_token_files(tmp_path / name)]).tolist()
        assert got == want, name


def bad_inputs(d):
    d.mkdir()
    lines = [
        b'{"text": "good one"}',
        b"{broken",
        b'{"id": 1}',
        b'{"text": "   "}',
        b'{"text": "\xff"}',
        b'{"text": "good two"}',
    ]
    (d / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    blob = gzip.compress(b"".join(b'{"text": "gz %d %s"}\n' % (i, b"y" * 300) for i in range(2000)))
    (d / "b.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    return d


def test_bad_input_is_counted_and_located(tmp_path, tok):
    report = run([bad_inputs(tmp_path / "in")], tmp_path / "out", tok)
    assert report.skipped == {"empty_text": 1, "invalid_utf8": 1, "malformed_json": 1, "missing_text": 1}
    assert report.documents_read == report.documents_written + report.documents_skipped
    assert 2 < report.documents_written < 2002  # the gzip's documents before its truncation are kept
    assert report.examples[0].endswith(
        "a.jsonl:2: malformed_json: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert [e.split(":")[0] for e in report.examples] == [str(tmp_path / "in" / "a.jsonl")] * 4
    (err,) = report.file_errors
    assert "b.jsonl.gz: truncated after line" in err
    m = read_manifest(tmp_path / "out")
    assert (
        m["complete"]
        and m["totals"]["documents_skipped"] == 4
        and m["totals"]["file_errors"] == {"truncated": 1}
    )
    assert "skipped: empty_text 1, invalid_utf8 1, malformed_json 1, missing_text 1" in report.summary()


def test_drop_repeats_drops_40_repeats_of_a_5_token_span_and_keeps_31(tmp_path, tok):
    """Spec §3.4's data-time filter: >= 32 back-to-back repeats of a 1-13-token span. Each document
    is its prose around a repeated 5-token span; only the one with 40 repeats is dropped, counted."""
    span = " cat dog fish bird frog"
    assert len(tok.encode(span)) == 5
    texts = {"a": "Plain prose.", "b": "Start." + span * 40 + " End.", "c": "Start." + span * 31 + " End."}
    write_jsonl(tmp_path / "in.jsonl", [{"id": k, "text": t} for k, t in texts.items()])
    report = run([tmp_path / "in.jsonl"], tmp_path / "out", tok, drop_repeats=True, strict=True)
    assert report.skipped == {"repeated n-grams": 1}
    assert (report.documents_read, report.documents_written, report.documents_skipped) == (3, 2, 1)
    assert report.examples == [
        f"{tmp_path / 'in.jsonl'}:2: repeated n-grams: >= 32 repeats of a 1-13-token span"
    ]
    tokens = np.concatenate([read_tokens(p) for p in sorted((tmp_path / "out").glob("part-*.npy"))])
    assert tokens.tolist() == expected_ids(tok, texts["a"]) + expected_ids(tok, texts["c"])
    assert read_manifest(tmp_path / "out")["drop_repeats"] == {"max_period": 13, "min_repeats": 32}
    plain = run([tmp_path / "in.jsonl"], tmp_path / "plain", tok)  # off by default: all three kept
    assert plain.documents_written == 3 and "drop_repeats" not in read_manifest(tmp_path / "plain")
    with pytest.raises(ValueError, match="drop_repeats"):  # one folder, one setting
        run([tmp_path / "in.jsonl"], tmp_path / "out", tok)


def test_strict_stops_naming_file_and_line(tmp_path, tok):
    d = bad_inputs(tmp_path / "in")
    with pytest.raises(TokenizeError, match=r"a\.jsonl:2: malformed_json"):
        run([d], tmp_path / "out1", tok, strict=True)
    with pytest.raises(TokenizeError, match=r"b\.jsonl\.gz:\d+: truncated"):
        run([d / "b.jsonl.gz"], tmp_path / "out2", tok, strict=True)


def test_rerun_skips_finished_outputs(tmp_path, tok, monkeypatch):
    d = corpus(tmp_path / "in")
    first = run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

    def fail(*a, **k):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(DocumentEncoder, "encode", fail)
    again = run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    assert again.files_reused == len(first.files) and again.files == first.files
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    with pytest.raises(TokenFileError, match="other inputs or settings"):
        run([d], tmp_path / "out", tok, max_tokens_per_file=99)


def test_an_edited_input_of_the_same_size_and_mtime_is_tokenized_again(tmp_path, tok, capfd):
    d = corpus(tmp_path / "in")
    first = run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    edited = d / "in1.jsonl"
    stat, text = edited.stat(), edited.read_text()
    edited.write_text(text.replace("Hello", "Jello"))  # same size; mtime set back: the sha256 tells
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_size == stat.st_size and edited.read_text() != text
    again = run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    assert f"lists 1 input(s) changed since (size, mtime or content), e.g. {edited}" in capfd.readouterr().err
    assert again.files_reused == 0 and again.files != first.files
    assert dir_bytes(tmp_path / "out") == dir_bytes(
        run([d], tmp_path / "clean", tok, max_tokens_per_file=100).out_dir
    )


def test_a_manifest_without_input_fingerprints_is_tokenized_again(tmp_path, tok, capfd):
    d = corpus(tmp_path / "in", files=1)
    first = run([d], tmp_path / "out", tok)
    path = tmp_path / "out" / "manifest.json"
    m = json.loads(path.read_text())  # as olmo2 wrote it before fingerprints: sizes in the fingerprint
    m["version"] = 1
    m["fingerprint"]["inputs"] = [[i["path"], i["bytes"]] for i in m["inputs"]]
    for entry in m["inputs"]:
        del entry["mtime_ns"], entry["sha256"]
    path.write_text(json.dumps(m))
    again = run([d], tmp_path / "out", tok)
    assert (
        "was written before olmo2 recorded input fingerprints: tokenizing shard 0 again"
        in capfd.readouterr().err
    )
    assert again.files_reused == 0 and again.files == first.files
    assert json.loads(path.read_text())["version"] == 2


def test_a_large_inputs_fingerprint_samples_blocks_first_and_last_included(tmp_path):
    big = tmp_path / "big.jsonl"
    data = bytearray(b"x" * (3 << 20))  # over 1 MiB: 16 blocks of 64 KiB are hashed, not the file
    big.write_bytes(data)
    seen = {tk._input_entry(str(big))["sha256"]}
    for offset in (0, len(data) - 1):
        big.write_bytes(data[:offset] + b"y" + data[offset + 1 :])
        seen.add(tk._input_entry(str(big))["sha256"])
    assert len(seen) == 3


def test_a_shard_being_tokenized_is_refused_to_a_second_run(tmp_path, tok):
    d = corpus(tmp_path / "in", files=2)
    out = tmp_path / "out"
    out.mkdir()
    with hold_folder(out, ".olmo2-shard-00000.lock"):
        with pytest.raises(FolderLocked, match=f"{out} is in use by another run \\(pid {os.getpid()} "):
            run([d], out, tok, shard=(0, 2))
        assert run([d], out, tok, shard=(1, 2)).files  # another shard into the same folder goes on
    assert not list(out.glob("manifest-00000-*"))


def test_output_inside_the_input_directory_is_not_an_input(tmp_path, tok):
    d = corpus(tmp_path / "in", files=1)
    first = run([d], d / "tokens", tok)
    again = run([d], d / "tokens", tok)  # its manifest.json must not become an input on the re-run
    assert first.input_files == again.input_files == 2 and again.files_reused == len(first.files)


def test_resume_after_a_kill_continues_and_matches_a_clean_run(tmp_path, tok, monkeypatch):
    d = corpus(tmp_path / "in")
    clean = run([d], tmp_path / "clean", tok, max_tokens_per_file=100)
    real_save, calls = TokenDirWriter.save, []

    def save_then_die(self, *a, **k):
        calls.append(1)
        if len(calls) == 6:  # file 4 is renamed into place, but the manifest will not list it
            raise KeyboardInterrupt
        real_save(self, *a, **k)

    monkeypatch.setattr(TokenDirWriter, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    monkeypatch.setattr(TokenDirWriter, "save", real_save)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not m["complete"] and len(m["files"]) == 4
    assert m["resume"]["unit"] == 1 and m["resume"]["document"] > 0  # resumes inside the second input
    assert (tmp_path / "out" / "part-00000-00004.npy").exists()
    kept = {f["name"]: (tmp_path / "out" / f["name"]).stat().st_mtime_ns for f in m["files"]}
    encoded = []
    real_encode = DocumentEncoder.encode
    monkeypatch.setattr(
        DocumentEncoder, "encode", lambda self, texts: encoded.extend(texts) or real_encode(self, texts)
    )
    resumed = run([d], tmp_path / "out", tok, max_tokens_per_file=100)
    assert resumed.files_reused == 4 and len(encoded) == clean.documents_written - 12  # input 0 not re-read
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in kept} == kept
    assert dir_bytes(tmp_path / "out") == dir_bytes(tmp_path / "clean")


def test_shards_split_inputs_exactly_once(tmp_path, tok):
    d = corpus(tmp_path / "in", files=5)
    whole = run([d], tmp_path / "whole", tok)
    seen = []
    for i in range(3):
        r = run([d], tmp_path / "sharded", tok, shard=(i, 3))
        assert all(f["name"].startswith(f"part-{i:05d}-") for f in r.files)
        seen += [inp["path"] for inp in json.loads(r.manifest.read_text())["inputs"]]
    assert sorted(seen) == find_inputs([d]) and len(set(seen)) == len(seen)
    merged = read_manifest(tmp_path / "sharded")
    assert merged["complete"] and merged["shards"] == [0, 1, 2]
    assert merged["totals"]["documents_written"] == whole.documents_written
    assert merged["totals"]["tokens"] == whole.tokens
    with pytest.raises(TokenFileError, match="another job"):
        run([d], tmp_path / "sharded", tok, shard=(0, 2))
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_workers_do_not_change_the_bytes(tmp_path, tok):
    d = corpus(tmp_path / "in", files=2, per_file=60)
    kw = dict(max_tokens_per_file=300, chunk_bytes=1500)  # several byte-range chunks per file
    one = run([d], tmp_path / "w1", tok, workers=1, **kw)
    run([d], tmp_path / "w2", tok, workers=2, **kw)
    assert len(one.files) > 3 and one.documents_written == 3 * 60
    assert dir_bytes(tmp_path / "w1") == dir_bytes(tmp_path / "w2")


def test_fallback_backend_gives_the_same_bytes(tmp_path, tok, monkeypatch):
    pytest.importorskip("tiktoken")
    d = corpus(tmp_path / "in", files=1)
    fast = run([d], tmp_path / "fast", tok)
    monkeypatch.setattr(DocumentEncoder, "check", lambda self, texts=(): "forced mismatch")
    enc = DocumentEncoder(tok.path.read_text(encoding="utf-8"), EOS)
    assert enc.backend == "tokenizers" and enc.fallback_reason == "forced mismatch"
    slow = run([d], tmp_path / "slow", tok)
    assert (fast.backend, slow.backend) == ("tiktoken", "tokenizers")
    fast_files = {k: v for k, v in dir_bytes(tmp_path / "fast").items() if k != "manifest.json"}
    assert fast_files == {k: v for k, v in dir_bytes(tmp_path / "slow").items() if k != "manifest.json"}


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcXYZ'sdtmlrve",
        "0123456789",
        " \t\n\r\u00a0\u2003\u3000\u200b",
        ".,;:!?-_()[]{}<>|/\\\"'`~@#$%^&*+=",
        "éñüßçøåæœ",
        "日本語中文한국어",
        "Ελληνικάкирилица",
        "العربيةעברית",
        "हिन्दीไทย",
        "😀👍🏽👨‍👩‍👧🇺🇸✔️",
    ]
    specials = [
        "<|endoftext|>",
        "<|pad|>",
        "<|im_start|>",
        "|||IP_ADDRESS|||",
        "<|extra_id_3|>",
        "<|endoftext",
    ]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 60)):
            if rng.random() < 0.03:
                parts.append(rng.choice(specials))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
        out.append("".join(parts))
    return out


def test_tiktoken_ids_equal_tokenizers_ids(tok, encoder):
    pytest.importorskip("tiktoken")
    assert encoder.backend == "tiktoken" and encoder.check() is None
    dec = tk._byte_decoder()
    pieces = []
    for token, _ in sorted(tok.backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
        try:
            pieces.append(bytes(dec[c] for c in token).decode("utf-8"))
        except (UnicodeDecodeError, KeyError):
            continue
    vocab_texts = ["".join(pieces[i : i + 40]) for i in range(0, len(pieces), 40)]
    vocab_texts += [" ".join(pieces[i : i + 40]) for i in range(7, len(pieces), 400)]
    texts = [*CHECK_TEXTS, *_random_texts(400), *vocab_texts]
    want = [e.ids for e in tok.backend.encode_batch(texts, add_special_tokens=False)]
    got = [ids.tolist() for ids in encoder.encode(texts)]
    bad = [t for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[0][:80]!r}"
    # Special-token strings in a document are recognised, exactly as tokenizers does (Dolma's behaviour).
    assert encoder.encode(["a<|endoftext|>b"])[0].tolist() == tok.encode("a<|endoftext|>b") == [64, EOS, 65]

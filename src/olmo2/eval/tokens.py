"""Tokenising task strings, with an on-disk cache per (task format, tokenizer).

The OLMES core suite has ~75 MB of prompt text (5-shot contexts); tokenising it takes minutes on a
laptop, so the ids of a fully loaded task format are cached under
``$OLMO2_CACHE_DIR/eval-tokens/<tokenizer sha256[:16]>/<format>.npz`` as uint32 arrays keyed by the
sha1 of each string. The file records the full tokenizer fingerprint and the data version; one that
names another tokenizer is refused with a clear message rather than silently giving wrong ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from olmo2.assets import ASSETS, cache_dir
from olmo2.eval.lm import TextTokenizer
from olmo2.eval.tasks import DATA_ASSET, EvalDataError

__all__ = ["cache_file", "encode_strings"]

CHUNK = 2048  # strings per encode_batch call: bounds the transient Python lists


def cache_file(fmt_name: str, tok: TextTokenizer) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", fmt_name)
    return cache_dir() / "eval-tokens" / tok.fingerprint[:16] / f"{safe}.npz"


def _digest(s: str) -> bytes:
    return hashlib.sha1(s.encode("utf-8")).digest()


def _encode(tok: TextTokenizer, strings: list[str]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for s in range(0, len(strings), CHUNK):
        out += [np.asarray(ids, dtype=np.uint32) for ids in tok.encode_batch(strings[s : s + CHUNK])]
    return out


def _read(path: Path, tok: TextTokenizer) -> dict[bytes, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            digests, offsets, tokens = z["digests"], z["offsets"], z["tokens"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"olmo2 eval: ignoring unreadable token cache {path}: {e}", file=sys.stderr)
        return None
    if meta.get("tokenizer") != tok.fingerprint:
        raise EvalDataError(
            f"tokenizer mismatch: the task token cache {path} was built with tokenizer "
            f"{str(meta.get('tokenizer'))[:16]}…, but the model's tokenizer is {tok.fingerprint[:16]}…. "
            "Delete the file (it is rebuilt) or evaluate with the tokenizer it was built for."
        )
    if meta.get("data") != ASSETS[DATA_ASSET].sha256:
        return None  # other task data: rebuild
    return {bytes(d): tokens[offsets[i] : offsets[i + 1]] for i, d in enumerate(digests)}


def _write(path: Path, tok: TextTokenizer, strings: list[str], ids: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in ids])
    meta = json.dumps({"tokenizer": tok.fingerprint, "data": ASSETS[DATA_ASSET].sha256})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                meta=np.array(meta),
                digests=np.frombuffer(b"".join(map(_digest, strings)), dtype=np.uint8).reshape(-1, 20),
                offsets=offsets,
                tokens=np.concatenate(ids) if ids else np.zeros(0, dtype=np.uint32),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_strings(
    tok: TextTokenizer, strings: list[str], cache_name: str | None = None, complete: bool = False
) -> dict[str, np.ndarray]:
    """``{string: uint32 ids}`` without special tokens. With ``cache_name``, ids are read from and
    (when ``complete``, i.e. the strings are the whole task format) written to the token cache."""
    strings = list(dict.fromkeys(strings))
    if cache_name is None:
        return dict(zip(strings, _encode(tok, strings), strict=True))
    path = cache_file(cache_name, tok)
    cached = _read(path, tok) if path.is_file() else None
    if cached is not None:
        digests = [_digest(s) for s in strings]
        if all(d in cached for d in digests):
            return {s: cached[d] for s, d in zip(strings, digests, strict=True)}
    ids = _encode(tok, strings)
    if complete:
        _write(path, tok, strings, ids)
    return dict(zip(strings, ids, strict=True))

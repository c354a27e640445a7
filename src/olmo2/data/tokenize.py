"""``olmo2 tokenize``: documents -> token files (spec §4.4), parallel, shardable, resumable, deterministic.

Each document is stripped, skipped if empty, encoded without adding special tokens (special-token
strings in the text are still recognised, as ``tokenizers`` does for Dolma) and followed by EOS unless
its last token already is EOS (the Dolma toolkit's rule); there is no BOS.

Inputs are split into chunks (files, byte ranges, row groups) that workers tokenize into spool files;
the parent consumes chunks in input order and cuts the stream into files of at most
``max_tokens_per_file`` tokens at document boundaries, so the output bytes never depend on the worker
count. After each finished file the manifest records where the next file starts (chunk, document), so
a re-run continues there instead of tokenizing again; the manifest is marked complete last.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from olmo2 import storage
from olmo2.data.documents import Chunk, ChunkReader, Document, Skip, find_inputs, plan_chunks
from olmo2.data.repeats import MAX_PERIOD, MIN_REPEATS, repeated_ngram_mask
from olmo2.data.token_files import (
    DTYPE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    TokenDirWriter,
    manifest_name,
    open_checkpoint,
    read_tokens,
)
from olmo2.folder_lock import hold_folder
from olmo2.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_MAX_TOKENS_PER_FILE",
    "DocumentEncoder",
    "TokenizeError",
    "TokenizeReport",
    "parse_shard",
    "tokenize_documents",
]

DEFAULT_MAX_TOKENS_PER_FILE = 1 << 28  # 1 GiB of uint32 per file
DEFAULT_CHUNK_BYTES = 64 << 20
MAX_EXAMPLES = 10  # skipped-record locations kept for the report and manifest
REPEATS = "repeated n-grams"  # the skip reason of --drop-repeats
_BATCH_CHARS, _BATCH_DOCS = 1 << 20, 1024
_SAMPLE_BLOCKS, _SAMPLE_BYTES = 16, 64 << 10  # an input's fingerprint reads at most 1 MiB of it


class TokenizeError(ValueError):
    """A bad record or file under ``strict``."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


@dataclass
class TokenizeReport:
    out_dir: Path | str  # a URL when the output was uploaded
    manifest: Path | str
    backend: str
    input_files: int = 0
    input_bytes: int = 0
    documents_read: int = 0
    documents_written: int = 0
    documents_skipped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    tokens: int = 0
    files_reused: int = 0  # finished by an earlier run and left untouched
    seconds: float = 0.0

    def summary(self) -> str:
        megabytes = self.input_bytes / 1e6
        worked = self.seconds > 0 and self.files_reused < len(self.files)
        rate = f", {megabytes / self.seconds:.1f} MB/s" if worked else ""
        lines = [
            f"read {_plural(self.input_files, 'input file')} ({megabytes:,.1f} MB) with {self.backend}{rate}: "
            f"{self.documents_read:,} documents read, {self.documents_written:,} written, "
            f"{self.documents_skipped:,} skipped",
            f"wrote {_plural(len(self.files), 'token file')}, {self.tokens:,} tokens, to {self.out_dir} "
            f"({Path(self.manifest).name})"
            + (f"; {self.files_reused} were already done" if self.files_reused else ""),
        ]
        if self.skipped:
            skips = sorted(self.skipped.items())
            lines.append("skipped: " + ", ".join(f"{reason} {count:,}" for reason, count in skips))
            lines += [f"  {example}" for example in self.examples]
        lines += [f"file error: {error}" for error in self.file_errors]
        return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    """``3, "file"`` -> ``"3 files"``."""
    return f"{count:,} {noun}{'s' * (count != 1)}"


# -- encoding -----------------------------------------------------------------------------------------
# Texts where a tiktoken port of a byte-level BPE could plausibly diverge from tokenizers: regex classes
# (letters, digits, whitespace runs, newlines), contractions, scripts, emoji, near-miss special tokens
# (``check`` adds every real one).
CHECK_TEXTS = (
    "Hello world! The quick brown fox jumps over the lazy dog. 12345 1234567 3.14159 -42 1e10",
    "I'm you're he's we'll they'd I've IT'S THEY'LL O'Neil's \u2019s 'S 'd've",
    "def f(x):\n    return x ** 2  # comment\n\n\n\tif a==b:\r\n\t\tpass   \n    \n  ",
    "  lead and trail  \t \n\n\n  \u00a0\u2003\u3000 spaces\u200b\ufeff\u00a0x \u3000\u3000y\r\r\n\n\r",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4 \u0395\u03bb\u03bb \u0420\u0443\u0441 \u0627\u0644\u0639 \u0939\u093f\u0928 \u0e44\u0e17\u0e22",
    "emoji \U0001f600\U0001f44d\U0001f3fd\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1fa\U0001f1f8 \u2714\ufe0f e\u0301 \ufb01 \u1e9e \u01c5 \u216b \u00bd \u00b2 \u0663 \U0001d7d8",
    "<|endoftext <|endoftext|| <|ENDOFTEXT|> <|extra_id_11|> |||PHONE_NUMBER|| < |endoftext|> <|<|pad|>|>",
    "https://example.com/a?b=c&d=e#f a.b@c.de C:\\Users\\x ~/.bashrc 0 00 000 0000 123456789012 1,000,000",
    '!!!??? ... --- *** ``` """ <<< >>> ((( ))) [[[ ]]] {{{ }}} ___ ~~~ \x00\x01\x1f\x7f \u0085 \u2028 \u2029',
    "".join(chr(c) for c in range(0x20, 0x3000, 3)),
    "a" * 300 + " " * 300 + "\n" * 50 + "1" * 100 + "\U0001f600" * 30,
)


def _byte_decoder() -> dict[str, int]:
    """ByteLevel's printable-character alphabet back to bytes (GPT-2's bytes_to_unicode, inverted)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), 256),
    ]
    shifted = [byte for byte in range(256) if byte not in keep]
    return {chr(byte): byte for byte in keep} | {
        chr(256 + offset): byte for offset, byte in enumerate(shifted)
    }


def tiktoken_encoding(spec: dict):
    """``(tiktoken.Encoding, None)`` equivalent to a parsed tokenizer.json, or ``(None, why not)``."""
    model, pre_tokenizer = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    split = steps[0] if steps else {}
    ok = (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and model.get("dropout") is None
        and spec.get("normalizer") is None
        and len(steps) == 2
        and split.get("type") == "Split"
        and "Regex" in split.get("pattern", {})
        and split.get("behavior") == "Removed"
        and split.get("invert") is True
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("add_prefix_space")
        and not steps[1].get("use_regex")
        and not any(
            added["lstrip"] or added["rstrip"] or added["single_word"] or added["normalized"]
            for added in spec["added_tokens"]
        )
    )
    if not ok:
        return None, "tokenizer.json is not a plain byte-level BPE with a split regex"
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    special = {added["content"]: added["id"] for added in spec["added_tokens"]}
    byte_of = _byte_decoder()
    try:
        ranks = {
            bytes(byte_of[char] for char in token): rank
            for token, rank in model["vocab"].items()
            if token not in special
        }
    except KeyError:
        return None, "vocabulary has tokens outside the byte-level alphabet"
    # tiktoken applies the merge whose result has the lowest id, tokenizers the earliest merge rule: the
    # same order only if merge results have increasing ids.
    merged = [
        model["vocab"].get(merge.replace(" ", "", 1) if isinstance(merge, str) else "".join(merge))
        for merge in model["merges"]
    ]
    if None in merged or any(a >= b for a, b in zip(merged[:-1], merged[1:], strict=True)):
        return None, "merge order differs from the vocabulary order"
    pattern = split["pattern"]["Regex"]
    return tiktoken.Encoding(
        "olmo2-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
    ), None


@functools.lru_cache(maxsize=2)
def _tiktoken_for(tokenizer_json: str):
    return tiktoken_encoding(json.loads(tokenizer_json))


class DocumentEncoder:
    """Document texts -> uint32 ids + EOS, identical to ``tokenizers``; tiktoken (faster) when proven equal.

    The tiktoken encoding is rebuilt from the tokenizer file at runtime (never stored) and checked
    against ``tokenizers`` on :data:`CHECK_TEXTS`; any difference falls back to ``tokenizers``.
    """

    def __init__(
        self, tokenizer_json: str, eos_token_id: int, backend: str = "auto", check: bool = True, hf=None
    ) -> None:
        if backend not in ("auto", "tiktoken", "tokenizers"):
            raise ValueError(f"backend must be auto, tiktoken or tokenizers, got {backend!r}")
        self.tokenizer_json, self.eos_token_id, self._hf = tokenizer_json, eos_token_id, hf
        self._eos = np.array([eos_token_id], DTYPE)
        self.backend, self.fallback_reason, self._tiktoken = "tokenizers", None, None
        if backend == "tokenizers":
            return
        self._tiktoken, why = _tiktoken_for(tokenizer_json)
        if self._tiktoken is not None and check:
            why = self.check()
        if why is None:
            self.backend, self._special = "tiktoken", self._tiktoken.special_tokens_set
            return
        self._tiktoken = None
        if backend == "tiktoken":
            raise ValueError(f"tiktoken backend unavailable: {why}")
        self.fallback_reason = why

    def __getstate__(self) -> dict:
        # Sent to worker processes: the tiktoken encoding pickles as its ranks (far cheaper than
        # rebuilding it from the JSON there); the tokenizers object is rebuilt only if needed.
        return {**self.__dict__, "_hf": None}

    @property
    def hf(self):
        """The ``tokenizers`` reference (built only when needed: fallback or self-check)."""
        if self._hf is None:
            import tokenizers

            self._hf = tokenizers.Tokenizer.from_str(self.tokenizer_json)
        return self._hf

    def check(self, texts: Sequence[str] = CHECK_TEXTS) -> str | None:
        """None when tiktoken gives tokenizers' ids on ``texts`` and the special tokens, else a difference."""
        special = self._tiktoken.special_tokens_set
        ordered = sorted(special)
        for text in [*texts, "".join(ordered), "x " + " y\n".join(ordered) + "z"]:
            want = self.hf.encode(text, add_special_tokens=False).ids
            if self._tiktoken.encode_to_numpy(text, allowed_special=special).tolist() != want:
                return f"tiktoken and tokenizers differ on {text[:60]!r}"
        return None

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text, no special tokens added (special-token strings in the text are recognised)."""
        if self._tiktoken is not None:
            return [self._tiktoken.encode_to_numpy(text, allowed_special=self._special) for text in texts]
        encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.array(encoding.ids, DTYPE) for encoding in encodings]

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All documents concatenated, each followed by EOS unless it already ends in one; and their lengths."""
        parts, lens = [], np.empty(len(texts), np.int64)
        for index, ids in enumerate(self.encode(texts)):
            parts.append(ids)
            if len(ids) == 0 or ids[-1] != self.eos_token_id:
                parts.append(self._eos)
            lens[index] = len(ids) + (parts[-1] is self._eos)
        return (np.concatenate(parts) if parts else np.zeros(0, DTYPE)), lens


# -- worker side --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordPolicy:
    """What happens to a record beside encoding it: ``strict`` stops at the first bad one;
    ``drop_repeats`` drops documents with repeated n-gram runs (spec §3.4), counted as skipped."""

    strict: bool = False
    drop_repeats: bool = False


@dataclass
class _WorkerState:
    """What every unit tokenized in a process shares: set once per worker process, or in the parent."""

    encoder: DocumentEncoder
    policy: RecordPolicy
    spool_dir: str
    report_progress: Callable[[int, int], None]  # (bytes read, documents encoded) since the last report


_worker: _WorkerState | None = None


@dataclass
class _UnitResult:
    index: int
    spool: str
    lens: np.ndarray  # tokens per written document (EOS included)
    lines: np.ndarray  # line of each written document, relative to the chunk
    ids: list[str]
    n_lines: int = 0
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, int, str]] = field(default_factory=list)
    error: tuple[str, int, str] | None = None  # FileError, or the first bad record under strict


def _init_worker(
    encoder: DocumentEncoder, policy: RecordPolicy, spool_dir: str, queue, one_thread: bool
) -> None:
    global _worker
    if one_thread:  # processes are the parallelism; a fallback to tokenizers must not oversubscribe
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    _worker = _WorkerState(encoder, policy, spool_dir, lambda nbytes, docs: queue.put((nbytes, docs)))


def _skip(result: _UnitResult, reason: str, line: int, detail: str) -> None:
    result.skipped[reason] = result.skipped.get(reason, 0) + 1
    if len(result.examples) < MAX_EXAMPLES:
        result.examples.append((reason, line, detail))


def _drop_repeated(
    tokens: np.ndarray, lengths: np.ndarray, batch: list[Document], result: _UnitResult
) -> tuple[np.ndarray, np.ndarray, list[Document]]:
    """The batch without its documents that hold a repeated n-gram run (each counted as skipped)."""
    ends = np.cumsum(lengths)
    spans = list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))
    keep = [e - s < MIN_REPEATS or not repeated_ngram_mask(tokens[s:e]) for s, e in spans]
    if all(keep):
        return tokens, lengths, batch
    for doc, kept in zip(batch, keep, strict=True):
        if not kept:
            _skip(result, REPEATS, doc.line, f">= {MIN_REPEATS} repeats of a 1-{MAX_PERIOD}-token span")
    pieces = [tokens[s:e] for (s, e), kept in zip(spans, keep, strict=True) if kept]
    kept_tokens = np.concatenate(pieces) if pieces else tokens[:0]
    return kept_tokens, lengths[np.asarray(keep)], [d for d, kept in zip(batch, keep, strict=True) if kept]


def _tokenize_unit(task: tuple[int, Chunk]) -> _UnitResult:
    index, chunk = task
    worker = _worker
    pending = [0, 0]  # bytes and documents not reported yet

    def progress(nbytes: int, docs: int = 0) -> None:
        pending[0] += nbytes
        pending[1] += docs
        if pending[0] >= 4 << 20 or pending[1] >= 4096 or nbytes == 0:
            worker.report_progress(*pending)
            pending[0] = pending[1] = 0

    spool = os.path.join(worker.spool_dir, f"unit-{index:07d}.u32")
    result = _UnitResult(index, spool, np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    lens, lines, batch = [], [], []
    chars = 0
    reader = ChunkReader(chunk, progress=progress)
    with open(spool, "wb") as spool_file:

        def flush() -> None:
            encoded = len(batch)
            tokens, lengths = worker.encoder.encode_documents([doc.text for doc in batch])
            kept = batch
            if worker.policy.drop_repeats:
                tokens, lengths, kept = _drop_repeated(tokens, lengths, batch, result)
            spool_file.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
            lens.append(lengths)
            lines.append(np.fromiter((doc.line for doc in kept), np.int64, len(kept)))
            result.ids.extend(doc.id for doc in kept)
            progress(0, encoded)
            batch.clear()

        for item in reader:
            if isinstance(item, Document):
                result.read += 1
                batch.append(item)
                chars += len(item.text)
                if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
                    flush()
                    chars = 0
                continue
            if isinstance(item, Skip):
                result.read += 1
                _skip(result, item.reason, item.line, item.detail)
                if not worker.policy.strict:
                    continue
            result.error = (item.reason, item.line, item.detail)  # a FileError, or a Skip under strict
            break
        if batch:
            flush()
    progress(0)
    result.n_lines = reader.lines
    if lens:
        result.lens, result.lines = np.concatenate(lens), np.concatenate(lines)
    return result


# -- parent side --------------------------------------------------------------------------------------
def _unit_results(
    tasks, workers: int, encoder: DocumentEncoder, policy: RecordPolicy, spool_dir: str, bar
) -> Iterator[_UnitResult]:
    """Unit results in unit order, from this process (1 worker) or a pool of spawned processes."""
    global _worker

    def advance(nbytes: int, docs: int = 0) -> None:
        if bar is not None:
            bar.update(nbytes)
            bar.docs += docs
            bar.set_postfix_str(f"{bar.docs:,} docs", refresh=False)

    if workers <= 1 or len(tasks) <= 1:
        _worker = _WorkerState(encoder, policy, spool_dir, advance)
        yield from map(_tokenize_unit, tasks)
        return
    ctx = mp.get_context("spawn")  # forking after tokenizers started its thread pool can deadlock
    queue = ctx.Queue()
    initargs = (encoder, policy, spool_dir, queue, True)
    with ctx.Pool(min(workers, len(tasks)), _init_worker, initargs) as pool:
        results = pool.imap(_tokenize_unit, tasks)
        for _ in tasks:
            while True:
                while not queue.empty():
                    advance(*queue.get())
                try:
                    result = results.next(timeout=0.2)
                    break
                except mp.TimeoutError:
                    continue
            yield result


def _merge_unit_stats(
    manifest: dict, result: _UnitResult, input_entry: dict, path: str, strict: bool
) -> None:
    """Fold a finished unit's statistics into its input's manifest entry (after its documents are written)."""
    base = input_entry["lines"]
    if result.error is not None:
        reason, line, detail = result.error
        if strict:
            raise TokenizeError(
                f"{path}:{base + line}: {reason}: {detail}" if line else f"{path}: {reason}: {detail}"
            )
        error = f"{reason} after line {base + line}: {detail}" if line else f"{reason}: {detail}"
        if error not in input_entry["errors"]:  # an unreadable file fails once per chunk
            input_entry["errors"].append(error)
    for reason, line, detail in result.examples:
        if len(manifest["examples"]) < MAX_EXAMPLES:
            manifest["examples"].append(f"{path}:{base + line}: {reason}: {detail}")
    input_entry["chunks"] += 1
    input_entry["lines"] += result.n_lines
    input_entry["documents_read"] += result.read
    input_entry["documents_written"] += len(result.lens)
    input_entry["tokens"] += int(result.lens.sum())
    for reason, count in result.skipped.items():
        input_entry["skipped"][reason] = input_entry["skipped"].get(reason, 0) + count


def _tokenizer_source(tokenizer):
    """(JSON text, EOS id, where from, tokenizers object) for a Tokenizer, a path, or None (dolma2)."""
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer.path is not None and tokenizer.path.is_file():
        text, where = tokenizer.path.read_text(encoding="utf-8"), str(tokenizer.path)
    else:
        text, where = tokenizer.backend.to_str(), "<in memory>"
    return text, tokenizer.eos_token_id, where, tokenizer.backend


def tokenize_documents(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    strict: bool = False,
    drop_repeats: bool = False,
    tokenizer=None,
    max_tokens_per_file: int = DEFAULT_MAX_TOKENS_PER_FILE,
    progress: bool = True,
    backend: str = "auto",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> TokenizeReport:
    """Tokenize documents (files, directories, globs) into uint32 token files in ``out_dir``.

    ``shard=(i, n)`` takes the inputs whose sorted index is i mod n, so n machines can split a corpus
    without talking to each other. ``workers`` processes (0: one per CPU) never change the output.
    ``backend``: "auto" (tiktoken when it reproduces ``tokenizers`` exactly, else tokenizers),
    "tiktoken" or "tokenizers". ``tokenizer``: a Tokenizer, a tokenizer.json path, or None (dolma2).
    ``drop_repeats``: drop documents with >= 32 back-to-back repeats of a 1-13-token span (spec §3.4's
    data-time filter), counted under the skip reason "repeated n-grams".

    Inputs may be URLs (read through ``olmo2.storage``, recorded as URLs); an ``out_dir`` URL is
    written in a local temporary folder, then uploaded (so a re-run starts afresh rather than resumes).
    """
    if storage.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix="olmo2-tokenize-", dir=storage.cache_dir()) as staging:
            report = tokenize_documents(
                inputs,
                staging,
                workers=workers,
                shard=shard,
                strict=strict,
                drop_repeats=drop_repeats,
                tokenizer=tokenizer,
                max_tokens_per_file=max_tokens_per_file,
                progress=progress,
                backend=backend,
                chunk_bytes=chunk_bytes,
            )
            storage.upload_dir(staging, out_dir)
        manifest = f"{str(out_dir).rstrip('/')}/{Path(report.manifest).name}"
        return replace(report, out_dir=out_dir, manifest=manifest)
    start = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard[0]}/{shard[1]}: need 0 <= I < N")
    if max_tokens_per_file < 1:
        raise ValueError("max_tokens_per_file must be positive")
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = Path(out_dir)
    inside = os.path.realpath(out) + os.sep  # an output directory inside an input directory is no input
    everything = [path for path in find_inputs(inputs) if not os.path.realpath(path).startswith(inside)]
    listing = json.dumps(everything).encode()
    paths = everything[shard[0] :: shard[1]]
    entries = [_input_entry(path) for path in paths]
    tokenizer_json, eos_token_id, tokenizer_origin, hf_tokenizer = _tokenizer_source(tokenizer)
    tokenizer_sha = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    settings = {
        "max_tokens_per_file": max_tokens_per_file,
        "chunk_bytes": chunk_bytes,
        "eos_token_id": eos_token_id,
        # only when on: output folders written before this filter existed keep their fingerprint
        **({"drop_repeats": {"max_period": MAX_PERIOD, "min_repeats": MIN_REPEATS}} if drop_repeats else {}),
    }
    fingerprint = {
        "inputs": paths,  # their contents are in the manifest's inputs; a change re-tokenizes (open_checkpoint)
        # Every shard must see the same input list, or shards overlap and miss files: read_manifest checks.
        "all_inputs_sha256": hashlib.sha256(listing).hexdigest(),
        "tokenizer": tokenizer_sha,
        **settings,
    }
    out.mkdir(parents=True, exist_ok=True)
    with hold_folder(out, f".olmo2-shard-{shard[0]:05d}.lock"):  # per shard: shards may share a folder
        manifest = open_checkpoint(out, shard, fingerprint, entries)
        reused = len(manifest["files"]) if manifest else 0
        if manifest is None or not manifest["complete"]:
            # the equality self-check runs here
            encoder = DocumentEncoder(tokenizer_json, eos_token_id, backend=backend, hf=hf_tokenizer)
            if manifest is None:
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "version": MANIFEST_VERSION,
                    "dtype": DTYPE.name,
                    "bos_token_id": None,
                    **settings,
                    "tokenizer": {
                        "sha256": tokenizer_sha,
                        "source": tokenizer_origin,
                        "vocab_size": hf_tokenizer.get_vocab_size(with_added_tokens=True),
                    },
                    "backend": encoder.backend,
                    "shard": list(shard),
                    "fingerprint": fingerprint,
                    "complete": False,
                    "resume": {"unit": 0, "document": 0},
                    "files": [],
                    "inputs": entries,
                    "examples": [],
                    "totals": {},
                }
            writer = TokenDirWriter(out, shard, manifest, max_tokens_per_file)
            policy = RecordPolicy(strict=strict, drop_repeats=drop_repeats)
            _write_token_files(writer, paths, chunk_bytes, workers, encoder, policy, progress)

    totals = manifest["totals"]
    return TokenizeReport(
        out_dir=out,
        manifest=out / manifest_name(*shard),
        backend=manifest["backend"],
        input_files=totals["input_files"],
        input_bytes=totals["input_bytes"],
        documents_read=totals["documents_read"],
        documents_written=totals["documents_written"],
        documents_skipped=totals["documents_skipped"],
        skipped=totals["skipped"],
        examples=list(manifest["examples"]),
        file_errors=[
            f"{entry['path']}: {error}" for entry in manifest["inputs"] for error in entry["errors"]
        ],
        files=list(manifest["files"]),
        tokens=totals["tokens"],
        files_reused=reused,
        seconds=time.perf_counter() - start,
    )


def _input_entry(path: str) -> dict:
    """An input's manifest entry: its fingerprint (``bytes``, ``mtime_ns``, ``sha256``) and zeroed counts.

    ``sha256`` covers the whole file up to 1 MiB, else 16 evenly spaced 64 KiB blocks (the first and
    last included): a re-run of a finished job then reads 1 MiB per input, not the corpus again. An
    edit that keeps the size, the mtime and every sampled block is not seen (delete the manifest).
    """
    digest = hashlib.sha256()
    if storage.is_remote(path):  # no mtime to trust across stores: the size and the sampled blocks
        size, mtime_ns = storage.size(path), 0
        read_at = functools.partial(storage.read_range, path)
    else:
        stat = os.stat(path)
        size, mtime_ns = (stat.st_size if os.path.isfile(path) else 0), stat.st_mtime_ns
        read_at = functools.partial(_read_at, path)
    if size <= _SAMPLE_BLOCKS * _SAMPLE_BYTES:
        digest.update(read_at(0, size) if size else b"")
    else:
        last = size - _SAMPLE_BYTES
        for k in range(_SAMPLE_BLOCKS):
            digest.update(read_at(last * k // (_SAMPLE_BLOCKS - 1), _SAMPLE_BYTES))
    zero = dict.fromkeys(("chunks", "lines", "documents_read", "documents_written", "tokens"), 0)
    return {
        "path": path,
        "bytes": size,
        "mtime_ns": mtime_ns,
        "sha256": digest.hexdigest(),
        **zero,
        "skipped": {},
        "errors": [],
    }


def _read_at(path: str, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _write_token_files(
    writer: TokenDirWriter, paths, chunk_bytes, workers, encoder, policy: RecordPolicy, progress: bool
) -> None:
    """Tokenize the units from the checkpoint's resume point on, then mark the manifest complete."""
    out, (shard_index, shard_count), manifest = writer.out_dir, writer.shard, writer.manifest
    units = [  # in input order
        (chunk, input_index)
        for input_index, path in enumerate(paths)
        for chunk in plan_chunks(path, chunk_bytes)
    ]
    start, first_doc = manifest["resume"]["unit"], manifest["resume"]["document"]
    writer.save(manifest["resume"])  # before any part file exists, so foreign part files are detectable
    for part in out.glob(f".part-{shard_index:05d}-*.tmp-*"):  # left behind by a killed run
        part.unlink(missing_ok=True)
    spool = out / f".spool-{shard_index:05d}-of-{shard_count:05d}"
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir()
    bar = None
    if progress:
        from tqdm import tqdm

        done = sum(chunk.nbytes for chunk, _ in units[:start])
        total = sum(chunk.nbytes for chunk, _ in units)
        bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, file=sys.stderr, desc="tokenize")
        bar.docs = 0
    tasks = [(unit, units[unit][0]) for unit in range(start, len(units))]
    try:
        for result in _unit_results(tasks, workers, encoder, policy, str(spool), bar):
            chunk, input_index = units[result.index]
            input_entry = manifest["inputs"][input_index]
            if policy.strict and result.error is not None:  # raises, naming file and line
                _merge_unit_stats(manifest, result, input_entry, chunk.path, policy.strict)
            tokens = read_tokens(result.spool)  # memory-mapped: a unit can be a multi-GB compressed file
            locations = (result.lines + input_entry["lines"]).tolist()
            writer.add(
                tokens,
                result.lens,
                result.ids,
                chunk.path,
                locations,
                first_doc if result.index == start else 0,
                result.index,
            )
            os.unlink(result.spool)
            _merge_unit_stats(manifest, result, input_entry, chunk.path, policy.strict)
        writer.finish()
    finally:
        writer.abort()
        shutil.rmtree(spool, ignore_errors=True)
        if bar is not None:
            bar.close()

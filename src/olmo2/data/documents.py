"""Reading Dolma-style documents: JSON lines (plain, ``.gz``, ``.zst``) and Parquet, bad records reported.

A bad record must not end a day-long tokenization job, so readers never raise on content: they yield a
:class:`Skip` (reason + line) for each bad record and a final :class:`FileError` for an unreadable or
truncated file, and the caller decides whether to count or to stop (``--strict``). Records before a
truncation are kept, because re-fetching a corpus shard to recover its tail is expensive.

Format is detected from the file's magic bytes (then its suffix), so a misnamed file still reads.
Inputs may be URLs (``s3://``, ``gs://``, ``http(s)://``): they are read through ``olmo2.storage``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo2 import storage

__all__ = [
    "Chunk",
    "ChunkReader",
    "Document",
    "FileError",
    "Skip",
    "SKIP_REASONS",
    "detect_format",
    "find_inputs",
    "plan_chunks",
    "read_documents",
]

# Why a record was skipped; documents read = written + the sum of these.
SKIP_REASONS = ("malformed_json", "missing_text", "empty_text", "invalid_utf8")
INPUT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".gz", ".zst", ".zstd")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"PAR1": "parquet"}
_SUFFIX_FORMAT = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".parquet": "parquet"}
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Document:
    text: str  # already stripped (Dolma strips and skips empty documents)
    id: str  # "" when the record has none
    line: int  # 1-based line (JSON lines) or row (Parquet), counted from the chunk's start


@dataclass(frozen=True)
class Skip:
    reason: str  # one of SKIP_REASONS
    line: int
    detail: str


@dataclass(frozen=True)
class FileError:
    """The rest of the file cannot be read; always the last item a reader yields."""

    reason: str  # "unreadable" or "truncated"
    line: int  # records up to this line were read (0: none)
    detail: str


@dataclass(frozen=True)
class Chunk:
    """A unit of work: a whole file, a byte range of a plain JSON-lines file, or Parquet row groups.

    A line belongs to the byte-range chunk in which it starts, so chunks of one file cover each line once.
    """

    path: str
    format: str  # "jsonl" | "gzip" | "zstd" | "parquet"
    start: int = 0  # byte offset (jsonl) or first row group (parquet)
    stop: int | None = None  # exclusive; None = to the end
    nbytes: int = 0  # on-disk bytes this chunk stands for (progress)


def find_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files, directories (recursively, known suffixes) and globs into a sorted, de-duplicated list.

    Sorted so that every machine of a sharded job sees the same order; a name that matches nothing is an
    error (most likely a typo) rather than an empty job.
    """
    found: dict[str, str] = {}
    for raw in inputs:
        spec = os.fspath(raw)
        if storage.is_remote(spec):  # the same rules as for local paths, below
            if storage.has_magic(spec):
                matches = storage.glob(spec)
            elif storage.is_folder(spec):
                names = [(m, m.rsplit("/", 1)[-1]) for m in storage.glob(f"{spec.rstrip('/')}/**")]
                matches = [m for m, name in names if not name.startswith(".") and _looks_like_input(name)]
            else:
                storage.size(spec)  # FileNotFoundError naming the URL
                matches = [spec]
            if not matches:
                raise FileNotFoundError(f"no input files match {spec}")
            found.update((m, m) for m in matches)
            continue
        if os.path.isdir(spec):
            matches = [
                str(p)
                for p in Path(spec).rglob("*")
                if p.is_file() and not p.name.startswith(".") and _looks_like_input(p.name)
            ]
        elif glob.has_magic(spec):
            matches = [m for m in glob.glob(spec, recursive=True) if os.path.isfile(m)]
        elif os.path.exists(spec):
            matches = [spec]
        else:
            raise FileNotFoundError(f"input {spec} does not exist")
        if not matches:
            raise FileNotFoundError(f"no input files match {spec}")
        for m in matches:
            found.setdefault(os.path.realpath(m), m)
    return sorted(found.values())


def _looks_like_input(name: str) -> bool:
    return name.endswith(INPUT_SUFFIXES) and not name.endswith(".csv.gz")


def _open(path: str | os.PathLike):
    """A binary file object over a local path or a URL."""
    return storage.open_file(path) if storage.is_remote(path) else open(path, "rb")  # noqa: SIM115


def detect_format(path: str | os.PathLike) -> str:
    """``jsonl``, ``gzip``, ``zstd`` or ``parquet``, from the magic bytes, else from the suffix."""
    try:
        with _open(path) as f:
            head = f.read(4)
    except OSError:
        head = b""
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return _SUFFIX_FORMAT.get(Path(path).suffix.lower(), "jsonl")


def plan_chunks(path: str, chunk_bytes: int = 64 << 20) -> list[Chunk]:
    """Split one input into units of work: plain JSON lines by byte range, Parquet by row group.

    Compressed streams cannot be entered in the middle, so a ``.gz``/``.zst`` file is one chunk. The
    plan depends only on the file (never on the worker count), which keeps outputs deterministic.
    """
    fmt = detect_format(path)
    try:
        size = storage.size(path) if storage.is_remote(path) else os.path.getsize(path)
    except OSError:
        size = 0
    if fmt == "jsonl" and size > chunk_bytes:
        starts = range(0, size, chunk_bytes)
        return [Chunk(path, fmt, s, min(s + chunk_bytes, size), min(chunk_bytes, size - s)) for s in starts]
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq

            with _open(path) as f:
                meta = pq.ParquetFile(f).metadata
        except Exception:  # unreadable: one chunk, whose reader reports the error
            return [Chunk(path, fmt, nbytes=size)]
        total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) or 1
        out, start, acc = [], 0, 0
        for i in range(meta.num_row_groups):  # consecutive row groups, ~chunk_bytes (uncompressed) each
            acc += meta.row_group(i).total_byte_size
            if acc >= chunk_bytes or i == meta.num_row_groups - 1:
                out.append(Chunk(path, fmt, start, i + 1, size * acc // total))
                start, acc = i + 1, 0
        return out or [Chunk(path, fmt, nbytes=size)]
    return [Chunk(path, fmt, nbytes=size)]


def read_documents(path: str | os.PathLike) -> Iterator[Document | Skip | FileError]:
    """Every document of one file (any supported format), with bad records as :class:`Skip` items."""
    chunk = Chunk(os.fspath(path), detect_format(path), nbytes=0)
    yield from ChunkReader(chunk)


class ChunkReader:
    """Iterates one chunk; afterwards ``lines`` is the number of physical lines (or rows) it covered.

    ``progress(nbytes)`` is called as on-disk bytes are consumed, for a progress bar.
    """

    def __init__(self, chunk: Chunk, progress: Callable[[int], None] | None = None) -> None:
        self.chunk = chunk
        self.lines = 0
        self._progress = progress
        self._reported = 0

    def __iter__(self) -> Iterator[Document | Skip | FileError]:
        read = self._parquet if self.chunk.format == "parquet" else self._jsonl
        try:
            yield from read()
        finally:
            self._report(self.chunk.nbytes)  # account the whole chunk, whatever happened

    def _report(self, done: int) -> None:
        done = min(done, self.chunk.nbytes)
        if self._progress is not None and done > self._reported:
            self._progress(done - self._reported)
        self._reported = max(self._reported, done)

    # -- JSON lines -------------------------------------------------------------------------------
    def _jsonl(self) -> Iterator[Document | Skip | FileError]:
        c = self.chunk
        try:
            raw = _open(c.path)  # closed below, after the stream that wraps it
        except OSError as e:
            yield FileError("unreadable", 0, f"{type(e).__name__}: {e.strerror or e}")
            return
        with raw:
            try:
                stream, limit = self._open_stream(raw)
            except (OSError, ValueError, ImportError) as e:
                yield FileError("unreadable", 0, f"{type(e).__name__}: {e}")
                return
            pos = self.chunk.start  # offset of the next line (the chunk start may have moved to a line start)
            while True:
                try:
                    line = stream.readline()
                except (EOFError, OSError, zlib.error, ValueError) as e:
                    yield FileError("truncated", self.lines, f"{type(e).__name__}: {e}")
                    return
                if not line or (limit is not None and pos >= limit):
                    return
                pos += len(line)
                self.lines += 1
                if self.lines % 256 == 0:
                    self._report(raw.tell() - c.start)
                if line.isspace():
                    continue  # blank lines are not records (they still count for line numbers)
                yield _parse_line(line, self.lines)

    def _open_stream(self, raw) -> tuple[io.BufferedIOBase, int | None]:
        c = self.chunk
        if c.format == "gzip":
            return gzip.GzipFile(fileobj=raw, mode="rb"), None
        if c.format == "zstd":
            return io.BufferedReader(_ZstdRaw(raw), _BLOCK), None
        stream = io.BufferedReader(raw, _BLOCK)
        if c.start > 0:  # a line starting before c.start belongs to the previous chunk
            stream.seek(c.start - 1)
            if stream.read(1) != b"\n":
                skipped = stream.readline()
                c = Chunk(c.path, c.format, c.start + len(skipped), c.stop, c.nbytes)
                self.chunk = c
        return stream, c.stop

    # -- Parquet ----------------------------------------------------------------------------------
    def _parquet(self) -> Iterator[Document | Skip | FileError]:
        c = self.chunk
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(_open(c.path))
            names = pf.schema_arrow.names
            if "text" not in names:
                raise ValueError(f"no 'text' column (columns: {', '.join(names)})")
            text_type = pf.schema_arrow.field("text").type
            if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
                raise ValueError(f"'text' column has type {text_type}, expected string")
        except Exception as e:
            yield FileError("unreadable", 0, f"{type(e).__name__}: {e}")
            return
        cols = ["text"] + (["id"] if "id" in names else [])
        stop = pf.metadata.num_row_groups if c.stop is None else c.stop
        for rg in range(c.start, stop):
            try:
                table = pf.read_row_group(rg, columns=cols)
                # As bytes, so one row of invalid UTF-8 is one skipped record, not a failed batch.
                texts = table.column("text").cast(pa.large_binary()).to_pylist()
                ids = table.column("id").to_pylist() if "id" in cols else [None] * len(texts)
            except Exception as e:
                yield FileError("truncated", self.lines, f"row group {rg}: {type(e).__name__}: {e}")
                return
            for raw_text, rid in zip(texts, ids, strict=True):
                self.lines += 1
                row = self.lines
                if raw_text is None:
                    yield Skip("missing_text", row, "'text' is null")
                    continue
                try:
                    text = raw_text.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Skip("invalid_utf8", row, str(e))
                    continue
                yield _document(text, rid, row)
            self._report(c.nbytes * (rg + 1 - c.start) // max(stop - c.start, 1))


def _parse_line(line: bytes, lineno: int) -> Document | Skip:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skip("invalid_utf8", lineno, str(e))
    try:
        record = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or a number too long for int()
        return Skip("malformed_json", lineno, str(e))
    if not isinstance(record, dict):
        return Skip("malformed_json", lineno, f"a JSON {type(record).__name__}, not an object")
    value = record.get("text")
    if not isinstance(value, str):
        detail = "no 'text' field" if "text" not in record else f"'text' is {type(value).__name__}"
        return Skip("missing_text", lineno, detail)
    if "\\u" in text and _has_lone_surrogate(value):  # only JSON escapes can smuggle these in
        return Skip("invalid_utf8", lineno, "'text' contains a lone UTF-16 surrogate escape")
    return _document(value, record.get("id"), lineno)


def _document(text: str, rid, lineno: int) -> Document | Skip:
    text = text.strip()
    if not text:
        return Skip("empty_text", lineno, "'text' is empty or whitespace")
    return Document(text, "" if rid is None else str(rid), lineno)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _ZstdRaw(io.RawIOBase):
    """Multi-frame zstd decompression that raises ``EOFError`` on truncation.

    ``zstandard``'s stream reader silently returns EOF for a truncated stream, which would lose the
    tail without a word; here a frame that has started but not finished at end of input is an error.
    """

    def __init__(self, raw) -> None:
        try:
            import zstandard
        except ImportError as e:
            raise ImportError(
                "reading .zst inputs needs the 'zstandard' package (pip install zstandard)"
            ) from e
        self._zstd = zstandard
        self._raw = raw
        self._new_frame()
        self._buf = b""

    def _new_frame(self) -> None:
        self._dec = self._zstd.ZstdDecompressor().decompressobj()
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            data = self._raw.read(_BLOCK)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ended before the end of its frame")
                return 0
            self._buf = self._feed(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            try:
                out.append(self._dec.decompress(data))
            except self._zstd.ZstdError as e:
                raise OSError(f"corrupt zstd data: {e}") from e
            if not self._dec.eof:
                break
            data = self._dec.unused_data
            self._new_frame()
        return b"".join(out)

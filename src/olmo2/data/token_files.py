"""Token files: flat little-endian uint32 arrays (the Dolma/OLMo layout, no ``.npy`` header), plus sidecars.

``part-SSSSS-NNNNN.npy`` (shard S, file N) holds concatenated documents, each ending in EOS;
``part-SSSSS-NNNNN.csv.gz`` has one ``start,end,id,src,loc`` row per document (the Dolma toolkit's
metadata format: token range, end exclusive; source document id, file and line); ``manifest.json``
(``manifest-SSSSS-of-NNNNN.json`` per shard of a sharded job) describes the files and the job.

Readers need none of the sidecars: any raw uint32 file works, under any name, including files written
by the Dolma toolkit. Writers make a file visible only once it is complete (temporary name in the same
directory, fsync, rename), so a reader or a re-run never sees half a file.

This module is the one place that knows the layout (``DTYPE``, ``count_tokens``, ``read_tokens``);
mixes, the loader and the tokenizer go through it. Readers also take ``s3://``, ``gs://`` and
``http(s)://`` URLs (``olmo2.storage``); writers write local files.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmo2 import storage

__all__ = [
    "DTYPE",
    "DocumentSpan",
    "TokenFile",
    "TokenFileError",
    "TokenDirWriter",
    "TokenFileWriter",
    "check_manifests",
    "count_tokens",
    "document_spans",
    "list_token_files",
    "manifest_name",
    "manifest_totals",
    "metadata_path",
    "open_checkpoint",
    "read_manifest",
    "read_tokens",
    "write_json_atomic",
]

DTYPE = np.dtype("<u4")
EOS_TOKEN_ID = 100257
MANIFEST_FORMAT = "olmo2.token-files"
MANIFEST_VERSION = 2  # 2: inputs carry mtime_ns and sha256, and the fingerprint no sizes
_NPY_MAGIC = b"\x93NUMPY"


class TokenFileError(ValueError):
    """A token file, manifest or output directory that cannot be used as it is."""


def count_tokens(path: str | os.PathLike) -> int:
    """The tokens in a token file (path or URL), from its size alone (no header to read), refusing a
    partial token. A URL's size comes from its listing, cached for the process."""
    size = storage.size(path) if storage.is_remote(path) else os.path.getsize(path)
    if size % DTYPE.itemsize:
        raise TokenFileError(f"{path}: {size} bytes is not a whole number of uint32 tokens")
    return size // DTYPE.itemsize


def read_tokens(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a raw uint32 token file, memory-mapped read-only (an empty file gives an empty array).

    A URL is read whole into memory, or memory-mapped from its copy in ``OLMO2_DATA_CACHE_DIR``.
    """
    if storage.is_remote(path):
        if storage.cache_dir() is None:
            data = storage.read_bytes(path) if count_tokens(path) else b""
            _refuse_npy_header(path, data[: len(_NPY_MAGIC)])
            return np.frombuffer(data, dtype=DTYPE)
        count_tokens(path)  # refuses a partial token, naming the URL
        path = storage.local_copy(path, storage.cache_dir())
    path = Path(path)
    if count_tokens(path) == 0:
        return np.zeros(0, DTYPE)
    with open(path, "rb") as f:
        _refuse_npy_header(path, f.read(len(_NPY_MAGIC)))
    return np.memmap(path, dtype=DTYPE, mode="r")


def _refuse_npy_header(path, head: bytes) -> None:
    if head == _NPY_MAGIC:  # as uint32 that would be token 0x554E4D93, far past any vocab
        raise TokenFileError(
            f"{path} has a NumPy .npy header; token files are raw uint32 arrays "
            "(write them with ndarray.tofile, not numpy.save)"
        )


def metadata_path(path: str | os.PathLike) -> Path | str:
    """The Dolma-style metadata sidecar of a token file: ``x.npy`` -> ``x.csv.gz`` (a URL stays a URL)."""
    if storage.is_remote(path):
        return path[: -len(".npy")] + ".csv.gz" if path.endswith(".npy") else path + ".csv.gz"
    path = Path(path)
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    return path.with_name(stem + ".csv.gz")


@dataclass(frozen=True)
class DocumentSpan:
    start: int  # first token
    end: int  # one past the document's EOS
    id: str = ""
    src: str = ""
    loc: int = 0  # line (JSON lines) or row (Parquet) in src


def document_spans(path: str | os.PathLike, eos_token_id: int = EOS_TOKEN_ID) -> list[DocumentSpan]:
    """The documents of a token file: from its ``.csv.gz`` sidecar, else found by the EOS after each one.

    The sidecar has ``start,end,id,src,loc`` rows (ours, the Dolma toolkit's) or ``start,end`` rows
    (OLMo-core's ``write_document_indices``). The fallback serves raw files without metadata; it
    splits a document that contains EOS as text.
    """
    meta = metadata_path(path)
    if storage.is_remote(meta):
        sidecar = storage.glob(meta)  # empty when there is none
        raw = io.BytesIO(storage.read_bytes(meta)) if sidecar else None
    else:
        raw = meta if meta.is_file() else None
    if raw is not None:
        with gzip.open(raw, "rt", encoding="utf-8", newline="") as f:
            return _read_spans(meta, csv.reader(f), count_tokens(path))
    tokens = read_tokens(path)
    ends = (np.flatnonzero(tokens == eos_token_id) + 1).tolist()
    if len(tokens) and (not ends or ends[-1] != len(tokens)):
        ends.append(len(tokens))  # a trailing document without EOS
    return [DocumentSpan(s, e) for s, e in zip([0, *ends[:-1]], ends, strict=True)]


def _read_spans(meta: Path | str, rows: Iterable[list[str]], n_tokens: int) -> list[DocumentSpan]:
    """Metadata rows -> spans, refusing a row that is malformed or points outside the token file."""
    spans = []
    for line, row in enumerate(rows, 1):
        try:
            if len(row) not in (2, 5):
                raise ValueError(f"{len(row)} columns, expected start,end or start,end,id,src,loc")
            span = DocumentSpan(int(row[0]), int(row[1]))
            if len(row) == 5:
                span = DocumentSpan(span.start, span.end, row[2], row[3], int(row[4] or 0))
            if not 0 <= span.start < span.end <= n_tokens:
                raise ValueError(f"span {span.start},{span.end} is not inside the file's {n_tokens} tokens")
        except ValueError as e:
            raise TokenFileError(f"{meta}:{line}: {e}") from None
        spans.append(span)
    return spans


class TokenFile:
    """One token file (path or URL): lazily memory-mapped tokens and its documents."""

    def __init__(self, path: str | os.PathLike, eos_token_id: int = EOS_TOKEN_ID) -> None:
        self.path = path if storage.is_remote(path) else Path(path)
        self.eos_token_id = eos_token_id
        self._tokens: np.ndarray | None = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = read_tokens(self.path)
        return self._tokens

    def __len__(self) -> int:
        return count_tokens(self.path)

    def spans(self) -> list[DocumentSpan]:
        return document_spans(self.path, self.eos_token_id)

    def documents(self) -> Iterable[np.ndarray]:
        tokens = self.tokens
        for span in self.spans():
            yield tokens[span.start : span.end]

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self)})"


def manifest_name(shard: int = 0, num_shards: int = 1) -> str:
    return "manifest.json" if num_shards == 1 else f"manifest-{shard:05d}-of-{num_shards:05d}.json"


def _manifest_files(directory: Path | str) -> list[Path] | list[str]:
    if storage.is_remote(directory):
        return storage.glob(f"{directory.rstrip('/')}/manifest*.json")
    return sorted(p for p in directory.glob("manifest*.json") if p.is_file())


def _load_manifest(path: Path | str) -> dict:
    """One manifest file, refused unless olmo2 wrote it (any other ``manifest*.json`` is not ours)."""
    try:
        raw = storage.read_bytes(path) if storage.is_remote(path) else path.read_bytes()
        m = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as e:
        raise TokenFileError(f"{path}: unreadable manifest: {e}") from e
    if m.get("format") != MANIFEST_FORMAT:
        raise TokenFileError(f"{path}: not an olmo2 token-file manifest (format {m.get('format')!r})")
    return m


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of a token directory, shards merged; None when it has none (e.g. Dolma output).

    Merged: ``files`` and ``inputs`` concatenated in shard order, ``totals`` summed, ``complete`` only
    if every shard manifest present is; ``shards`` lists the shard indices found.
    """
    paths = _manifest_files(directory if storage.is_remote(directory) else Path(directory))
    if not paths:
        return None
    manifests = [_load_manifest(p) for p in paths]
    if len(manifests) == 1:
        return manifests[0]
    counts = {tuple(m["shard"])[1] for m in manifests}
    tokenizers = {m["tokenizer"]["sha256"] for m in manifests}
    listings = {m.get("fingerprint", {}).get("all_inputs_sha256") for m in manifests}
    if len(listings) > 1:
        raise TokenFileError(
            f"{directory}: the shards saw different input lists, so they may overlap or miss files"
        )
    if len(counts) > 1 or len(tokenizers) > 1:
        raise TokenFileError(
            f"{directory}: manifests of different jobs (shard counts {counts}, tokenizers {tokenizers})"
        )
    merged = {k: v for k, v in manifests[0].items() if k not in ("files", "inputs", "totals", "resume")}
    merged["shards"] = [m["shard"][0] for m in manifests]
    merged["complete"] = all(m["complete"] for m in manifests)
    merged["files"] = [f for m in manifests for f in m["files"]]
    merged["inputs"] = [i for m in manifests for i in m["inputs"]]
    totals: dict = {}
    for m in manifests:
        for key, value in m["totals"].items():
            if isinstance(value, dict):
                sub = totals.setdefault(key, {})
                for k, v in value.items():
                    sub[k] = sub.get(k, 0) + v
            else:
                totals[key] = totals.get(key, 0) + value
    merged["totals"] = totals
    return merged


def check_manifests(paths: Iterable[str | os.PathLike], *, eos_token_id: int | None, vocab_size: int) -> str:
    """Refuse token files whose manifests say they were tokenized for another model, before training.

    Every manifest in the directories of ``paths`` must give the model's ``eos_token_id`` (None: not
    checked) and a ``tokenizer.vocab_size`` of at most ``vocab_size`` (older manifests lack it), and
    all must name one tokenizer. Files without a manifest (Dolma/OLMo-core output) are taken as they
    are. Returns one line for the run's log.
    """
    directories = list(
        dict.fromkeys(storage.parent(p) if storage.is_remote(p) else Path(p).parent for p in paths)
    )
    first: tuple[Path, str] | None = None  # the first manifest's path and tokenizer hash
    with_manifest = 0
    for directory in directories:
        manifests = _manifest_files(directory)
        with_manifest += bool(manifests)
        for p in manifests:
            m = _load_manifest(p)
            eos, tokenizer = m.get("eos_token_id"), m.get("tokenizer", {})
            if eos_token_id is not None and eos is not None and eos != eos_token_id:
                raise TokenFileError(
                    f"{p}: eos_token_id is {eos} but the model's eos_token_id is {eos_token_id}, so the "
                    "model would not see where documents end; tokenize with the model's tokenizer, or set "
                    f"the model's eos_token_id to {eos} if the model is meant for this tokenizer"
                )
            vocab = tokenizer.get("vocab_size")
            if vocab is not None and vocab > vocab_size:
                raise TokenFileError(
                    f"{p}: tokenizer.vocab_size is {vocab} but the model's vocab_size is {vocab_size}, so "
                    f"ids up to {vocab - 1} may fall outside the model's vocabulary; tokenize with the "
                    f"model's tokenizer, or give the model a vocab_size of at least {vocab}"
                )
            sha = tokenizer.get("sha256")
            if first is None:
                first = (p, sha)
            elif sha != first[1]:
                raise TokenFileError(
                    f"{p}: tokenizer.sha256 is {sha} but {first[0]} has {first[1]}: ids of different "
                    "tokenizers need not mean the same text, so they cannot be trained on together; "
                    "tokenize every source with the model's tokenizer (olmo2 tokenize --tokenizer PATH)"
                )
    if first is None:
        return (
            f"token files: no manifest in their {len(directories)} directories (raw Dolma/OLMo files?), "
            "so their tokenizer is not checked against the model"
        )
    return (
        f"token files: the manifests of {with_manifest} of {len(directories)} directories match the model "
        f"(tokenizer sha256 {str(first[1])[:12]})"
    )


def list_token_files(
    paths_or_globs: Sequence[str | os.PathLike] | str | os.PathLike,
) -> list[Path | str]:
    """Token files from files, globs and directories, in order, each checked to be whole uint32 arrays.

    A directory gives the files its manifest(s) list, else every ``*.npy`` in it (Dolma output), sorted.
    URLs stay strings (``s3://b/x.npy``); local files are Paths.
    """
    if isinstance(paths_or_globs, (str, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    out: list[Path | str] = []
    seen: set[str] = set()
    for raw in paths_or_globs:
        spec = os.fspath(raw)
        if storage.is_remote(spec):
            folder = not storage.has_magic(spec) and storage.is_folder(spec)
            manifest = read_manifest(spec) if folder else None
            if manifest is not None:
                matches = [f"{spec.rstrip('/')}/{f['name']}" for f in manifest["files"]]
            else:
                matches = storage.find(spec, "*.npy")
            if not matches:
                raise FileNotFoundError(f"no token files in {spec}")
            for m in matches:
                count_tokens(m)  # a missing object or a partial token, named now rather than in training
                if m not in seen:
                    seen.add(m)
                    out.append(m)
            continue
        if os.path.isdir(spec):
            manifest = read_manifest(spec)
            if manifest is not None:
                matches = [os.path.join(spec, f["name"]) for f in manifest["files"]]
            else:
                matches = sorted(glob.glob(os.path.join(glob.escape(spec), "*.npy")))
        elif glob.has_magic(spec):
            matches = sorted(m for m in glob.glob(spec, recursive=True) if os.path.isfile(m))
        else:
            matches = [spec]
        if not matches:
            raise FileNotFoundError(f"no token files in {spec}")
        for m in matches:
            if not os.path.isfile(m):
                raise FileNotFoundError(f"token file {m} does not exist")
            count_tokens(m)  # refuses a partial token now rather than at training time
            real = os.path.realpath(m)
            if real not in seen:
                seen.add(real)
                out.append(Path(m))
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON so that ``path`` holds either the old or the new content, never a mix."""
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class TokenFileWriter:
    """Writes one token file and its ``.csv.gz`` under temporary names; ``commit()`` makes both visible.

    The gzip header carries no name or time, so the same documents always give the same bytes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta_path = metadata_path(self.path)
        self._tmp, self._meta_tmp = _tmp_name(self.path), _tmp_name(self.meta_path)
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit() / abort()
        self._meta_raw = open(self._meta_tmp, "wb")  # noqa: SIM115
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._meta_raw, mtime=0)
        self._meta = io.TextIOWrapper(self._gz, encoding="utf-8", newline="")
        self._csv = csv.writer(self._meta, lineterminator="\n")
        self._sha = hashlib.sha256()
        self.tokens = 0
        self.documents = 0
        self.sources: list[str] = []

    def write(
        self, tokens: np.ndarray, ends: np.ndarray, ids: Sequence[str], src: str, locs: Sequence[int]
    ) -> None:
        """Append documents: ``tokens`` concatenated, ``ends`` each document's end within ``tokens``."""
        data = np.ascontiguousarray(tokens, dtype=DTYPE)
        self._f.write(memoryview(data).cast("B"))
        self._sha.update(memoryview(data).cast("B"))
        ends = np.asarray(ends, dtype=np.int64) + self.tokens
        starts = np.concatenate([[self.tokens], ends[:-1]]) if len(ends) else ends
        self._csv.writerows(zip(starts.tolist(), ends.tolist(), ids, [src] * len(ends), locs, strict=True))
        self.tokens += len(data)
        self.documents += len(ends)
        if len(ends) and (not self.sources or self.sources[-1] != src):
            self.sources.append(src)

    def commit(self) -> dict:
        """fsync and rename into place (metadata first, so a visible token file always has it)."""
        self._meta.close()  # closes the gzip stream; the raw file stays open
        for f in (self._meta_raw, self._f):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        os.replace(self._meta_tmp, self.meta_path)
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)
        return {
            "name": self.path.name,
            "metadata": self.meta_path.name,
            "tokens": self.tokens,
            "documents": self.documents,
            "sha256": self._sha.hexdigest(),
            "sources": list(dict.fromkeys(self.sources)),
        }

    def abort(self) -> None:
        for f in (self._meta, self._meta_raw, self._f):
            with contextlib.suppress(Exception):  # best effort: we are already failing
                f.close()
        for p in (self._tmp, self._meta_tmp):
            p.unlink(missing_ok=True)


def manifest_totals(m: dict) -> dict:
    """Job totals from a manifest's per-file and per-input entries."""
    skipped: dict[str, int] = {}
    errors: dict[str, int] = {}
    for inp in m["inputs"]:
        for k, v in inp["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        for e in inp["errors"]:  # "truncated after line 7: ..." / "unreadable: ..."
            reason = e.split(" ", 1)[0].rstrip(":")
            errors[reason] = errors.get(reason, 0) + 1
    read = sum(i["documents_read"] for i in m["inputs"])
    written = sum(i["documents_written"] for i in m["inputs"])
    return {
        "files": len(m["files"]),
        "tokens": sum(f["tokens"] for f in m["files"]),
        "documents_read": read,
        "documents_written": written,
        "documents_skipped": read - written,
        "skipped": dict(sorted(skipped.items())),
        "file_errors": dict(sorted(errors.items())),
        "input_files": len(m["inputs"]),
        "input_bytes": sum(i["bytes"] for i in m["inputs"]),
    }


def open_checkpoint(
    out_dir: Path, shard: tuple[int, int], fingerprint: dict, inputs: list[dict]
) -> dict | None:
    """A shard's manifest to resume from (None: start afresh), refusing directories of other jobs.

    Another job is: a manifest with another shard count, a manifest of this shard for other input
    paths or settings (``fingerprint``), or part files of this shard without a manifest. The same
    job whose inputs changed since (``inputs``: ``path``, ``bytes``, ``mtime_ns``, ``sha256`` of each,
    as ``_input_entry`` records them), or whose manifest predates those fingerprints, starts afresh:
    this shard's files are deleted, with a note on stderr.
    """
    mine = out_dir / manifest_name(*shard)
    for p in _manifest_files(out_dir):
        m = json.loads(p.read_text(encoding="utf-8"))
        if m.get("format") != MANIFEST_FORMAT or list(m.get("shard", (0, 0)))[1] != shard[1]:
            raise TokenFileError(
                f"{out_dir} holds another job's output ({p.name}); use another output directory"
            )
    if not mine.is_file():
        if any(out_dir.glob(f"part-{shard[0]:05d}-*.npy")):
            raise TokenFileError(
                f"{out_dir} has part-{shard[0]:05d}-*.npy files but no {mine.name}; use another output directory"
            )
        return None
    m = json.loads(mine.read_text(encoding="utf-8"))
    old = m.get("version", 1) < 2  # before input fingerprints: its fingerprint held the sizes instead
    settings = ("tokenizer", "max_tokens_per_file", "chunk_bytes", "eos_token_id")
    same_job = (
        [i["path"] for i in m["inputs"]] == fingerprint["inputs"]
        and all(m["fingerprint"].get(k) == fingerprint[k] for k in settings)
        if old
        else m.get("fingerprint") == fingerprint
    )
    if not same_job:
        raise TokenFileError(
            f"{mine} was written for other inputs or settings (input files, tokenizer, max tokens per "
            "file); use another output directory or delete it"
        )
    keys = ("bytes", "mtime_ns", "sha256")
    changed = [
        new["path"]
        for was, new in zip(m["inputs"], inputs, strict=True)
        if old or any(was.get(k) != new[k] for k in keys)
    ]
    if changed:
        why = (
            "was written before olmo2 recorded input fingerprints"
            if old
            else f"lists {len(changed)} input(s) changed since (size, mtime or content), e.g. {changed[0]}"
        )
        print(f"{mine} {why}: tokenizing shard {shard[0]} again", file=sys.stderr, flush=True)
        for pattern in (f"part-{shard[0]:05d}-*.npy", f"part-{shard[0]:05d}-*.csv.gz"):
            for p in out_dir.glob(pattern):
                p.unlink()
        mine.unlink()  # last: a re-run after a kill in between finds the same manifest and goes on
        return None
    for f in m["files"]:
        p = out_dir / f["name"]
        if not p.is_file() or p.stat().st_size != f["tokens"] * DTYPE.itemsize:
            raise TokenFileError(
                f"{p} is listed as finished in {mine.name} but is missing or has another size"
            )
    return m


class TokenDirWriter:
    """Rolls documents into ``part-SSSSS-NNNNN.npy`` files of at most ``max_tokens``, cut between documents.

    The ``manifest`` doubles as the checkpoint: after each finished file it is rewritten with the
    position (``unit``, ``document``) of the first document not yet in a finished file, so a killed job
    resumes there; ``finish()`` marks it complete.
    """

    def __init__(self, out_dir: Path, shard: tuple[int, int], manifest: dict, max_tokens: int) -> None:
        self.out_dir, self.shard, self.manifest, self.max_tokens = Path(out_dir), shard, manifest, max_tokens
        self.writer: TokenFileWriter | None = None

    def save(self, resume: dict | None) -> None:
        """Write the manifest; ``resume=None`` marks the job complete."""
        self.manifest["resume"], self.manifest["complete"] = resume, resume is None
        self.manifest["totals"] = manifest_totals(self.manifest)
        write_json_atomic(self.out_dir / manifest_name(*self.shard), self.manifest)

    def add(self, tokens, lens, ids, src: str, locs, first: int, unit: int) -> None:
        """Append documents ``first..`` of a unit (``tokens`` concatenated, ``lens`` per document)."""
        offsets = np.concatenate([[0], np.cumsum(lens)])
        j, n = first, len(lens)
        while j < n:
            if self.writer is None:
                name = f"part-{self.shard[0]:05d}-{len(self.manifest['files']):05d}.npy"
                self.writer = TokenFileWriter(self.out_dir / name)
            room = self.max_tokens - self.writer.tokens
            k = int(np.searchsorted(offsets[j + 1 :] - offsets[j], room, side="right"))
            if k == 0 and self.writer.tokens == 0:
                k = 1  # a document longer than a whole file gets a file of its own
            if k:
                ends = offsets[j + 1 : j + k + 1] - offsets[j]
                self.writer.write(
                    tokens[offsets[j] : offsets[j + k]], ends, ids[j : j + k], src, locs[j : j + k]
                )
                j += k
            if j < n:  # the next document does not fit
                self.manifest["files"].append(self.writer.commit())
                self.writer = None
                self.save({"unit": unit, "document": j})

    def finish(self) -> None:
        if self.writer is not None:
            self.manifest["files"].append(self.writer.commit())
            self.writer = None
        self.save(None)

    def abort(self) -> None:
        """Drop the unfinished file (the checkpoint keeps everything before it)."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

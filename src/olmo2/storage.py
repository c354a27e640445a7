"""Remote files (``s3://``, ``gs://``, ``https://``, ``http://``) through fsspec: sizes, listings, ranged reads.

Training reads a token file one instance at a time, so the loader needs no more than a file's size
(listed once, then cached for the run) and byte ranges; it never downloads whole files unless a local
cache directory is set. A network read fails now and then, so ``read_range`` retries with exponential
backoff and, when it gives up, names the URL and byte range.

Settings come from the environment, so that subprocesses (training ranks) see the same ones:
``OLMO2_S3_ENDPOINT_URL`` (else ``AWS_ENDPOINT_URL``) for S3-compatible stores (MinIO, R2, Ceph),
``OLMO2_STORAGE_OPTIONS`` (JSON ``{"s3": {...}, "https": {...}}``: fsspec options per protocol) and
``OLMO2_DATA_CACHE_DIR`` (whole files kept on local disk after their first read). Credentials are
the usual ones of each store (``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "RemoteReadError",
    "cache_dir",
    "filesystem",
    "find",
    "glob",
    "has_magic",
    "is_remote",
    "is_folder",
    "local_copy",
    "open_file",
    "parent",
    "read_bytes",
    "read_range",
    "size",
    "upload_dir",
]

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
RETRIES = 4  # attempts after the first
BACKOFF_S = 0.5  # first wait; doubles per attempt (0.5 + 1 + 2 + 4 s in all)

_sizes: dict[str, int] = {}
_sizes_lock = threading.Lock()


class RemoteReadError(OSError):
    """A remote read that still failed after every retry (names the URL and byte range)."""


def is_remote(path) -> bool:
    """True for a URL of a supported remote store; local paths (and ``file://``) are not remote."""
    return isinstance(path, str) and "://" in path and urlsplit(path).scheme in REMOTE_SCHEMES


def parent(url: str) -> str:
    """The "directory" of a URL: everything before its last ``/``."""
    return url.rstrip("/").rsplit("/", 1)[0]


def _options(protocol: str) -> dict:
    """fsspec options for ``protocol``: ``OLMO2_STORAGE_OPTIONS`` plus the S3 endpoint, if set."""
    try:
        options = dict(json.loads(os.environ.get("OLMO2_STORAGE_OPTIONS") or "{}").get(protocol, {}))
    except ValueError as e:
        raise ValueError(f"OLMO2_STORAGE_OPTIONS is not JSON: {e}") from None
    endpoint = os.environ.get("OLMO2_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if protocol == "s3" and endpoint:
        options.setdefault("endpoint_url", endpoint)
    return options


def filesystem(url: str):
    """``(fsspec filesystem, path within it)`` for a URL (fsspec caches the instances)."""
    import fsspec.core  # here: ~0.1 s that every local-only command would pay at import

    return fsspec.core.url_to_fs(url, **_options(urlsplit(url).scheme))


def _url(protocol: str, path: str) -> str:
    return path if path.startswith(("http://", "https://")) else f"{protocol}://{path}"


def size(url: str) -> int:
    """Bytes of a remote file: from the listing that found it, else one metadata request (then cached)."""
    with _sizes_lock:
        known = _sizes.get(url)
    if known is None:
        fs, path = filesystem(url)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url} does not exist") from None
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{url} is a directory, not a file")
        known = int(info["size"])
        with _sizes_lock:
            _sizes[url] = known
    return known


def is_folder(url: str) -> bool:
    """A URL ending in ``/``, or an object-store prefix that holds objects. Over HTTP only the former:
    asking a server whether a file is a folder means downloading it (fsspec parses it for links)."""
    if url.endswith("/"):
        return True
    if urlsplit(url).scheme in ("http", "https"):
        return False
    fs, path = filesystem(url)
    return fs.isdir(path)


def glob(pattern: str) -> list[str]:
    """Sorted URLs of the files matching ``pattern``; their sizes are cached from the same listing.

    Over HTTP this needs an HTML index page per directory (fsspec parses its links); S3 and GCS list.
    """
    fs, path = filesystem(pattern)
    protocol = urlsplit(pattern).scheme
    found = fs.glob(path, detail=True)
    files = {_url(protocol, p): int(info["size"]) for p, info in found.items() if info.get("type") == "file"}
    with _sizes_lock:
        _sizes.update(files)
    return sorted(files)


def has_magic(url: str) -> bool:
    return any(c in url for c in "*?[")


def find(spec: str, folder_pattern: str = "*") -> list[str]:
    """A URL, glob or folder -> sorted file URLs (a folder: its files matching ``folder_pattern``)."""
    if has_magic(spec):
        return glob(spec)
    if is_folder(spec):
        return glob(f"{spec.rstrip('/')}/{folder_pattern}")
    return [spec]


def read_range(url: str, start: int, length: int, *, retries: int | None = None) -> bytes:
    """``length`` bytes from ``start``: one ranged request, retried with backoff on a transient error.

    A missing object (FileNotFoundError) or no permission is not transient and raises at once; a
    short answer (an object that changed, a server ignoring ``Range``) counts as a failed attempt.
    """
    retries = RETRIES if retries is None else retries
    fs, path = filesystem(url)
    where = f"{url} bytes [{start}, {start + length})"
    for attempt in range(retries + 1):
        try:
            data = fs.cat_file(path, start=start, end=start + length)
            if len(data) == length:
                return data
            error: Exception = OSError(f"got {len(data)} bytes")
        except (FileNotFoundError, PermissionError) as e:
            raise type(e)(f"{where}: {e}") from e
        except Exception as e:  # network and server errors differ by store and client library
            error = e
        if attempt < retries:
            time.sleep(BACKOFF_S * 2**attempt)
    raise RemoteReadError(f"{where}: failed {retries + 1} times, last: {type(error).__name__}: {error}")


def open_file(url: str, block_size: int = 8 << 20):
    """A seekable binary file object over a remote file (fsspec reads it ``block_size`` bytes at a time)."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb", block_size=block_size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} does not exist") from None


def read_bytes(url: str) -> bytes:
    """A whole (small) remote file: a manifest, a metadata sidecar, an instance-sized token file."""
    n = size(url)
    return read_range(url, 0, n) if n else b""


def cache_dir() -> Path | None:
    """``OLMO2_DATA_CACHE_DIR``, if set: where ``local_copy`` keeps whole remote files."""
    value = os.environ.get("OLMO2_DATA_CACHE_DIR")
    return Path(value) if value else None


def local_copy(url: str, directory: str | os.PathLike) -> Path:
    """The file downloaded once to ``directory/<scheme>/<host>/<path>`` (a temp name, then a rename).

    A copy whose size matches the remote one is reused.
    """
    parts = urlsplit(url)
    local = Path(directory, parts.scheme, parts.netloc, parts.path.lstrip("/"))
    if local.is_file() and local.stat().st_size == size(url):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fs, path = filesystem(url)
    try:
        fs.get_file(path, str(tmp))
        if tmp.stat().st_size != size(url):
            raise RemoteReadError(f"{url}: downloaded {tmp.stat().st_size} bytes, expected {size(url)}")
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return local


def upload_dir(local: str | os.PathLike, url: str) -> list[str]:
    """Copy the visible files of a local folder (not dot-files) to ``url/``; returns their URLs."""
    fs, path = filesystem(url)
    protocol = urlsplit(url).scheme
    sent = []
    for f in sorted(Path(local).iterdir()):
        if f.is_file() and not f.name.startswith("."):
            target = f"{path.rstrip('/')}/{f.name}"
            fs.put_file(str(f), target)
            sent.append(_url(protocol, target))
    with _sizes_lock:  # an upload replaces whatever size was listed before
        for u in sent:
            _sizes.pop(u, None)
    return sent

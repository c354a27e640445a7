"""Token files at s3:// (a local moto server) and http:// (a local http.server) read like local ones."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from olmo2 import storage
from olmo2.config import ConfigError, from_dict
from olmo2.data.loader import TrainLoader, ValidationLoader, batch_hash
from olmo2.data.mix import MixConfig, resolve_mix
from olmo2.data.token_files import TokenFile, count_tokens, list_token_files, read_tokens

SEQ = 8
BUCKET = "olmo2-test"


def _bench_loader():
    """benchmarks/bench_loader.py, whose range-serving http.server the tests share."""
    path = Path(__file__).parents[2] / "benchmarks" / "bench_loader.py"
    spec = importlib.util.spec_from_file_location("bench_loader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """``(folder, base URL, request log)`` of an http.server on 127.0.0.1 serving the folder."""
    root = tmp_path_factory.mktemp("http")
    server, base, log = _bench_loader().serve_folder(root)
    yield root, base, log
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3():
    """A boto3 client of a moto S3 server on 127.0.0.1 with one bucket; the endpoint is in the env."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    env = {
        "OLMO2_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.env = env
        yield client
    server.stop()


def write_local(root: Path) -> Path:
    """Two sources; token value = 1000 * file number + position (as tests/data/test_loader.py)."""
    sizes = {"a": [5 * SEQ + 3, 7 * SEQ, 2 * SEQ + 7], "b": [11 * SEQ + 1, 4 * SEQ + 5]}
    k = 0
    for name, ns in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(ns):
            (1000 * k + np.arange(n)).astype("<u4").tofile(root / name / f"part-{i:02d}.npy")
            k += 1
    return root


def upload(s3, root: Path) -> str:
    """Every file under ``root`` to a fresh prefix of the bucket -> ``s3://bucket/prefix``."""
    prefix = uuid.uuid4().hex[:8]
    for p in sorted(root.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(root)}", Body=p.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def hashes(base: str, **loader_kw) -> list[str]:
    """Batch hashes of an epoch of a two-source mix (12 of 14 and of 15 instances) under ``base``."""
    sources = [{"name": n, "paths": [f"{base}/{n}/*.npy"], "share": 0.5} for n in ("a", "b")]
    mix = resolve_mix(from_dict(MixConfig, {"sources": sources, "total_tokens": 24 * SEQ, "seed": 3}), SEQ)
    loader = TrainLoader(mix, global_batch_size=4, seed=7, prefetch=0, **loader_kw)
    return [batch_hash(loader.batch_at(0, k)) for k in range(loader.steps_per_epoch)]


def test_is_remote():
    assert storage.is_remote("s3://b/k") and storage.is_remote("https://h/x.npy")
    assert not storage.is_remote("/data/x.npy") and not storage.is_remote(Path("s3:/b/k"))
    assert not storage.is_remote("file:///data/x.npy")


def test_s3_mix_gives_the_local_batches(s3, tmp_path, monkeypatch):
    local = write_local(tmp_path / "d")
    url = upload(s3, local)
    want = hashes(str(local))
    assert len(want) == 6
    calls, served = [], []
    real = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda *a, **k: calls.append(a) or real(*a, **k))
    server_log = logging.Handler()  # moto's werkzeug logs each request it serves
    server_log.emit = lambda record: served.append(record.getMessage())
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(server_log)
    try:
        assert hashes(url) == want
    finally:
        werkzeug.removeHandler(server_log)
        werkzeug.setLevel(logging.ERROR)
    assert len(calls) == 6 * 4  # one ranged read per instance, nothing else
    assert {length for _, _, length in calls} == {SEQ * 4}
    objects = [m for m in served if f"GET /{url[5:]}/" in m]  # GET /bucket/prefix/a/part-00.npy
    assert len(objects) == 6 * 4 and all('" 206 ' in m for m in objects)  # the server agrees
    assert sum("list-type=2" in m for m in served) == 2  # one listing per source glob
    # the sizes come from the listing and enter the fingerprint, like local ones
    mix_local = resolve_mix(
        from_dict(MixConfig, {"sources": [{"name": "a", "paths": [f"{local}/a/*.npy"]}]}), SEQ
    )
    mix_s3 = resolve_mix(from_dict(MixConfig, {"sources": [{"name": "a", "paths": [f"{url}/a/*.npy"]}]}), SEQ)
    assert mix_s3.fingerprint_parts() == mix_local.fingerprint_parts()
    assert mix_s3.files[0] == f"{url}/a/part-00.npy"


def test_http_mix_gives_the_local_batches_one_request_per_instance(http_root, tmp_path):
    root, base, log = http_root
    local = write_local(root / "h1")
    sources = [
        {"name": n, "paths": [f"{base}/h1/{n}/part-{i:02d}.npy" for i in range(3 if n == "a" else 2)]}
        for n in ("a", "b")
    ]
    mixes = {
        where: resolve_mix(
            from_dict(
                MixConfig,
                {
                    "sources": [
                        {
                            **s,
                            "paths": [
                                p.replace(base, str(root)) if where == "local" else p for p in s["paths"]
                            ],
                        }
                        for s in sources
                    ]
                },
            ),
            SEQ,
        )
        for where in ("local", "http")
    }
    loaders = {k: TrainLoader(m, global_batch_size=4, seed=7, prefetch=0) for k, m in mixes.items()}
    log.clear()
    got = [batch_hash(loaders["http"].batch_at(0, k)) for k in range(loaders["http"].steps_per_epoch)]
    assert got == [
        batch_hash(loaders["local"].batch_at(0, k)) for k in range(loaders["local"].steps_per_epoch)
    ]
    n = loaders["http"].steps_per_epoch * 4
    assert len(log) == n and all("bytes=" in r for r in log)  # one ranged GET per instance
    assert list_token_files(f"{base}/h1/b/part-01.npy") == [f"{base}/h1/b/part-01.npy"]
    missing = {"sources": [{"name": "a", "paths": [f"{base}/h1/a/nope.npy"]}]}
    with pytest.raises(ConfigError, match=f"sources\\[0\\] \\(a\\): {base}/h1/a/nope.npy does not exist"):
        resolve_mix(from_dict(MixConfig, missing), SEQ)
    assert local.is_dir()


def test_token_file_api_reads_urls(s3, tmp_path):
    local = write_local(tmp_path / "d")
    url = upload(s3, local)
    files = list_token_files(f"{url}/a")  # a folder: its *.npy
    assert files == [f"{url}/a/part-{i:02d}.npy" for i in range(3)]
    assert [count_tokens(f) for f in files] == [count_tokens(p) for p in sorted((local / "a").glob("*.npy"))]
    np.testing.assert_array_equal(read_tokens(files[1]), read_tokens(local / "a/part-01.npy"))
    tf = TokenFile(files[0], eos_token_id=5)
    assert [len(d) for d in tf.documents()] == [6, 37]  # file 0 holds 0..42: split after the "EOS" 5
    assert list_token_files(f"{url}/b/*.npy") == [f"{url}/b/part-00.npy", f"{url}/b/part-01.npy"]


def test_whole_files_cached_locally_when_a_cache_dir_is_set(s3, tmp_path, monkeypatch):
    local = write_local(tmp_path / "d")
    url = upload(s3, local)
    monkeypatch.setenv("OLMO2_DATA_CACHE_DIR", str(tmp_path / "cache"))
    assert hashes(url) == hashes(str(local))
    cached = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 5 and str(cached[0]).startswith(f"s3/{BUCKET}/")


def test_missing_and_truncated_objects_are_named_before_training(s3, tmp_path):
    url = upload(s3, write_local(tmp_path / "d"))
    s3.put_object(Bucket=BUCKET, Key=url.split("/", 3)[3] + "/bad/x.npy", Body=b"\0" * 4 * SEQ + b"\1\2")

    def resolve(path):
        return resolve_mix(from_dict(MixConfig, {"sources": [{"name": "a", "paths": [path]}]}), SEQ)

    with pytest.raises(ConfigError, match=f"{url}/a/nope.npy does not exist"):
        resolve(f"{url}/a/nope.npy")
    with pytest.raises(ConfigError, match=f"no token files match '{url}/zz/\\*.npy'"):
        resolve(f"{url}/zz/*.npy")
    with pytest.raises(ConfigError, match=f"{url}/bad/x.npy: 34 bytes is not a whole number"):
        resolve(f"{url}/bad/*.npy")
    with pytest.raises(ConfigError, match="validation: .*nope.npy does not exist"):
        ValidationLoader([f"{url}/nope.npy"], SEQ, 2)


def test_transient_errors_are_retried_persistent_ones_name_url_and_range(s3, tmp_path, monkeypatch):
    url = upload(s3, write_local(tmp_path / "d")) + "/a/part-01.npy"
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)
    fs, _ = storage.filesystem(url)
    real = fs.cat_file
    failures = {"left": 2}

    def flaky(path, start=None, end=None, **kw):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("connection reset by peer")
        return real(path, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", flaky)
    want = (1000 * 1 + np.arange(2 * SEQ, 3 * SEQ)).astype("<u4").tobytes()
    assert storage.read_range(url, 2 * SEQ * 4, SEQ * 4) == want  # two failures, then the data
    assert failures["left"] == 0
    failures["left"] = 100
    with pytest.raises(
        storage.RemoteReadError,
        match=rf"{url} bytes \[64, 96\): failed 5 times, last: "
        "ConnectionResetError: connection reset",
    ):
        storage.read_range(url, 2 * SEQ * 4, SEQ * 4)
    assert failures["left"] == 100 - 5


def test_a_short_answer_is_an_error(http_root):
    root, base, _ = http_root
    (root / "short.npy").write_bytes(b"\0" * 16)
    with pytest.raises(
        storage.RemoteReadError,
        match=r"short.npy bytes \[8, 24\): failed 1 times, last: "
        "OSError: got 8 bytes",
    ):
        storage.read_range(f"{base}/short.npy", 8, 16, retries=0)


def test_s3_endpoint_and_options_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OLMO2_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("OLMO2_STORAGE_OPTIONS", json.dumps({"s3": {"anon": True}, "https": {"x": 1}}))
    assert storage._options("s3") == {"anon": True, "endpoint_url": "http://minio:9000"}
    assert storage._options("https") == {"x": 1}
    monkeypatch.delenv("OLMO2_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://r2:1")
    assert storage._options("s3")["endpoint_url"] == "http://r2:1"
    monkeypatch.setenv("OLMO2_STORAGE_OPTIONS", "{bad")
    with pytest.raises(ValueError, match="OLMO2_STORAGE_OPTIONS is not JSON"):
        storage._options("s3")


@pytest.mark.slow  # ~20 s: three training runs in subprocesses
def test_mix_imported_from_an_olmo_core_list_trains_on_s3_and_resumes_like_local(
    s3, tmp_path, train_config_dict
):
    """Issue 14's whole path: an OLMo-core mix list imported with an ``s3://`` root (sizes read from the
    server), then ``olmo2 train`` subprocesses: the same losses and batches as the same list imported
    over the local folder, and again after a resume."""
    import subprocess
    import sys

    from olmo2.cli import main

    cfg = train_config_dict(run={"max_steps": 4}, checkpoint={"save_every": 2, "keep_last": 0})
    url = upload(s3, tmp_path / "data")
    files = sorted((tmp_path / "data" / "train").glob("*.npy"))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"all,train/{p.name}\n" for p in files))
    for name, root in (("local", tmp_path / "data"), ("s3", url)):
        assert (
            main(
                [
                    "mix",
                    "import",
                    str(listing),
                    "--root",
                    str(root),
                    "--out",
                    str(tmp_path / f"{name}.mix.yaml"),
                ]
            )
            == 0
        )
    env = {**os.environ, **s3.env, "PYTHONPATH": str(Path(storage.__file__).parents[1])}

    def run(name: str) -> tuple[list[tuple], str]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump({**cfg, "data": {**cfg["data"], "mix": str(tmp_path / f"{name}.mix.yaml")}})
        )
        cmd = [sys.executable, "-m", "olmo2.cli", "train", str(path), f"run.folder={tmp_path / name}"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["batch_hash"]) for r in map(json.loads, lines)], done.stderr

    local, _ = run("local")
    assert len(local) == 4 and run("s3")[0] == local
    shutil.rmtree(tmp_path / "s3/step4")  # as if killed before the last checkpoint: resume from step 2
    resumed, log = run("s3")
    assert "resumed from" in log and "step2" in log
    assert resumed == local


def test_tokenize_reads_s3_and_http_inputs_and_uploads_its_output(s3, http_root, tmp_path):
    """Inputs (JSON lines cut in byte ranges, .gz, Parquet) from S3 and HTTP, output to S3: same bytes."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from olmo2.data.tokenize import tokenize_documents
    from olmo2.tokenizer import load_tokenizer

    recs = [{"id": f"d{i}", "text": f"document {i}: " + "words " * (i % 7)} for i in range(60)]
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in recs)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(lines)
    (src / "b.jsonl.gz").write_bytes(gzip.compress(lines, mtime=0))
    pq.write_table(
        pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]}), src / "c.parquet"
    )
    (src / "notes.txt").write_text("not an input")
    url = upload(s3, src)
    http_dir, base, _ = http_root
    (http_dir / "d.jsonl").write_bytes(lines)
    tok = load_tokenizer()
    kw = {"tokenizer": tok, "progress": False, "chunk_bytes": 1000, "max_tokens_per_file": 500}

    local = tokenize_documents([src, http_dir / "d.jsonl"], tmp_path / "local", **kw)
    remote = tokenize_documents([url, f"{base}/d.jsonl"], f"{url}/tokens", **kw)
    assert remote.manifest == f"{url}/tokens/manifest.json" and remote.tokens == local.tokens > 0
    assert remote.documents_written == local.documents_written == 4 * 60
    files = list_token_files(f"{url}/tokens")  # through the uploaded manifest
    assert len(files) == len(local.files) > 1
    for f, want in zip(files, list_token_files(tmp_path / "local"), strict=True):
        np.testing.assert_array_equal(read_tokens(f), read_tokens(want))
    manifest = json.loads(storage.read_bytes(f"{url}/tokens/manifest.json"))
    assert [
        i["path"] for i in manifest["inputs"]
    ] == [  # sorted, like local paths (the http folder first too)
        f"{base}/d.jsonl",
        f"{url}/a.jsonl",
        f"{url}/b.jsonl.gz",
        f"{url}/c.parquet",
    ]
    assert TokenFile(files[-1]).spans()[-1].src == f"{url}/c.parquet"  # the .csv.gz names the URL
    with pytest.raises(FileNotFoundError, match=f"{url}/nope.jsonl does not exist"):
        tokenize_documents([f"{url}/nope.jsonl"], tmp_path / "x", **kw)

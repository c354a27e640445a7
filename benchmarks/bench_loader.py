"""Benchmark: tokens/s delivered by ``olmo2.data.loader.TrainLoader`` vs a plain ``np.memmap`` slice loop.

Writes ``--gb`` GB of fake uint32 token files (3 sources, uneven file sizes) under a temporary folder
in /tmp, deletes them afterwards, and reports for the realistic shape (seq 4096, batch 8):

* ``memmap loop``: sequential [batch, seq] slices of the files -> int64 torch tensors (the floor: no
  shuffle, no mixing, no index lookups);
* ``loader inline``: the loader with ``prefetch=0`` (all its work on the caller's thread);
* ``loader threaded``: the default ``prefetch=2`` (reads ahead on a background thread);
* ``wait per step``: time a training loop spends in ``next(loader)`` when each step takes
  ``--step-ms`` of work, which is what matters: the loader must never be what a step waits on;
* ``remote``: instances/s of the same mix (``--remote-mb`` of it) on local disk, on a local
  ``http.server`` and on a local moto S3 server, and the requests each instance cost (one ranged read).

    python benchmarks/bench_loader.py                   # 1.5 GB, 3000 steps
    python benchmarks/bench_loader.py --gb 0.2 --steps 500 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from olmo2 import storage
from olmo2.config import from_dict
from olmo2.data.loader import TrainLoader
from olmo2.data.mix import MixConfig, resolve_mix

SOURCES = {"web": 0.6, "code": 0.25, "math": 0.15}  # share of the bytes written and of the mix


def write_corpus(root: Path, total_bytes: float, files_per_source: int = 4) -> None:
    rng = np.random.default_rng(0)
    for name, share in SOURCES.items():
        weights = rng.uniform(0.5, 1.5, files_per_source)
        for i, w in enumerate(weights / weights.sum()):
            n = int(total_bytes * share * w) // 4 + int(rng.integers(0, 4096))  # ragged remainders
            path = root / name / f"part-{i:02d}-00000.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                for start in range(0, n, 1 << 24):
                    rng.integers(0, 100_278, min(1 << 24, n - start), dtype=np.uint32).tofile(fh)


def memmap_loop(root: Path, seq: int, batch: int, steps: int) -> float:
    """Tokens/s of sequential slices straight from the memmaps, converted like the loader's output."""
    maps = [np.memmap(p, dtype="<u4", mode="r") for p in sorted(root.glob("*/*.npy"))]
    chunk = seq * batch
    t0 = time.perf_counter()
    f, off = 0, 0
    for _ in range(steps):
        if off + chunk > len(maps[f]):
            f, off = (f + 1) % len(maps), 0
        x = torch.from_numpy(np.asarray(maps[f][off : off + chunk], dtype=np.int64).reshape(batch, seq))
        off += chunk
    assert x.shape == (batch, seq)
    return steps * chunk / (time.perf_counter() - t0)


def loader_rate(loader: TrainLoader, steps: int, step_ms: float = 0.0) -> tuple[float, float]:
    """(tokens/s over ``steps`` batches, mean ms spent waiting in next() per step)."""
    it = iter(loader)
    next(it)  # the first batch pays for building the epoch's order: startup, timed separately
    wait, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        if step_ms:
            time.sleep(step_ms / 1000)  # a "training step": torch kernels / GPU waits release the GIL too
    assert batch.input_ids.dtype == torch.int64
    elapsed = time.perf_counter() - t0
    return steps * loader.tokens_per_step / elapsed, 1000 * wait / steps


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, honouring ``Range: bytes=a-b`` (the stdlib handler ignores it); logs each GET."""

    log: list[str]  # set per server
    disable_nagle_algorithm = True  # else header and body, written apart, wait out a 40 ms delayed ACK

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append(f"GET {self.path} {self.headers.get('Range')}")
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().do_GET()
        first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        with open(path, "rb") as f:
            f.seek(first)
            data = f.read(last + 1 - first)
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Range", f"bytes {first}-{first + len(data) - 1}/{path.stat().st_size}")
        self.end_headers()
        self.wfile.write(data)


def serve_folder(root: Path) -> tuple[http.server.ThreadingHTTPServer, str, list[str]]:
    """``(server, base URL, request log)`` of an http.server on 127.0.0.1 in a thread; ``shutdown()`` it."""
    log: list[str] = []
    handler = functools.partial(type("Handler", (RangeHandler,), {"log": log}), directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", log


def remote_rates(root: Path, seq: int, batch: int, steps: int) -> dict:
    """Instances/s and requests per instance of one mix read from disk, HTTP and S3 (all on 127.0.0.1)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request

    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    http_server, base, http_log = serve_folder(root)
    endpoint = f"http://127.0.0.1:{s3_server._server.server_port}"
    os.environ.update(
        OLMO2_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench"
    )
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.npy"))
    for name in files:
        client.upload_file(str(root / name), "bench", name)
    calls = []
    real_read_range = storage.read_range
    storage.read_range = lambda *a, **k: calls.append(a) or real_read_range(*a, **k)
    out = {}
    try:
        for where, prefix in (("local", str(root)), ("http", base), ("s3", "s3://bench")):
            sources = [
                {"name": n, "paths": [f"{prefix}/{f}" for f in files if f.startswith(n + "/")], "share": s}
                for n, s in SOURCES.items()
            ]
            mix = resolve_mix(from_dict(MixConfig, {"sources": sources, "normalize_shares": True}), seq)
            loader = TrainLoader(mix, global_batch_size=batch, seed=6198, prefetch=0)
            n = min(steps, loader.steps_per_epoch)
            loader.epoch_order(0)
            calls.clear(), http_log.clear()
            t = time.perf_counter()
            for k in range(n):
                loader.batch_at(0, k)
            out[f"{where}_instances_s"] = n * batch / (time.perf_counter() - t)
            out[f"{where}_requests_per_instance"] = len(calls) / (n * batch)
            if where == "http":
                out["http_server_gets_per_instance"] = len(http_log) / (n * batch)
    finally:
        storage.read_range = real_read_range
        http_server.shutdown()
        s3_server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.5, help="GB of fake token files to write")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--step-ms", type=float, default=5.0, help="simulated training-step time")
    ap.add_argument(
        "--remote-mb", type=float, default=32, help="MB of the corpus for the remote case (0: skip)"
    )
    ap.add_argument("--remote-steps", type=int, default=100, help="batches read per remote case")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="olmo2-bench-loader-", dir="/tmp"))
    try:
        t = time.perf_counter()
        write_corpus(root, args.gb * 1e9)
        print(f"wrote {args.gb:g} GB of token files in {time.perf_counter() - t:.1f}s under {root}")
        t = time.perf_counter()
        total = sum(p.stat().st_size for p in root.glob("*/*.npy")) // 4
        cfg = from_dict(
            MixConfig,
            {
                "sources": [
                    {"name": n, "paths": [str(root / n / "*.npy")], "share": s, "max_repeat": 2}
                    for n, s in SOURCES.items()
                ],
                "total_tokens": 0.9 * total,
            },
        )
        mix = resolve_mix(cfg, args.seq)
        resolve_s = time.perf_counter() - t

        def make(prefetch: int) -> TrainLoader:
            return TrainLoader(mix, global_batch_size=args.batch, seed=6198, prefetch=prefetch)

        t = time.perf_counter()
        make(0).epoch_order(0)
        order_s = time.perf_counter() - t
        steps = min(args.steps, make(0).steps_per_epoch - 1)
        results = {
            "seq": args.seq,
            "batch": args.batch,
            "gb": args.gb,
            "instances": mix.n_instances,
            "resolve_mix_s": resolve_s,
            "epoch_order_s": order_s,
            "memmap_loop_tok_s": memmap_loop(root, args.seq, args.batch, steps),
        }
        results["loader_inline_tok_s"], _ = loader_rate(make(0), steps)
        results["loader_threaded_tok_s"], _ = loader_rate(make(2), steps)
        sim_steps = min(steps, int(3000 / max(args.step_ms, 0.1)))  # ~3 s of simulated training
        _, results["wait_ms_per_step_threaded"] = loader_rate(make(2), sim_steps, args.step_ms)
        _, results["wait_ms_per_step_inline"] = loader_rate(make(0), sim_steps, args.step_ms)
        results["step_ms"] = args.step_ms
        if args.remote_mb:
            small = root / "remote"
            write_corpus(small, args.remote_mb * 1e6, files_per_source=2)
            results["remote"] = remote_rates(small, args.seq, args.batch, args.remote_steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = results["memmap_loop_tok_s"]
    print(
        f"mix: {mix.n_instances} instances of {args.seq}; resolve {resolve_s * 1000:.0f} ms, "
        f"epoch order {order_s * 1000:.0f} ms"
    )
    print(f"{'memmap loop (sequential)':<28} {base / 1e6:10.1f} Mtok/s")
    for key in ("loader_inline_tok_s", "loader_threaded_tok_s"):
        r = results[key]
        print(
            f"{key[:-6].replace('_', ' '):<28} {r / 1e6:10.1f} Mtok/s   ratio {r / base:5.2f}x of memmap loop"
        )
    print(
        f"time in next() per {args.step_ms:g} ms step: threaded {results['wait_ms_per_step_threaded']:.3f} ms, "
        f"inline {results['wait_ms_per_step_inline']:.3f} ms"
    )
    if args.remote_mb:
        r = results["remote"]
        print(f"remote ({args.remote_mb:g} MB, servers on 127.0.0.1, prefetch 0):")
        for where in ("local", "http", "s3"):
            print(
                f"  {where:<6} {r[f'{where}_instances_s']:10.0f} instances/s   "
                f"{r[f'{where}_requests_per_instance']:.2f} requests per instance"
            )
        print(f"  http server: {r['http_server_gets_per_instance']:.2f} GETs per instance")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: ``olmo2 tokenize`` (tiktoken port, worker processes) against a plain batched ``tokenizers`` loop.

Both read the same JSON-lines corpus, strip each text, skip empty ones, encode without adding special
tokens and append EOS (Dolma's rule); the baseline is ``Tokenizer.encode_batch`` on 1,000 documents at a
time with its own thread pool on every core. Speed is MB of document text per second, end to end (ours
includes process start-up and writing the token files), and MB per CPU-second (all threads and worker
processes), which a busy shared machine disturbs far less. The token ids of every run are compared
with the baseline's over the whole corpus, so a speed-up can never come from different ids.

The corpus (~``--corpus-mb`` MB of Python stdlib code, /usr/share/doc text and generated multilingual
prose) is built locally on first use under ``--corpus-dir`` and is never committed.

    python benchmarks/bench_tokenize.py                       # 30 MB corpus, ours with 1 and 2 workers
    python benchmarks/bench_tokenize.py --corpus-mb 50 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from olmo2.data.documents import Document, find_inputs, read_documents
from olmo2.data.token_files import list_token_files, read_tokens
from olmo2.data.tokenize import tokenize_documents
from olmo2.tokenizer import load_tokenizer

EOS = 100257
BASE = "tokenizers batched loop"
PHRASES = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。机器学习模型需要大量数据。",
    "日本語の文章を正しく分割することは難しい。東京は大きな都市です。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ",
    "emoji 😀 👍🏽 👨‍👩‍👧‍👦 🇺🇸 ✔️ 🚀🔥 and math ∑ ∫ √ ≤ ≥ π ∞",
    "price $1,234.56 on 2024-11-29 at 12:30:45, id 0x7fff_ffff, v3.14.159",
    "<|endoftext|> and |||EMAIL_ADDRESS||| inside text",
]


def _texts_from_system(limit: int):
    """(kind, text) pairs: Python stdlib sources, then /usr/share/doc text (plain and gzipped)."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path("/usr/lib/python3")]
    code = sorted(p for r in roots if r.is_dir() for p in r.rglob("*.py") if "test" not in p.parts)
    docs = sorted(
        p
        for r in (Path("/usr/share/doc"), Path("/usr/share/common-licenses"))
        if r.is_dir()
        for p in r.rglob("*")
        if p.is_file() and (p.suffix in (".txt", ".md", ".rst", ".gz") or p.name in ("copyright", "README"))
    )
    budget = {"code": limit * 0.4, "doc": limit * 0.45}
    for kind, paths in (("code", code), ("doc", docs)):
        used = 0
        for p in paths:
            try:
                data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError, gzip.BadGzipFile, EOFError):
                continue
            for i in range(0, len(text), 40_000):  # long files become several documents
                yield kind, text[i : i + 40_000]
                used += min(40_000, len(text) - i)
            if used >= budget[kind]:
                break


def _prose(words: list[str], rng: random.Random, n_chars: int) -> str:
    out, size = [], 0
    while size < n_chars:
        if rng.random() < 0.15:
            piece = rng.choice(PHRASES)
        else:
            piece = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25))).capitalize() + rng.choice(
                ".!?;"
            )
        if rng.random() < 0.1:
            piece += "\n\n" + " " * rng.randint(0, 8)
        out.append(piece)
        size += len(piece) + 1
    return " ".join(out)


def build_corpus(directory: Path, megabytes: float, files: int = 8) -> Path:
    """JSON-lines shards (the last two gzipped) of diverse text; reused when already built."""
    stamp = directory / "CORPUS_OK"
    if stamp.is_file() and json.loads(stamp.read_text()).get("mb") == megabytes:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    limit = int(megabytes * 1e6)
    texts = [t for _, t in _texts_from_system(limit)]
    rng = random.Random(0)
    words = sorted({w for t in texts[:2000] for w in t.split() if w.isalpha() and len(w) < 15}) or ["lorem"]
    size = sum(len(t.encode()) for t in texts)
    while size < limit:
        t = _prose(words, rng, rng.randint(500, 20_000))
        texts.append(t)
        size += len(t.encode())
    rng.shuffle(texts)
    for k in range(files):
        name = f"shard-{k:02d}.jsonl" + (".gz" if k >= files - 2 else "")
        lines = "".join(
            json.dumps({"id": f"{k}-{i}", "text": t}) + "\n" for i, t in enumerate(texts[k::files])
        )
        data = lines.encode()
        (directory / name).write_bytes(gzip.compress(data, 6, mtime=0) if name.endswith(".gz") else data)
    stamp.write_text(json.dumps({"mb": megabytes}))
    return directory


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children: robust to a busy machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """(wall seconds, CPU seconds, result)."""
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - w, cpu_seconds() - c, out


def baseline(paths: list[str], tok) -> np.ndarray:
    """The plain loop: read, strip, ``encode_batch`` 1,000 documents at a time, append EOS."""
    out, batch = [], []

    def flush():
        for enc in tok.backend.encode_batch(batch, add_special_tokens=False):
            ids = enc.ids
            out.append(np.array(ids if ids and ids[-1] == EOS else [*ids, EOS], dtype=np.uint32))
        batch.clear()

    for p in paths:
        for item in read_documents(p):
            if isinstance(item, Document):
                batch.append(item.text)
                if len(batch) == 1000:
                    flush()
    if batch:
        flush()
    return np.concatenate(out)


def ours(paths: list[str], tok, workers: int, out_dir: Path) -> str:
    shutil.rmtree(out_dir, ignore_errors=True)
    return tokenize_documents(paths, out_dir, tokenizer=tok, workers=workers, progress=False).backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "olmo2-bench-tokenize")
    ap.add_argument("--corpus-mb", type=float, default=30.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each; the best (least disturbed) counts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    corpus = build_corpus(args.corpus_dir / "corpus", args.corpus_mb)
    paths = find_inputs([corpus])
    tok = load_tokenizer()
    text_mb = (
        sum(len(d.text.encode()) for p in paths for d in read_documents(p) if isinstance(d, Document)) / 1e6
    )
    print(f"corpus: {len(paths)} files, {text_mb:.1f} MB of document text; {os.cpu_count()} CPUs", flush=True)

    best: dict[str, list[float]] = {}  # name -> [best wall seconds, best CPU seconds]
    reference, backend = None, ""

    def record(key: str, wall: float, cpu: float) -> None:
        old = best.get(key, [1e9, 1e9])
        best[key] = [min(old[0], wall), min(old[1], cpu)]
        print(f"  {key}: {text_mb / wall:.2f} MB/s, {text_mb / cpu:.2f} MB per CPU-second", flush=True)

    for r in range(args.repeats):  # interleaved, so machine noise hits every contender alike
        print(f"run {r}:", flush=True)
        wall, cpu, ids = timed(lambda: baseline(paths, tok))
        reference = ids if reference is None else reference
        assert np.array_equal(ids, reference)
        record(BASE, wall, cpu)
        for w in args.workers:
            out = args.corpus_dir / f"out-{w}"
            wall, cpu, backend = timed(lambda w=w, out=out: ours(paths, tok, w, out))
            ids = np.concatenate([read_tokens(f) for f in list_token_files(out)])
            if not np.array_equal(ids, reference):
                sys.exit(
                    f"token ids differ from the baseline with {w} workers ({len(ids)} vs {len(reference)})"
                )
            record(f"olmo2 tokenize, {w} worker{'s' * (w > 1)}", wall, cpu)

    base_wall, base_cpu = best[BASE]
    print(
        f"\n{reference.size:,} tokens, ids identical to the baseline in every run (ours: {backend}); best of {args.repeats}"
    )
    print(f"{'':32} {'MB/s':>7} {'x base':>7} {'MB/CPU-s':>9} {'x base':>7}")
    results = {}
    for key, (wall, cpu) in best.items():
        results[key] = {"wall_s": wall, "cpu_s": cpu, "mb_per_s": text_mb / wall, "ratio": base_wall / wall}
        results[key] |= {"mb_per_cpu_s": text_mb / cpu, "cpu_ratio": base_cpu / cpu}
        print(
            f"{key:32} {text_mb / wall:7.2f} {base_wall / wall:7.2f} {text_mb / cpu:9.2f} {base_cpu / cpu:7.2f}"
        )
    if args.json:
        payload = {
            "text_mb": text_mb,
            "tokens": int(reference.size),
            "cpus": os.cpu_count(),
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

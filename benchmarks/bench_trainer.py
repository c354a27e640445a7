"""Benchmark: the full training step through ``olmo2 train`` against a plain training loop over
transformers' ``Olmo2ForCausalLM`` on the same shapes, in the same run.

Each side runs in its own child process (so its peak memory is its own), alternating
ours, HF, HF, ours, … ``--rounds`` times, so noise from a shared machine hits both alike:

* **ours**: the real CLI (``olmo2 train``) on a synthetic token file: data loader, chunked CE + z-loss,
  AdamW, clipping, schedule, metrics; each side at its default settings (``precision: auto``, which is
  bf16 autocast only where bf16 matmuls are measured faster than fp32), but with the whole batch in one
  micro-batch like the HF loop (``--micro-batch-size`` to change; the trainer's own default is 2).
  Tokens/s per step are read from
  the run's ``metrics.jsonl``; checkpoints are written only at the end (not timed).
* **hf**: a plain loop, fp32: ``loss = model(ids, labels=ids).loss``, backward, clip at 1.0, AdamW;
  and **hf-bf16**, the same loop under bf16 autocast, the peer's best setting where bf16 is faster
  (run only where ``precision: auto`` picks bf16, i.e. on CPUs with bf16 matrix units).

Reported per config: median tokens/s of each side over the steps after ``--warmup``, the ratio (ours
/ each peer), each side's peak RSS (``ru_maxrss`` of its process) and the ratio, and MFU = model
FLOPs/s (``olmo2.train.monitor.flops_per_token``, the same count for every side) / the matmul peak of
the dtype the side computed in. Ours reports the dtype and MFU the trainer itself used and logged;
the peaks are the machine's, measured once and cached (``olmo2.train.runtime.choose_precision``), and
printed with the CPU model and its AMX/AVX-512/AVX2 extensions.

    python benchmarks/bench_trainer.py                          # tiny and small
    python benchmarks/bench_trainer.py --config tiny --steps 4 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from olmo2.data.token_files import EOS_TOKEN_ID
from olmo2.model.config import preset
from olmo2.train.monitor import flops_per_token
from olmo2.train.runtime import choose_precision, cpu_description

# (preset, sequence length, batch size) per benchmark config: the foundation issue's shapes.
SHAPES = {"tiny": ("tiny", 512, 8), "small": ("small", 1024, 4)}


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def write_tokens(path: Path, n_tokens: int, vocab: int, seed: int = 0) -> None:
    """Random documents of ~1000 tokens ending in EOS, as a raw uint32 token file."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, vocab - 100, size=n_tokens, dtype=np.uint32)
    arr[999::1000] = EOS_TOKEN_ID
    arr.astype("<u4").tofile(path)


def run_ours(work: Path, size: str, seq_len: int, batch: int, steps: int, micro_batch: int = 0) -> dict:
    """``olmo2 train`` in this process; returns per-step tokens/s and the peak RSS."""
    from olmo2.cli import main

    mix = work / "mix.yaml"
    mix.write_text(f"name: bench\nsources:\n  - name: random\n    paths: ['{work / 'tokens.npy'}']\n")
    run = work / f"ours-{time.time_ns()}"
    config = work / f"{run.name}.yaml"
    micro = f", micro_batch_size: {micro_batch or batch}"
    config.write_text(
        f"model: {size}\n"
        f"data: {{mix: '{mix}', seq_len: {seq_len}, global_batch_size: {batch}{micro}}}\n"
        f"run: {{folder: '{run}', max_steps: {steps}}}\n"
        f"logging: {{every: 1}}\n"
        f"schedule: {{warmup_steps: 1}}\n"
        f"checkpoint: {{export_hf: false, save_every: {steps}}}\n"
    )
    if main(["train", str(config)]) != 0:
        raise SystemExit("olmo2 train failed")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dtype, _ = choose_precision("auto", torch.device("cpu"))  # the trainer's (cached) choice
    return {
        "tokens_per_sec": [r["tokens_per_sec"] for r in records],
        "mfu": [r["mfu"] for r in records],  # as the trainer logged it
        "dtype": str(dtype).removeprefix("torch."),
        "peak_rss": peak_rss_bytes(),
    }


def run_hf(work: Path, size: str, seq_len: int, batch: int, steps: int, dtype: torch.dtype) -> dict:
    """A plain loop over transformers' model (fp32 weights, ``dtype`` autocast) on batches read from
    the same token file."""
    from olmo2.model.checkpoint import hf_model
    from olmo2.model.transformer import build_model

    cfg = preset(size)
    model = hf_model(cfg, build_model(cfg, seed=0).state_dict(), use_cache=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tokens = np.fromfile(work / "tokens.npy", dtype="<u4")
    rates = []
    for step in range(steps):
        start = step * batch * seq_len % (len(tokens) - batch * seq_len)
        ids = torch.from_numpy(tokens[start : start + batch * seq_len].astype(np.int64)).view(batch, seq_len)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        rates.append(batch * seq_len / (time.perf_counter() - t0))
    return {"tokens_per_sec": rates, "dtype": str(dtype).removeprefix("torch."), "peak_rss": peak_rss_bytes()}


def shape(args) -> tuple[str, int, int]:
    size, seq_len, batch = SHAPES[args.config]
    return size, args.seq_len or seq_len, args.batch_size or batch


def child(args) -> None:
    size, seq_len, batch = shape(args)
    steps = args.warmup + args.steps
    if args.child == "ours":
        result = run_ours(Path(args.work), size, seq_len, batch, steps, args.micro_batch_size)
    else:
        dtype = torch.bfloat16 if args.child == "hf-bf16" else torch.float32
        result = run_hf(Path(args.work), size, seq_len, batch, steps, dtype)
    Path(args.result).write_text(json.dumps(result))


def spawn(side: str, args, work: Path) -> dict:
    out = work / f"{side}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--child", side, "--config", args.config, "--work", str(work)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--result", str(out)]
    cmd += ["--seq-len", str(args.seq_len or 0), "--batch-size", str(args.batch_size or 0)]
    cmd += ["--micro-batch-size", str(args.micro_batch_size)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def bench_config(name: str, args, peaks: dict, sides: list[str]) -> dict:
    args.config = name
    size, seq_len, batch = shape(args)
    cfg = preset(size)
    results: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="olmo2-bench-trainer-") as tmp:
        work = Path(tmp)
        write_tokens(work / "tokens.npy", 4 * (args.warmup + args.steps) * batch * seq_len, cfg.vocab_size)
        for i in range(args.rounds):
            for side in sides if i % 2 == 0 else sides[::-1]:
                r = spawn(side, args, work)
                results[side].append(r)
                steady = r["tokens_per_sec"][args.warmup :]
                print(
                    f"[{name}] round {i + 1}/{args.rounds} {side}: median {statistics.median(steady):.1f} "
                    f"tok/s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB",
                    flush=True,
                )
    fpt = flops_per_token(cfg, seq_len)
    summary = {
        "config": name,
        "preset": size,
        "seq_len": seq_len,
        "batch_size": batch,
        "flops_per_token": fpt,
    }
    for side, runs in results.items():
        rates = [x for r in runs for x in r["tokens_per_sec"][args.warmup :]]
        tps = statistics.median(rates)
        (dtype,) = {r["dtype"] for r in runs}
        logged = [x for r in runs for x in r.get("mfu", [])[args.warmup :]]
        summary[side] = {
            "tokens_per_sec": tps,
            "peak_rss_gib": max(r["peak_rss"] for r in runs) / 2**30,
            "dtype": dtype,
            "mfu": statistics.median(logged) if logged else fpt * tps / peaks[dtype],
            "steps_measured": len(rates),
        }
    for peer in sides[1:]:
        summary[f"speedup_vs_{peer}"] = summary["ours"]["tokens_per_sec"] / summary[peer]["tokens_per_sec"]
        summary[f"memory_ratio_vs_{peer}"] = summary["ours"]["peak_rss_gib"] / summary[peer]["peak_rss_gib"]
    return summary


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--config", choices=[*SHAPES, "all"], default="all")
    p.add_argument("--steps", type=int, default=4, help="measured steps per child run")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps at the start of each child run")
    p.add_argument("--rounds", type=int, default=2, help="child runs per side (alternating order)")
    p.add_argument("--seq-len", type=int, default=0, help="override the config's sequence length")
    p.add_argument("--batch-size", type=int, default=0, help="override the config's batch size")
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=0,
        help="ours: instances per forward (default: the whole batch, as the HF loop)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", choices=["ours", "hf", "hf-bf16"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    cpu = torch.device("cpu")
    auto, _ = choose_precision("auto", cpu)  # measured once per machine, cached: what ours will use
    peaks = {"float32": choose_precision("fp32", cpu)[1]}
    sides = ["ours", "hf"]
    if auto == torch.bfloat16:
        peaks["bfloat16"] = choose_precision("bf16", cpu)[1]
        sides.append("hf-bf16")
    print(
        f"CPU: {cpu_description()}, torch threads {torch.get_num_threads()}; matmul peaks "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        + f"; precision auto: {str(auto).removeprefix('torch.')}"
        + ("" if "hf-bf16" in sides else " (no bf16 matrix units: the peer's bf16 loop is not run)"),
        flush=True,
    )
    names = list(SHAPES) if args.config == "all" else [args.config]
    rows = [bench_config(n, args, peaks, sides) for n in names]
    print(f"\n{'config':<7}{'side':<9}{'tok/s':>9}{'peak RSS':>11}{'dtype':>10}{'MFU':>8}")
    for r in rows:
        for side in sides:
            s = r[side]
            print(
                f"{r['config']:<7}{side:<9}{s['tokens_per_sec']:>9.1f}{s['peak_rss_gib']:>9.2f}Gi"
                f"{s['dtype']:>10}{100 * s['mfu']:>7.1f}%"
            )
        for peer in sides[1:]:
            print(
                f"{r['config']:<7}ratio vs {peer}: {r[f'speedup_vs_{peer}']:.2f}x tokens/s at "
                f"{100 * r[f'memory_ratio_vs_{peer}']:.0f}% of its peak memory"
            )
    if args.json:
        out = {
            "cpu": cpu_description(),
            "peaks": peaks,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

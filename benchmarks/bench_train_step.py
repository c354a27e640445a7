"""Benchmark: one training step (forward, backward, AdamW step) of our model and loss against
transformers' ``Olmo2ForCausalLM`` with its own ``labels=`` loss, on identical weights and batches.

Ours computes the loss with ``olmo2.model.loss.lm_loss`` (chunked CE + z-loss from the hidden
states); HF materialises the full [tokens, 100352] logits and calls ``cross_entropy`` on them. Both
use the same AdamW settings. Steps of ours and HF alternate (ours, HF, HF, ours, …) after warm-up, so
noise from a shared machine hits both alike; the table reports the median of each and the ratio of
throughputs (ours / HF; above 1 means ours is faster).

    python benchmarks/bench_train_step.py                         # tiny and small, fp32, CPU
    python benchmarks/bench_train_step.py --config tiny --steps 5 --json out.json
    python benchmarks/bench_train_step.py --dtype bfloat16        # autocast on both
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from olmo2.model.checkpoint import hf_model as olmo2_hf_model
from olmo2.model.config import preset
from olmo2.model.loss import lm_loss, shift_labels
from olmo2.model.transformer import build_model

# (preset, sequence length, batch size) per benchmark config.
SHAPES = {"tiny": ("tiny", 512, 8), "small": ("small", 1024, 4)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hf_model(cfg, state_dict):
    """HF's model with our weights (parameter names are the same)."""
    return olmo2_hf_model(cfg, state_dict, use_cache=False, attn_implementation="sdpa")


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model, its optimizer and its loss: ``step()`` is one timed training step."""

    def __init__(self, name, model, loss_fn, ids, device, dtype):
        self.name, self.model, self.loss_fn, self.ids = name, model.train(), loss_fn, ids
        self.device, self.dtype = device, dtype
        self.opt = adamw(model)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def loss(self) -> torch.Tensor:
        with self.autocast():
            return self.loss_fn(self.model, self.ids)

    def step(self, record: bool) -> None:
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()
        sync(self.device)
        if record:
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)


def our_loss(z_loss: float, chunk_size: int):
    def fn(model, ids):
        labels = shift_labels(ids)
        n = ids.shape[0] * (ids.shape[1] - 1)  # HF's mean is over these targets
        out = lm_loss(
            model.hidden_states(ids),
            model.lm_head.weight,
            labels,
            z_loss_multiplier=z_loss,
            chunk_size=chunk_size,
            normalizer=n,
        )
        fn.last = out
        return out.loss

    return fn


def hf_loss(model, ids):
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def bench_config(name: str, args, device: torch.device) -> dict:
    size, seq_len, batch = SHAPES[name]
    seq_len, batch = args.seq_len or seq_len, args.batch_size or batch
    cfg = preset(size)
    dtype = DTYPES[args.dtype]
    ours = build_model(cfg, seed=0).to(device)
    hf = hf_model(cfg, ours.state_dict()).to(device)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(1)).to(
        device
    )
    ours_loss = our_loss(args.z_loss, args.chunk_size)
    runners = [
        Runner("ours", ours, ours_loss, ids, device, dtype),
        Runner("hf", hf, hf_loss, ids, device, dtype),
    ]

    # Same weights, same batch: the same CE (ours also adds the z-loss, reported apart).
    with torch.no_grad():
        ref, mine = runners[1].loss().item(), runners[0].loss()
    ce = ours_loss.last.ce_loss.item()
    print(
        f"[{name}] loss check: hf {ref:.6f}  ours ce {ce:.6f}  |diff| {abs(ref - ce):.2e}  "
        f"(ours z-loss {ours_loss.last.z_loss.item():.2e}, total {mine.item():.6f})",
        flush=True,
    )

    for i in range(args.warmup + args.steps):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            r.step(record=i >= args.warmup)
        done = [f"{r.name} {r.wall[-1]:.2f}s" for r in runners if r.wall]
        print(f"[{name}] step {i + 1}/{args.warmup + args.steps}: {', '.join(done) or 'warm-up'}", flush=True)

    tokens = batch * seq_len
    result = {
        "config": name,
        "preset": size,
        "seq_len": seq_len,
        "batch_size": batch,
        "tokens_per_step": tokens,
        "loss_hf": ref,
        "loss_ours_ce": ce,
        "loss_abs_diff": abs(ref - ce),
    }
    for r in runners:
        result[r.name] = {
            "median_step_s": statistics.median(r.wall),
            "tokens_per_s": tokens / statistics.median(r.wall),
            "median_cpu_s": statistics.median(r.cpu),
            "step_s": r.wall,
            "cpu_s": r.cpu,
        }
    result["ratio"] = result["ours"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
    del runners, ours, hf
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="bfloat16: autocast on both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, help="override the config's sequence length")
    parser.add_argument("--batch-size", type=int, help="override the config's batch size")
    parser.add_argument("--chunk-size", type=int, default=1024, help="our loss's logits rows per chunk")
    parser.add_argument("--z-loss", type=float, default=1e-5, help="our z-loss multiplier (HF has none)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    args = parser.parse_args(argv)

    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(SHAPES) if args.config == "all" else [args.config]
    results = [bench_config(n, args, device) for n in names]

    print(f"\n{args.dtype} on {device.type}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'config':8s} {'tokens/step':>11s} {'ours tok/s':>11s} {'HF tok/s':>10s} {'ours/HF':>8s}")
    for r in results:
        print(
            f"{r['config']:8s} {r['tokens_per_step']:11d} {r['ours']['tokens_per_s']:11.1f} "
            f"{r['hf']['tokens_per_s']:10.1f} {r['ratio']:8.3f}"
        )
    report = {
        "benchmark": "train_step",
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "chunk_size": args.chunk_size,
        "z_loss_multiplier": args.z_loss,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()

"""Where one training step's CPU time goes: ``torch.profiler`` over the steps of the trainer's hot path
(forward with the chunked loss, backward per micro-batch, clip, AdamW), by operator, sorted by self
CPU time, and the share of the matmuls in it.

The step is the one ``olmo2.train.trainer.LMTrainModule`` runs, minus the data loader and the metrics:
the same model, loss, optimizer (``build_optimizer``), precision (``choose_precision``) and malloc
setting. Shapes:
``tiny`` and ``small`` are ``bench_trainer.py``'s; ``demo`` is ``configs/train/demo-stage1.yaml``'s
model and batch (16 × 256 in two micro-batches of 8).

    python benchmarks/profile_step.py --config tiny --steps 3
    python benchmarks/profile_step.py --config demo --dtype fp32 --compile
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from olmo2.model.config import preset
from olmo2.model.loss import shift_labels
from olmo2.model.transformer import build_model
from olmo2.train.config import RuntimeConfig
from olmo2.train.distributed import set_malloc_mmap_threshold
from olmo2.train.optim import OptimConfig, build_optimizer
from olmo2.train.runtime import autocast, choose_precision, cpu_description

# (preset, sequence length, batch size, micro-batch size)
SHAPES = {"tiny": ("tiny", 512, 8, 8), "small": ("small", 1024, 4, 4), "demo": ("demo", 256, 16, 8)}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::linear", "aten::matmul")


def is_matmul(name: str) -> bool:
    return name in MATMUL_OPS or name.startswith("aten::_scaled_dot_product")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(SHAPES), default="tiny")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block, as runtime.compile")
    p.add_argument("--rows", type=int, default=15, help="operators in the table")
    p.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    args = p.parse_args()

    size, seq_len, batch, micro = SHAPES[args.config]
    set_malloc_mmap_threshold(RuntimeConfig().cpu_malloc_mmap_threshold_mib)  # as the trainer does
    device = torch.device("cpu")
    dtype, _ = choose_precision(args.dtype, device)
    cfg = preset(size)
    model = build_model(cfg, seed=0).train()
    if args.compile:
        for layer in model.model.layers:
            layer.compile()
    optimizer = build_optimizer(model, OptimConfig())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size - 100, (batch, seq_len), generator=gen)
    labels = shift_labels(ids)

    def step() -> None:
        for s in range(0, batch, micro):
            with autocast(device, dtype):
                out = model(ids[s : s + micro], labels=labels[s : s + micro], loss_normalizer=batch * seq_len)
                (out.ce_loss + out.z_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    warmup = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        per_step = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages(group_by_input_shape=args.by_shape)
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if is_matmul(e.key))
    print(f"CPU: {cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"config {args.config} ({size}, {batch}x{seq_len}, micro-batch {micro}), {str(dtype)[6:]}"
        f"{', compiled blocks' if args.compile else ''}: {per_step:.3f} s/step under the profiler "
        f"(first step {warmup:.1f} s)"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        f"matmul ops ({', '.join(MATMUL_OPS)}, _scaled_dot_product*): {matmul / total:.1%} of self CPU time"
    )
    print(f"everything else: {1 - matmul / total:.1%}")


if __name__ == "__main__":
    main()

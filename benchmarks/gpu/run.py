"""The one GPU check: training throughput and MFU of the 1B config at seq 4096 in bf16, through the
real trainer (synthetic token files), plus a parity spot-check of our model against transformers on
the device. Run it when a GPU is lent:

    python benchmarks/gpu/run.py --out /tmp/gpu-report.json

``--smoke`` runs the same code path on the CPU with the tiny preset in seconds (the test suite does),
so the script is known to work before device time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

# Published dense bf16 peaks (no sparsity), for MFU next to the measured matmul peak.
NOMINAL_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def write_tokens(root: Path, n_tokens: int, vocab: int, seed: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab, size=n_tokens, dtype=np.uint32).astype("<u4").tofile(root / "part-00000.npy")


def parity_check(device: torch.device) -> dict:
    """Max |logits diff| of our model vs transformers' Olmo2ForCausalLM with the same weights."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from olmo2.model.checkpoint import config_from_hf

    torch.manual_seed(0)
    hf_cfg = Olmo2Config(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        eos_token_id=1,
        pad_token_id=2,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    hf = Olmo2ForCausalLM(hf_cfg).to(device).eval()
    from olmo2.model.transformer import Olmo2

    ours = Olmo2(config_from_hf(hf_cfg.to_dict())).to(device).eval()
    ours.load_state_dict(hf.state_dict())
    x = torch.randint(0, 1024, (2, 256), device=device)
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            result[f"max_abs_logit_diff_{name}"] = (hf(x).logits.float() - ours(x).float()).abs().max().item()
    return result


def train_throughput(args, device: str) -> dict:
    from olmo2.train.config import load_train_config
    from olmo2.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens_needed = args.global_batch * args.seq_len * (args.steps + 2)
        write_tokens(tmp / "data", tokens_needed, vocab=100_000)
        (tmp / "mix.yaml").write_text(
            yaml.safe_dump({"sources": [{"name": "synthetic", "paths": [str(tmp / "data")]}]})
        )
        cfg = {
            "model": args.model,
            "data": {
                "mix": str(tmp / "mix.yaml"),
                "seq_len": args.seq_len,
                "global_batch_size": args.global_batch,
                "micro_batch_size": args.micro_batch,
                "filter_repeats": False,
            },
            "trainer": {
                "save_folder": str(tmp / "run"),
                "max_steps": args.steps,
                "precision": args.precision,
                "device": device,
                "compile": args.compile,
                "activation_checkpointing": args.activation_checkpointing,
                "log_every": 1,
            },
            "checkpoint": {"save_every": 10**9, "export_hf": False},
        }
        (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
        config = load_train_config(tmp / "train.yaml")
        start = time.perf_counter()
        train(config)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = records[min(len(records) - 1, args.warmup_steps) :]
    tps = statistics.median(r["tokens_per_sec"] for r in steady)
    from olmo2.model.transformer import count_params
    from olmo2.train.monitor import flops_per_token

    fpt = flops_per_token(config.model, args.seq_len)
    out = {
        "model": args.model,
        "params": count_params(config.model)["total_params"],
        "seq_len": args.seq_len,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "tokens_per_sec_per_device": tps,
        "mfu_vs_measured_peak": statistics.median(r["mfu"] for r in steady),
        "final_loss": records[-1]["loss"],
        "wall_seconds": wall,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)
        out["device_name"] = name
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if peak:
            out["mfu_vs_nominal_bf16_peak"] = fpt * tps / peak
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps (tests use it)")
    p.add_argument("--model", default="1b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the medians")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"])
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=None, help="write the report JSON here")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.model, args.seq_len, args.micro_batch, args.global_batch = "tiny", 64, 2, 4
        args.steps, args.warmup_steps, args.precision = 3, 1, "fp32"
    report = {"torch": torch.__version__, "device": device}
    report["parity"] = parity_check(torch.device(device))
    report["train"] = train_throughput(args, device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``olmo2.generate`` (KV cache) against Hugging Face ``generate`` on identical weights.

Greedy decoding of exactly ``--new-tokens`` tokens (no EOS stop on either side) after a random
``--prompt-len``-token prompt, per batch size. Runs of ours and HF are interleaved so that noise from
a shared machine hits both alike; the ratio uses the best (least disturbed) run of each.

    python benchmarks/bench_generate.py                      # tiny preset, fp32 CPU, batch 1 and 8
    python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from olmo2.generate import GenerationConfig, generate
from olmo2.model.checkpoint import hf_model as olmo2_hf_model
from olmo2.model.config import preset
from olmo2.model.transformer import build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_model(cfg, state_dict, device, dtype):
    """HF's model with our weights; no EOS, so both sides generate exactly the asked-for tokens."""
    model = olmo2_hf_model(cfg, state_dict, eos_token_id=None, bos_token_id=None)
    return model.to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each generator per batch size")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each generator per batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    cfg = preset(args.preset)
    ours = build_model(cfg, seed=args.seed).to(device=device, dtype=dtype).eval()
    hf = hf_model(cfg, ours.state_dict(), device, dtype)
    gcfg = GenerationConfig(max_new_tokens=args.new_tokens, stop_on_eos=False)
    n = args.new_tokens
    hf_kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=cfg.pad_token_id)

    print(
        f"preset={args.preset} device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"prompt={args.prompt_len} new={n} torch={torch.__version__}"
    )
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for bs in args.batch_sizes:
        ids = torch.randint(0, cfg.vocab_size, (bs, args.prompt_len), generator=gen)
        prompts = ids.tolist()
        ids, attn = ids.to(device), torch.ones_like(ids, device=device)

        def run_ours(prompts=prompts):
            return generate(ours, prompts, gcfg)

        def run_hf(ids=ids, attn=attn):
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=attn, **hf_kwargs)[:, args.prompt_len :].tolist()

        for _ in range(args.warmup):
            run_ours()
            run_hf()
        t_ours, t_hf = [], []
        for _ in range(args.repeats):
            dt, out_ours = timed(run_ours, device)
            t_ours.append(dt)
            dt, out_hf = timed(run_hf, device)
            t_hf.append(dt)
        same = out_ours == out_hf
        lengths_ok = all(len(r) == n for r in out_ours)
        row = {
            "batch_size": bs,
            "ours_tok_s_best": bs * n / min(t_ours),
            "ours_tok_s_median": bs * n / statistics.median(t_ours),
            "hf_tok_s_best": bs * n / min(t_hf),
            "hf_tok_s_median": bs * n / statistics.median(t_hf),
            "greedy_identical": same,
            "exact_length": lengths_ok,
        }
        row["ratio_best"] = row["ours_tok_s_best"] / row["hf_tok_s_best"]
        row["ratio_median"] = row["ours_tok_s_median"] / row["hf_tok_s_median"]
        results.append(row)
        print(
            f"batch {bs:3d}: ours {row['ours_tok_s_best']:8.1f} tok/s (median {row['ours_tok_s_median']:8.1f})"
            f" | HF {row['hf_tok_s_best']:8.1f} tok/s (median {row['hf_tok_s_median']:8.1f})"
            f" | ours/HF {row['ratio_best']:.2f}x (median {row['ratio_median']:.2f}x)"
            f" | greedy identical: {'yes' if same else 'NO'}",
            flush=True,
        )
    report = {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "prompt_len": args.prompt_len,
        "new_tokens": n,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()

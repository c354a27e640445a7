"""Benchmark: OLMES core-suite scoring with ``olmo2.eval`` against a naive per-example HF loop.

Both score the same prepared requests of ``--tasks`` (default ``olmes_core``, ``--limit`` docs per
task format) with the same random weights (``--preset``, default ``small``). Ours is the
``Evaluator`` (shared-prefix KV reuse, packed continuations, length-sorted batches). The naive loop
is what a straightforward script does: for every (context, continuation) request one unbatched
``transformers`` forward of context + continuation, log-softmax over the full logits, sum.

The naive loop is too slow to run on every request on a CPU, so it is timed on ``--naive-sample``
requests per format (evenly spaced) and its time is extrapolated per format (it is a sum of
independent per-request costs); its log-likelihoods on those requests are checked against ours.
Examples are task docs (one doc of one format). The ratio is naive time / our time.

    flock /tmp/olmo2-bench.lock python benchmarks/bench_eval.py                # small, limit 5, CPU
    python benchmarks/bench_eval.py --preset tiny --limit 20 --json out.json
    python benchmarks/bench_eval.py --device cuda --dtype bfloat16 --limit 100
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from olmo2.eval.lm import Olmo2LM
from olmo2.eval.runner import Evaluator
from olmo2.model.checkpoint import hf_model as olmo2_hf_model
from olmo2.model.config import preset
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_model(model, device, dtype):
    """The same weights as an HF ``Olmo2ForCausalLM`` (our state dict uses HF's names)."""
    return olmo2_hf_model(model.config, model.state_dict()).to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def naive_ll(hf, ctx, cont, device) -> float:
    ctx, cont = np.asarray(ctx, dtype=np.int64), np.asarray(cont, dtype=np.int64)
    ids = torch.from_numpy(np.concatenate([ctx, cont[:-1]]))[None].to(device)
    logits = hf(ids).logits[0, -len(cont) :].float()
    lp = logits.log_softmax(-1)
    return float(
        lp[torch.arange(len(cont)), torch.as_tensor(np.asarray(cont, dtype=np.int64), device=device)].sum()
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tasks", default="olmes_core")
    ap.add_argument("--limit", type=int, default=5, help="docs per task format")
    ap.add_argument("--naive-sample", type=int, default=3, help="naive requests timed per format")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    model = build_model(preset(args.preset), device=device, seed=args.seed).to(dtype).eval()
    hf = hf_model(model, device, dtype)
    ev = Evaluator(load_tokenizer(), args.tasks, limit=args.limit, batch_size=args.batch_size,
                   max_batch_tokens=args.max_batch_tokens, keep_docs=True)  # fmt: skip
    docs = sum(len(p.data.docs) for p in ev.prepared.values())
    requests = sum(len(p.requests) for p in ev.prepared.values())

    sync(device)
    t0 = time.perf_counter()
    res = ev(Olmo2LM(model))
    sync(device)
    ours_s = time.perf_counter() - t0

    naive_s, timed, max_diff = 0.0, 0, 0.0
    for name, prep in ev.prepared.items():
        m = res["tasks"].get(name) or res["tasks"][name.split(":")[0]][name.split(":")[1]]
        ours_ll = [x for d in m["per_doc"] for x in d["logprobs"] + d.get("uncond_logprobs", [])]
        reqs = prep.requests
        pick = np.unique(np.linspace(0, len(reqs) - 1, min(args.naive_sample, len(reqs))).astype(int))
        spent = 0.0
        for i in pick:
            sync(device)
            t = time.perf_counter()
            ll = naive_ll(hf, *reqs[i], device)
            sync(device)
            spent += time.perf_counter() - t
            max_diff = max(max_diff, abs(ll - ours_ll[i]))
        naive_s += spent / len(pick) * len(reqs)
        timed += len(pick)

    out = {
        "preset": args.preset,
        "tasks": args.tasks,
        "limit": args.limit,
        "docs": docs,
        "requests": requests,
        "ours_seconds": round(ours_s, 2),
        "ours_examples_per_s": round(docs / ours_s, 3),
        "naive_seconds_estimated": round(naive_s, 2),
        "naive_examples_per_s": round(docs / naive_s, 4),
        "naive_requests_timed": timed,
        "ratio": round(naive_s / ours_s, 2),
        "max_abs_loglik_diff": max_diff,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(
        f"{args.tasks} ({docs} docs, {requests} requests, {args.preset}, {args.dtype} {device}):\n"
        f"  olmo2.eval : {ours_s:8.1f} s  {docs / ours_s:8.3f} examples/s\n"
        f"  naive HF   : {naive_s:8.1f} s  {docs / naive_s:8.4f} examples/s "
        f"(estimated from {timed} timed requests)\n"
        f"  ratio      : {naive_s / ours_s:8.1f}x   (max |Δ log-lik| on timed requests: {max_diff:.2e})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()

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

The generative tasks (``--gen-tasks``, default ``gsm8k:gen``; any task that runs through
``olmo2.eval.generative.generate_until``) are timed the same way on ``--gen-limit`` docs each: ours is
the ``Evaluator`` (batched greedy decoding with a KV cache, rows dropped once they hit a stop
sequence); the naive loop is one unbatched ``transformers`` ``generate`` per doc (greedy, the same
max new tokens, a stopping criterion that decodes the new tokens and stops at the first stop
sequence or EOS, then the same cut). Its texts must equal ours on every timed doc.

    flock /tmp/olmo2-bench.lock python benchmarks/bench_eval.py                # small, limit 5, CPU
    python benchmarks/bench_eval.py --preset tiny --limit 20 --json out.json
    python benchmarks/bench_eval.py --device cuda --dtype bfloat16 --limit 100
    python benchmarks/bench_eval.py --preset tiny --tasks none --gen-tasks gsm8k:gen --gen-limit 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from transformers import StoppingCriteria

from olmo2.eval.generative import cut_at_stop
from olmo2.eval.lm import Olmo2LM
from olmo2.eval.runner import Evaluator
from olmo2.model.checkpoint import hf_model as olmo2_hf_model
from olmo2.model.config import preset
from olmo2.model.transformer import build_model
from olmo2.tokenizer import load_tokenizer
from olmo2.train.runtime import cpu_description

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


class _StopAtText(StoppingCriteria):
    """Stop once the decoded new tokens contain a stop sequence (what a plain script checks)."""

    def __init__(self, decode, prompt_len: int, stops: tuple[str, ...]):
        self.decode, self.prompt_len, self.stops = decode, prompt_len, stops

    def __call__(self, input_ids, scores, **kwargs):
        stopped = cut_at_stop(self.decode(input_ids[0, self.prompt_len :].tolist()), self.stops)[1]
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def naive_generate(hf, tok, prompt: list[int], stops: tuple[str, ...], max_new: int, device) -> str:
    """One doc through HF ``generate``, cut like ``generate_until`` (before EOS, at the first stop)."""
    eos = hf.config.eos_token_id
    ids = torch.tensor([prompt], device=device)
    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos if eos is not None else 0,
        stopping_criteria=[_StopAtText(tok.decode, len(prompt), stops)],
    )[0, len(prompt) :].tolist()
    if eos is not None and eos in out:
        out = out[: out.index(eos)]
    return cut_at_stop(tok.decode(out), stops)[0]


def bench_generative(args, model, hf, tok, device) -> dict:
    """Time ours (the Evaluator) and the naive per-doc HF loop on the generative tasks."""
    ev = Evaluator(tok, args.gen_tasks, limit=args.gen_limit, batch_size=args.batch_size,
                   gen_max_tokens=args.gen_max_tokens, keep_docs=True)  # fmt: skip
    docs = sum(len(p.data.docs) for p in ev.prepared.values())
    sync(device)
    t0 = time.perf_counter()
    res = ev(Olmo2LM(model))
    sync(device)
    ours_s = time.perf_counter() - t0
    text_tok = ev.tok
    naive_s, timed, same, tokens = 0.0, 0, 0, 0
    for name, prep in ev.prepared.items():
        gens = [r["generation"] for r in res["tasks"][name]["per_doc"]]
        d = prep.data.docs
        pick = np.unique(np.linspace(0, len(d) - 1, min(args.naive_sample, len(d))).astype(int))
        spent = 0.0
        for i in pick:
            prompt = text_tok.encode(d[i].contexts[0])
            if text_tok.bos_token_id is not None and prompt[:1] != [text_tok.bos_token_id]:
                prompt = [text_tok.bos_token_id, *prompt]
            max_new = min(d[i].max_gen_toks or 512, args.gen_max_tokens or 10**9)
            sync(device)
            t = time.perf_counter()
            text = naive_generate(hf, text_tok, prompt, d[i].stop, max_new, device)
            sync(device)
            spent += time.perf_counter() - t
            same += text == gens[i]
            tokens += len(text_tok.encode(text))
        naive_s += spent / len(pick) * len(d)
        timed += len(pick)
    return {
        "tasks": args.gen_tasks,
        "docs": docs,
        "max_new_tokens": args.gen_max_tokens,
        "ours_seconds": round(ours_s, 2),
        "ours_examples_per_s": round(docs / ours_s, 4),
        "naive_seconds_estimated": round(naive_s, 2),
        "naive_examples_per_s": round(docs / naive_s, 4),
        "naive_docs_timed": timed,
        "naive_identical": same,
        "naive_tokens_generated": tokens,
        "ratio": round(naive_s / ours_s, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tasks", default="olmes_core", help="ranked/BPB tasks ('none' to skip)")
    ap.add_argument("--gen-tasks", default="gsm8k:gen", help="generative tasks ('none' to skip)")
    ap.add_argument("--gen-limit", type=int, default=16, help="docs per generative task")
    ap.add_argument(
        "--gen-max-tokens", type=int, default=None, help="cap on new tokens (default: each task's own)"
    )
    ap.add_argument("--limit", type=int, default=5, help="docs per task format")
    ap.add_argument(
        "--naive-sample",
        type=int,
        default=3,
        help="naive requests (docs of generative tasks) timed per format",
    )
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
    tok = load_tokenizer()
    out = {
        "preset": args.preset,
        "cpu": cpu_description(),
        "device": str(device),
        "ours_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "naive_dtype": str(next(hf.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(
        f"CPU: {out['cpu']}, torch threads {out['threads']}; {args.preset} preset on {device}, "
        f"ours {out['ours_dtype']}, naive HF {out['naive_dtype']}"
    )
    if args.tasks != "none":
        out["ranked"] = r = bench_ranked(args, model, hf, tok, device)
        print(
            f"{args.tasks} ({r['docs']} docs, {r['requests']} requests):\n"
            f"  olmo2.eval : {r['ours_seconds']:8.1f} s  {r['ours_examples_per_s']:8.3f} examples/s\n"
            f"  naive HF   : {r['naive_seconds_estimated']:8.1f} s  {r['naive_examples_per_s']:8.4f} "
            f"examples/s (estimated from {r['naive_requests_timed']} timed requests)\n"
            f"  ratio      : {r['ratio']:8.1f}x   (max |Δ log-lik| on timed requests: "
            f"{r['max_abs_loglik_diff']:.2e})"
        )
    if args.gen_tasks != "none":
        out["generative"] = g = bench_generative(args, model, hf, tok, device)
        print(
            f"{args.gen_tasks} ({g['docs']} docs, max new tokens {g['max_new_tokens'] or 'per task'}):\n"
            f"  olmo2.eval : {g['ours_seconds']:8.1f} s  {g['ours_examples_per_s']:8.4f} examples/s\n"
            f"  naive HF   : {g['naive_seconds_estimated']:8.1f} s  {g['naive_examples_per_s']:8.4f} "
            f"examples/s (estimated from {g['naive_docs_timed']} timed docs)\n"
            f"  ratio      : {g['ratio']:8.1f}x   (identical texts: {g['naive_identical']} of "
            f"{g['naive_docs_timed']} timed docs, {g['naive_tokens_generated']} tokens)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def bench_ranked(args, model, hf, tok, device) -> dict:
    """Time ours (the Evaluator) and the naive per-request HF loop on the ranked/BPB tasks."""
    ev = Evaluator(tok, args.tasks, limit=args.limit, batch_size=args.batch_size,
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
    return {
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
    }


if __name__ == "__main__":
    main()
